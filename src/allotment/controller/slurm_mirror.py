"""The Slurm mirror: keeps Slurm's accounting (``sacctmgr``) holding the accounts tree, shares,
members and limits Allotment holds, so that ``sbatch`` outside Allotment follows the same
policy (``backends/slurm/mirror.py`` says what is mirrored and how).

It looks every ``check_interval`` (10 s) whether the policy or anything the audit log records
(accounts, members, shares, budgets changed through the API) has changed since its last pass,
and passes anyway every ``full_interval`` (5 min), which also undoes changes made by hand in
Slurm. A pass reads the database, asks Slurm what it holds (three ``sacctmgr`` calls, one
``sacct`` when an account is to go) and runs the commands between the two. Slurm down, or a
command refused, never stops the controller: the pass is tried again later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from allotment.backends.identity import legacy_unix_name, mark, refusal, unix_name
from allotment.backends.slurm.mirror import (
    OWNER,
    AccountRow,
    BudgetRow,
    Change,
    Member,
    Tree,
    accounts_with_jobs,
    desired,
    ensure_user,
    observe,
    plan,
    slurm_pools,
)
from allotment.backends.slurm.names import slurm_account
from allotment.backends.slurm.runner import SlurmError, SlurmRunner, SlurmUnavailable
from allotment.clock import Clock
from allotment.config.models import ExistingAccountsSpec, Policy
from allotment.db.engine import Database
from allotment.db.repository import EVERYONE
from allotment.db.tables import (
    Account,
    AuditEntry,
    Membership,
    PolicyVersion,
    Pool,
    User,
)
from allotment.db.tables import (
    BudgetRow as BudgetTable,
)

__all__ = [
    "Inputs",
    "SlurmMirror",
    "cluster_name",
    "owner_tag",
    "posix_name",
    "read_inputs",
    "runner_for",
    "slurm_plan",
]

log = logging.getLogger("allotment.controller")


def owner_tag(installation: str) -> str:
    """The ``Organization`` that marks the Slurm accounts an installation made."""
    return f"{OWNER}:{installation}"


@dataclass(frozen=True)
class Inputs:
    """What a pass reads from the database."""

    policy: Policy
    accounts: list[AccountRow]
    #: (account path, hub user, manager?) of each member or manager.
    members: list[tuple[str, str, bool]]
    budgets: list[BudgetRow]
    #: Accounts with a ``"*"`` membership.
    everyone: list[str] = field(default_factory=list)


def read_inputs(session: Session, policy: Policy | None = None) -> Inputs | None:
    """The newest policy (or ``policy``), accounts, memberships and budgets; None before any
    policy."""
    if policy is None:
        document = session.execute(
            select(PolicyVersion.document).order_by(PolicyVersion.id.desc()).limit(1)
        ).scalar_one_or_none()
        if document is None:
            return None
        policy = Policy.model_validate(document)
    accounts = [
        AccountRow(path, shares, archived is not None)
        for path, shares, archived in session.execute(
            select(Account.path, Account.shares, Account.archived_at)
        )
    ]
    members: list[tuple[str, str, bool]] = []
    everyone: list[str] = []
    rows = session.execute(
        select(Account.path, User.name, Membership.role)
        .join(Account, Account.id == Membership.account_id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.role.in_(["member", "manager"]))
    )
    for path, user, role in rows:
        if user == EVERYONE:
            everyone.append(path)
        else:
            members.append((path, user, role == "manager"))
    budgets = [
        BudgetRow(path, pool, float(spec.get("amount", 0)), bool(spec.get("hard_stop", True)))
        for path, pool, spec in session.execute(
            select(Account.path, Pool.name, BudgetTable.spec)
            .join(Account, Account.id == BudgetTable.account_id)
            .outerjoin(Pool, Pool.id == BudgetTable.pool_id)
        )
    ]
    return Inputs(policy, accounts, members, budgets, everyone)


def _marker(session: Session) -> tuple[int | None, int | None]:
    """What changes when anything mirrored may have: the newest policy version and audit entry."""
    return (
        session.execute(select(func.max(PolicyVersion.id))).scalar(),
        session.execute(select(func.max(AuditEntry.id))).scalar(),
    )


def posix_name(hub_name: str, existing: ExistingAccountsSpec | None) -> str | None:
    """The POSIX account ``hub_name``'s jobs run as, where it exists already (the identity
    rules of ``backends.local.posix``, without creating one): None otherwise, and that user's
    association comes on first use."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    if existing is not None:
        try:
            same = pwd.getpwnam(hub_name)
        except KeyError:
            same = None
        if same is not None and refusal(same, hub_name, existing) is None:
            return hub_name
    for name in (unix_name(hub_name), legacy_unix_name(hub_name)):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_gecos == mark(hub_name):
            return name
    return None


_RUNNERS: dict[tuple[str | None, str | None, float], SlurmRunner] = {}


def runner_for(policy: Policy) -> SlurmRunner:
    """A runner for the policy's ``slurm`` settings (one per distinct settings)."""
    s = policy.slurm
    key = (s.conf, s.bin_dir, float(s.command_timeout))
    if key not in _RUNNERS:
        _RUNNERS[key] = SlurmRunner(s.conf, s.bin_dir, float(s.command_timeout))
    return _RUNNERS[key]


_CLUSTERS: dict[str | None, str] = {}


async def cluster_name(policy: Policy, runner: SlurmRunner) -> str:
    """``slurm.cluster``, else the ``ClusterName`` of ``scontrol show config`` (asked once)."""
    if policy.slurm.cluster:
        return policy.slurm.cluster
    if policy.slurm.conf not in _CLUSTERS:
        out = (await runner.run(["scontrol", "show", "config"])).stdout.decode()
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ClusterName":
                _CLUSTERS[policy.slurm.conf] = value.strip().lower()
                break
        else:
            raise SlurmError(["scontrol"], 0, "scontrol show config names no ClusterName")
    return _CLUSTERS[policy.slurm.conf]


def want_tree(inputs: Inputs, cluster: str) -> Tree:
    """The desired tree, with each hub user as the POSIX account they run as."""
    existing = inputs.policy.identity.existing_accounts
    names: dict[str, str | None] = {}
    members = []
    for path, hub, manager in inputs.members:
        if hub not in names:
            names[hub] = posix_name(hub, existing)
        posix = names[hub]
        if posix is not None:
            members.append(Member(path, hub, posix, manager))
    return desired(
        inputs.policy,
        inputs.accounts,
        members,
        inputs.budgets,
        cluster=cluster,
        everyone=inputs.everyone,
    )


async def slurm_plan(
    inputs: Inputs, runner: SlurmRunner, owner: str
) -> tuple[list[Change], Tree, Tree]:
    """The changes that make Slurm hold ``inputs``, with the desired and observed trees."""
    cluster = await cluster_name(inputs.policy, runner)
    want = want_tree(inputs, cluster)
    have = await observe(runner, cluster, owner)
    going = [n for n in have.ours if n not in want.accounts]
    try:
        used = await accounts_with_jobs(runner, going)
    except SlurmError:
        used = set(going)  # not known: nothing is deleted
    return plan(want, have, used, owner=owner), want, have


def mirrored(policy: Policy) -> bool:
    """Whether ``policy`` has Slurm pools and asks for mirroring."""
    return policy.slurm.mirror and bool(slurm_pools(policy))


class SlurmMirror:
    """Runs the mirror in the controller; ``poke()`` it after a change for a pass now.

    Parameters
    ----------
    db, clock
        The installation's database and clock.
    installation
        Its name: accounts it makes carry ``organization=allotment:<installation>``, and only
        those are ever changed or removed.
    runner
        Runs Slurm's commands; None: one built from the policy's ``slurm`` settings.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        installation: str,
        runner: SlurmRunner | None = None,
        *,
        check_interval: float = 10.0,
        full_interval: float = 300.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner_tag(installation)
        self.runner = runner
        self.check_interval = check_interval
        self.full_interval = full_interval
        #: The lines of the last pass's changes, and the conflicts it left alone.
        self.last: list[str] = []
        self.conflicts: list[str] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._down = False

    def poke(self) -> None:
        """Pass soon (a policy was applied, an account changed)."""
        self._wake.set()

    async def run(self) -> None:
        marker: tuple[int | None, int | None] | None = None
        due = 0.0
        while True:
            try:
                now = await self.db.run_read(_marker)
                if now != marker or time.monotonic() >= due:
                    failed = await self._pass()
                    marker = now
                    due = time.monotonic() + (60.0 if failed else self.full_interval)
                if self._down:
                    log.info("Slurm answers again: accounts are mirrored")
                    self._down = False
            except SlurmUnavailable as e:
                if not self._down:
                    log.warning("Slurm accounts not mirrored: %s; trying again", e)
                self._down = True
            except Exception:
                log.exception("mirroring accounts into Slurm failed; trying again")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.check_interval)
            except TimeoutError:
                pass

    async def sync_once(self) -> list[str]:
        """One pass now: the lines of the changes made."""
        await self._pass()
        return self.last

    async def _pass(self) -> bool:
        """One pass; True when a command failed (the next comes sooner)."""
        async with self._lock:
            inputs = await self.db.run_read(read_inputs)
            if inputs is None or not mirrored(inputs.policy):
                self.last = []
                return False
            runner = self.runner or runner_for(inputs.policy)
            changes, _, _ = await slurm_plan(inputs, runner, self.owner)
            done, failed = await apply(runner, changes)
            self.last = done
            self.conflicts = [c.line for c in changes if not c.argv]
            return failed

    async def ensure_user(self, account_path: str, posix: str) -> list[str]:
        """Give ``posix`` an association in ``account_path`` now (a ``"*"`` member's first
        job), with the limits the policy gives it there; the lines of what was done."""
        async with self._lock:
            inputs = await self.db.run_read(read_inputs)
            if inputs is None or not mirrored(inputs.policy):
                return []
            runner = self.runner or runner_for(inputs.policy)
            cluster = await cluster_name(inputs.policy, runner)
            have = await observe(runner, cluster, self.owner)
            account = slurm_account(account_path)
            want = want_tree(inputs, cluster)
            assoc = want.users.get((account, posix))
            done, _ = await apply(runner, ensure_user(have, account, posix, assoc))
            return done


async def apply(runner: SlurmRunner, changes: list[Change]) -> tuple[list[str], bool]:
    """Run each change's command; log each; the lines of those done, and whether one failed."""
    done: list[str] = []
    failed = False
    for change in changes:
        if not change.argv:
            log.warning("slurm: %s", change.line)
            continue
        try:
            await runner.run(change.argv)
        except SlurmUnavailable:
            raise
        except SlurmError as e:
            failed = True
            log.error("slurm: could not %s: %s", "; ".join(change.lines), e.stderr or e)
            continue
        for line in change.lines:
            log.info("slurm: %s", line)
        done.extend(change.lines)
    return done, failed
