"""The accounts tree, shares, members and limits as Slurm's accounting should hold them, what it
holds, and the ``sacctmgr`` commands between the two. Pure: no I/O but ``observe`` and
``accounts_with_jobs``, which only read through the runner.

What is mirrored (docs/slurm.md, "Accounts, users and limits"):

- every Allotment account (from the database: the policy's and those managers created) as the
  Slurm account ``slurm_account(path)`` under its parent's (a root under Slurm's ``root``),
  ``Fairshare`` = its shares, ``Organization`` = the installation's owner tag (what marks an
  account as Allotment's: accounts without it are never touched);
- an archived account as ``GrpSubmitJobs=0``: Slurm refuses new jobs in it and below it, its
  history stays. An account Allotment no longer has is deleted only when Slurm holds no job of
  it; otherwise it is archived the same way ("archived (it has usage)");
- the allocations on Slurm pools, quota + borrowing limit, as the account's ``GrpTRES`` (cpu,
  mem, gres/gpu): the most its subtree may use at once (no cap where any allocation borrows
  without limit);
- the user who may charge an account (member or manager there, or manager above it) as a user
  association; the limit that applies to that user there (``limits``: the user's own, else the
  lowest along the account's chain, else ``default``) as its ``GrpTRES`` and ``MaxJobs``.
  Members given as ``"*"`` get theirs on first use (``ensure_user``); those are never removed;
- with ``slurm.mirror_budgets``, each hard-stop budget as ``GrpTRESMins``: the budget's money
  split over the resources in the shape of the account's allocation, each part turned into
  resource-minutes at the highest rate of the Slurm pools, so that no mix of use within all the
  limits costs more than the budget.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from allotment.backends.slurm.names import slurm_account
from allotment.config.models import LimitSpec, Policy, QuotaSpec
from allotment.config.resolve import account_paths, resolve_account

__all__ = [
    "AccountRow",
    "Association",
    "BudgetRow",
    "Change",
    "Member",
    "Tree",
    "accounts_with_jobs",
    "desired",
    "ensure_user",
    "observe",
    "parse_associations",
    "parse_tres",
    "plan",
    "slurm_pools",
]

#: ``Organization`` of the accounts Allotment made (the installation's name is appended).
OWNER = "allotment"
#: Slurm's own root account: the parent of Allotment's roots, never changed.
ROOT = "root"
MIB = 2**20
#: The TRES whose limits are mirrored, in the order Slurm prints them.
TRES_ORDER = ("cpu", "mem", "gres/gpu")

Tres = Mapping[str, int]


@dataclass(frozen=True)
class Association:
    """One association: an account's own (``user`` "") or a user's in an account. Limits
    absent from a mapping, and None, mean none."""

    account: str
    user: str = ""
    #: The parent account (account associations; ``root`` for a root).
    parent: str = ""
    #: Slurm's ``Fairshare``; None: ``parent`` (not set by Allotment).
    fairshare: int | None = 1
    #: ``GrpTRES``: cpu (cores), mem (MiB), gres/gpu.
    grp_tres: Tres = field(default_factory=dict)
    #: ``GrpTRESMins``: the same, in resource-minutes.
    grp_tres_mins: Tres = field(default_factory=dict)
    #: ``GrpSubmitJobs``: 0 archives the account (Slurm refuses new jobs in it and below).
    grp_submit_jobs: int | None = None
    #: ``MaxJobs``: running jobs at once (a user's association).
    max_jobs: int | None = None


@dataclass(frozen=True)
class Tree:
    """Associations of one cluster: accounts by Slurm name, users by (account, user)."""

    cluster: str
    accounts: dict[str, Association] = field(default_factory=dict)
    users: dict[tuple[str, str], Association] = field(default_factory=dict)
    #: Desired: accounts where every hub user may charge (``"*"``): user associations there
    #: come on first use and are never removed. Observed: empty.
    everyone: frozenset[str] = frozenset()
    #: Observed: the accounts Allotment made (their ``Organization`` is the owner tag).
    ours: frozenset[str] = frozenset()
    #: Observed: the TRES Slurm counts (``sacctmgr show tres``); limits on others are left out.
    tres: frozenset[str] = frozenset(TRES_ORDER)
    #: Observed: each user's default account (Slurm refuses to delete it while the user has
    #: other associations).
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """One step towards the desired tree: what it does in words, and the command that does it
    (empty: nothing Allotment may do; a conflict for the administrator)."""

    line: str
    argv: tuple[str, ...] = ()
    #: The words of the other changes this one command makes (several accounts or users
    #: with the same settings are added at once: each ``sacctmgr`` call costs ~0.5 s).
    also: tuple[str, ...] = ()

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.line, *self.also)


@dataclass(frozen=True)
class AccountRow:
    """An Allotment account as the database holds it."""

    path: str
    shares: int = 1
    archived: bool = False


@dataclass(frozen=True)
class Member:
    """Who may charge an account: a hub user, as the POSIX account their jobs run as. A
    manager may charge every account below theirs too."""

    path: str
    hub_name: str
    posix_name: str
    manager: bool = False


@dataclass(frozen=True)
class BudgetRow:
    """A budget in force: on an account across pools (``pool`` None) or on one pool."""

    path: str
    pool: str | None
    amount: float
    hard_stop: bool = True


# -- desired -------------------------------------------------------------------------------


def slurm_pools(policy: Policy) -> list[str]:
    """Names of the pools Slurm runs."""
    return [name for name, spec in policy.pools.items() if spec.backend == "slurm"]


def desired(
    policy: Policy,
    accounts: Sequence[AccountRow],
    members: Iterable[Member],
    budgets: Iterable[BudgetRow] = (),
    *,
    cluster: str,
    everyone: Collection[str] = (),
) -> Tree:
    """What Slurm should hold for ``policy`` and the database's accounts, members and budgets
    (``everyone``: paths of accounts with a ``"*"`` membership)."""
    pools = slurm_pools(policy)
    caps = _caps(policy, pools)
    limits = _account_limits(policy)
    tree: dict[str, Association] = {}
    by_path = {a.path: a for a in accounts}
    money = _budgets(policy, budgets, pools) if policy.slurm.mirror_budgets else {}
    for row in sorted(accounts, key=lambda a: a.path.count("/")):
        parent = row.path.rsplit("/", 1)[0] if "/" in row.path else None
        if parent is not None and parent not in by_path:
            continue  # an orphan: nowhere to put it in Slurm's tree
        cap = caps.get(row.path)
        mins = (
            _budget_minutes(policy, pools, money[row.path], cap)
            if row.path in money and pools
            else {}
        )
        tree[slurm_account(row.path)] = Association(
            account=slurm_account(row.path),
            parent=slurm_account(parent) if parent else ROOT,
            fairshare=row.shares,
            grp_tres=_tres(cap) if cap is not None else {},
            grp_tres_mins=mins,
            grp_submit_jobs=0 if row.archived else None,
        )
    users: dict[tuple[str, str], Association] = {}
    chargers = _chargers(members, by_path)
    for (path, posix), hub in sorted(chargers.items()):
        name = slurm_account(path)
        if name not in tree:
            continue
        lim = _user_limit(policy, limits, hub, path)
        users[(name, posix)] = Association(
            account=name,
            user=posix,
            fairshare=1,
            grp_tres=_limit_tres(lim),
            max_jobs=lim.workloads,
        )
    return Tree(
        cluster=cluster,
        accounts=tree,
        users=users,
        everyone=frozenset(slurm_account(p) for p in everyone if slurm_account(p) in tree),
    )


def _chargers(
    members: Iterable[Member], accounts: Mapping[str, AccountRow]
) -> dict[tuple[str, str], str]:
    """(path, POSIX name) → hub name of everyone who may charge each account: its members and
    managers, and the managers of an account above it (as Allotment lets them submit)."""
    out: dict[tuple[str, str], str] = {}
    for m in members:
        reach = [a for a in accounts if a == m.path or a.startswith(m.path + "/")]
        for path in reach if m.manager else [m.path]:
            out[(path, m.posix_name)] = m.hub_name
    return out


def _caps(policy: Policy, pools: Sequence[str]) -> dict[str, QuotaSpec]:
    """Per account path, the most its subtree may use at once on the Slurm pools: the sum of
    quota + borrowing limit of its allocations there; none where one borrows without limit."""
    paths = account_paths(policy)
    sums: dict[str, QuotaSpec | None] = {}
    for a in policy.allocations:
        name = resolve_account(policy, a.account)
        if name is None or a.pool not in pools:
            continue
        path = paths[name]
        if a.borrowing_limit is None or (path in sums and sums[path] is None):
            sums[path] = None
            continue
        top = _add(a.quota, a.borrowing_limit)
        prev = sums.get(path)
        sums[path] = top if prev is None else _add(prev, top)
    return {p: q for p, q in sums.items() if q is not None}


def _add(a: QuotaSpec, b: QuotaSpec) -> QuotaSpec:
    gpus = dict(a.gpus)
    for model, n in b.gpus.items():
        gpus[model] = gpus.get(model, 0) + n
    return QuotaSpec(cpus=a.cpus + b.cpus, memory=a.memory + b.memory, gpus=gpus)


def _tres(q: QuotaSpec) -> dict[str, int]:
    """Slurm TRES counts of an amount of resources: whole cores (rounded down), MiB, GPUs."""
    return {"cpu": _cores(q.cpus), "mem": _mib(q.memory), "gres/gpu": sum(q.gpus.values())}


def _cores(cpus: float) -> int:
    """Whole cores (Slurm allocates no less): rounded down, but a fraction of one stays one."""
    return max(1, math.floor(cpus)) if cpus > 0 else 0


def _mib(memory: int) -> int:
    return max(1, memory // MIB) if memory > 0 else 0


def _limit_tres(lim: LimitSpec) -> dict[str, int]:
    out: dict[str, int] = {}
    if lim.cpus is not None:
        out["cpu"] = _cores(lim.cpus)
    if lim.memory is not None:
        out["mem"] = _mib(lim.memory)
    if lim.gpus is not None:
        out["gres/gpu"] = lim.gpus
    return out


def _account_limits(policy: Policy) -> dict[str, LimitSpec]:
    paths = account_paths(policy)
    return {
        paths[n]: spec
        for ref, spec in policy.limits.accounts.items()
        if (n := resolve_account(policy, ref)) is not None
    }


def _user_limit(
    policy: Policy, accounts: Mapping[str, LimitSpec], hub: str, path: str
) -> LimitSpec:
    """The scheduler's rule: the user's own limit, else the lowest along the chain, else the
    default."""
    own = policy.limits.users.get(hub)
    if own is not None:
        return own
    parts = path.split("/")
    chain = [
        accounts[p] for i in range(1, len(parts) + 1) if (p := "/".join(parts[:i])) in accounts
    ]
    if not chain:
        return policy.limits.default

    def low(values: Iterable[float | int | None]) -> float | int | None:
        found = [v for v in values if v is not None]
        return min(found) if found else None

    return LimitSpec(
        cpus=low(c.cpus for c in chain),
        memory=low(c.memory for c in chain),
        gpus=low(c.gpus for c in chain),
        workloads=low(c.workloads for c in chain),
    )


def _budgets(
    policy: Policy, budgets: Iterable[BudgetRow], pools: Sequence[str]
) -> dict[str, float]:
    """Per account path, the money its Slurm use may reach: the account's own hard-stop budget,
    or the sum of its hard-stop budgets on the Slurm pools when each of them has one, the
    lower of the two."""
    own: dict[str, float] = {}
    per_pool: dict[str, dict[str, float]] = {}
    for b in budgets:
        if not b.hard_stop:
            continue
        if b.pool is None:
            own[b.path] = b.amount
        elif b.pool in pools:
            per_pool.setdefault(b.path, {})[b.pool] = b.amount
    out = dict(own)
    for path, by_pool in per_pool.items():
        if set(by_pool) >= set(pools):
            total = sum(by_pool.values())
            out[path] = min(out.get(path, total), total)
    return out


#: The largest ``GrpTRESMins`` mirrored (2**53: the largest whole number a float holds exactly).
MOST_MINUTES = float(2**53)


def _budget_minutes(
    policy: Policy, pools: Sequence[str], money: float, cap: QuotaSpec | None
) -> dict[str, int]:
    """``GrpTRESMins`` that cannot cost more than ``money``: split in the shape of ``cap`` (the
    allocation; else the pools' whole size), each part at the highest rate of the pools."""
    specs = [policy.pools[p] for p in pools]
    shape = cap or QuotaSpec(
        cpus=sum(n.cpus for s in specs for n in s.nodes),
        memory=sum(n.memory for s in specs for n in s.nodes),
        gpus={"any": sum(sum(n.gpus.values()) for s in specs for n in s.nodes)},
    )
    rate_cpu = max(s.rates.cpu for s in specs)
    rate_mem = max(s.rates.memory for s in specs)  # per GiB-hour
    rate_gpu = max((r for s in specs for r in s.rates.gpu.values()), default=0.0)
    gpus = sum(shape.gpus.values())
    parts = {
        "cpu": (shape.cpus, rate_cpu),
        "mem": (shape.memory / 2**30, rate_mem),
        "gres/gpu": (float(gpus), rate_gpu),
    }
    per_hour = sum(n * r for n, r in parts.values() if r > 0 and n > 0)
    if per_hour <= 0:
        return {}
    hours = money / per_hour
    out: dict[str, int] = {}
    for key, (n, r) in parts.items():
        if r > 0 and n > 0:
            minutes = n * hours * 60 * (1024 if key == "mem" else 1)  # mem in MiB-minutes
            # A price so small that the budget buys more than Slurm can count (or infinitely
            # much) is as good as no limit: the largest whole number a float holds exactly.
            out[key] = math.floor(min(minutes, MOST_MINUTES))
    return out


# -- observed --------------------------------------------------------------------------------


class Runner(Protocol):
    """What this module needs of ``backends.slurm.runner.SlurmRunner``."""

    async def run(self, argv: Sequence[str]) -> _Completed: ...


class _Completed(Protocol):
    @property
    def stdout(self) -> bytes: ...


ASSOC_FORMAT = "Account,ParentName,User,Fairshare,GrpTRES,GrpTRESMins,GrpSubmitJobs,MaxJobs"


def parse_tres(text: str) -> dict[str, int]:
    """``cpu=4,mem=8G,gres/gpu=2`` as printed by ``sacctmgr`` → counts (mem in MiB)."""
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        scale = 1
        if key == "mem" and value and value[-1] in "KMGTP":
            scale = {"K": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}[value[-1]]
            if value[-1] == "K":
                out[key] = math.ceil(float(value[:-1]) / 1024)
                continue
            value = value[:-1]
        out[key] = round(float(value) * scale)
    return out


def _int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("-").isdigit() else None


def parse_associations(
    text: str,
) -> tuple[dict[str, Association], dict[tuple[str, str], Association]]:
    """``sacctmgr -P -n show assoc format=ASSOC_FORMAT`` → account and user associations."""
    accounts: dict[str, Association] = {}
    users: dict[tuple[str, str], Association] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 8:
            continue
        account, parent, user, share, tres, mins, submit, jobs = cols[:8]
        assoc = Association(
            account=account,
            user=user,
            parent=parent,
            fairshare=_int(share),
            grp_tres=parse_tres(tres),
            grp_tres_mins=parse_tres(mins),
            grp_submit_jobs=_int(submit),
            max_jobs=_int(jobs),
        )
        if user:
            users[(account, user)] = assoc
        else:
            accounts[account] = assoc
    return accounts, users


async def observe(runner: Runner, cluster: str, owner: str = OWNER) -> Tree:
    """What Slurm's accounting holds for ``cluster`` (four ``sacctmgr`` calls)."""
    text = (
        await runner.run(
            [
                "sacctmgr",
                "-P",
                "-n",
                "show",
                "assoc",
                f"cluster={cluster}",
                f"format={ASSOC_FORMAT}",
            ]
        )
    ).stdout.decode()
    accounts, users = parse_associations(text)
    listing = (
        await runner.run(["sacctmgr", "-P", "-n", "show", "account", "format=Account,Organization"])
    ).stdout.decode()
    tag = owner.lower()
    ours = {
        name
        for line in listing.splitlines()
        if (cols := line.split("|")) and len(cols) >= 2 and (name := cols[0]) and cols[1] == tag
    }
    tres_text = (
        await runner.run(["sacctmgr", "-P", "-n", "show", "tres", "format=Type,Name"])
    ).stdout.decode()
    tres = set()
    for line in tres_text.splitlines():
        kind, _, name = line.partition("|")
        tres.add(f"{kind}/{name}" if name else kind)
    default_text = (
        await runner.run(
            [
                "sacctmgr",
                "-P",
                "-n",
                "show",
                "user",
                f"cluster={cluster}",
                "format=User,DefaultAccount",
            ]
        )
    ).stdout.decode()
    defaults = {
        user: account
        for line in default_text.splitlines()
        if (parts := line.split("|"))
        and len(parts) >= 2
        and (user := parts[0])
        and (account := parts[1])
    }
    return Tree(
        cluster=cluster,
        accounts=accounts,
        users=users,
        ours=frozenset(ours & set(accounts)),
        tres=frozenset(tres),
        defaults=defaults,
    )


async def accounts_with_jobs(runner: Runner, names: Collection[str]) -> set[str]:
    """Which of the Slurm accounts ``names`` have any job in Slurm: in its accounting records
    (``sacct``), or still in slurmctld's memory (``squeue``: a job that ended seconds ago
    reaches ``sacct``'s account queries only after a few seconds)."""
    if not names:
        return set()
    listed = ",".join(sorted(names))
    recorded = await runner.run(
        [
            "sacct",
            "-a",
            "-X",
            "-n",
            "-P",
            "-A",
            listed,
            "-S",
            "1970-01-02T00:00:00",
            "-o",
            "account",
        ]
    )
    recent = await runner.run(["squeue", "-h", "-t", "all", "-A", listed, "-o", "%a"])
    found = recorded.stdout.decode().split() + recent.stdout.decode().split()
    return set(found) & set(names)


# -- plan --------------------------------------------------------------------------------------


def _fmt(tres: Tres) -> str:
    keys = [k for k in TRES_ORDER if k in tres] + sorted(k for k in tres if k not in TRES_ORDER)
    return ",".join(f"{k}={tres[k]}M" if k == "mem" else f"{k}={tres[k]}" for k in keys)


def _shown(tres: Tres) -> str:
    return _fmt(tres) or "none"


def _tres_setting(want: Tres, have: Tres) -> str:
    """The ``GrpTRES=`` value that turns ``have`` into ``want`` (-1 clears a TRES)."""
    keys = sorted(set(want) | set(have), key=lambda k: (k not in TRES_ORDER, k))
    return ",".join(
        (f"{k}={want[k]}" if k in want else f"{k}=-1") for k in keys if want.get(k) != have.get(k)
    )


def _known(a: Association, tres: Collection[str]) -> Association:
    """Leaves out limits on TRES Slurm does not count (a GPU cap on a cluster without GPUs)."""
    return replace(
        a,
        grp_tres={k: v for k, v in a.grp_tres.items() if k in tres},
        grp_tres_mins={k: v for k, v in a.grp_tres_mins.items() if k in tres},
    )


def _settings(want: Association, have: Association | None) -> tuple[list[str], list[str]]:
    """``set`` arguments and words for the limits and share ``have`` lacks."""
    args: list[str] = []
    words: list[str] = []
    who = f"user {want.user} in {want.account}" if want.user else want.account
    old_fs = have.fairshare if have else 1
    if want.fairshare is not None and want.fairshare != old_fs:
        args.append(f"fairshare={want.fairshare}")
        words.append(
            f"set fairshare of {who} {old_fs if old_fs is not None else 'parent'} → "
            f"{want.fairshare}"
        )
    for key, label in (("grp_tres", "GrpTRES"), ("grp_tres_mins", "GrpTRESMins")):
        w: Tres = getattr(want, key)
        h: Tres = getattr(have, key) if have else {}
        if dict(w) != dict(h):
            args.append(f"{label}={_tres_setting(w, h)}")
            words.append(f"set {label} of {who} {_shown(h)} → {_shown(w)}")
    for key, label in (("grp_submit_jobs", "GrpSubmitJobs"), ("max_jobs", "MaxJobs")):
        wv: int | None = getattr(want, key)
        hv: int | None = getattr(have, key) if have else None
        if wv != hv:
            args.append(f"{label}={wv if wv is not None else -1}")
            if key == "grp_submit_jobs" and wv == 0:
                words.append(f"archive account {who} (its history is kept)")
            elif key == "grp_submit_jobs" and hv == 0:
                words.append(f"restore account {who} from archive")
            else:
                words.append(
                    f"set {label} of {who} {hv if hv is not None else 'none'} → "
                    f"{wv if wv is not None else 'none'}"
                )
    return args, words


def _depth(name: str) -> int:
    return name.count(".")


def plan(want: Tree, have: Tree, has_usage: Collection[str], *, owner: str = OWNER) -> list[Change]:
    """The ``sacctmgr -i`` commands that make ``have`` hold ``want``, with their words; empty
    when it does. Accounts not Allotment's (``have.ours``) are never changed; an account
    Allotment no longer has is deleted only when it is not in ``has_usage`` and nothing
    kept lies below it, else archived. Accounts (and a user's associations) added with the
    same settings are added by one command."""
    c = f"cluster={have.cluster}"
    base = ("sacctmgr", "-i")
    out: list[Change] = []
    adds: dict[tuple[int, tuple[str, ...]], list[tuple[str, str]]] = {}
    for name in sorted(want.accounts, key=lambda n: (_depth(n), n)):
        a = _known(want.accounts[name], have.tres)
        old = have.accounts.get(name)
        if old is not None and name not in have.ours:
            out.append(
                Change(
                    f"account {name} exists in Slurm but Allotment did not make it: left alone "
                    f"(give it organization={owner.lower()} to let Allotment manage it)"
                )
            )
            continue
        if old is None:
            args, _ = _settings(replace(a, fairshare=None), None)
            settings = (f"parent={a.parent}", f"fairshare={a.fairshare}", *args)
            extra = []
            if a.grp_tres:
                extra.append(f"GrpTRES {_fmt(a.grp_tres)}")
            if a.grp_tres_mins:
                extra.append(f"GrpTRESMins {_fmt(a.grp_tres_mins)}")
            if a.grp_submit_jobs == 0:
                extra.append("archived")
            more = "".join(f", {e}" for e in extra)
            line = f"add account {name} (parent {a.parent}, fairshare {a.fairshare}{more})"
            adds.setdefault((_depth(name), settings), []).append((name, line))
            continue
        if old.parent != a.parent:
            out.append(
                Change(
                    f"move account {name} from {old.parent} to {a.parent}",
                    (*base, "modify", "account", "where", f"name={name}", c, "set",
                     f"parent={a.parent}"),
                )
            )  # fmt: skip
        args, words = _settings(replace(a, max_jobs=None), old)
        if args:
            argv = (*base, "modify", "account", "where", f"name={name}", c, "set", *args)
            out.append(Change("; ".join(words), argv))
    for (_, settings), group in sorted(adds.items(), key=lambda kv: (kv[0][0], kv[1][0][0])):
        names = ",".join(n for n, _ in group)
        argv = (
            *base, "add", "account", names, c, *settings, f"organization={owner}",
            "description=made by Allotment",
        )  # fmt: skip
        out.append(Change(group[0][1], argv, tuple(line for _, line in group[1:])))
    managed = set(want.accounts) - (set(have.accounts) - set(have.ours))
    user_adds: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for key in sorted(want.users):
        account, user = key
        if account not in managed:
            continue
        u = _known(want.users[key], have.tres)
        old = have.users.get(key)
        if old is None:
            args, _ = _settings(replace(u, fairshare=None), None)
            user_adds.setdefault((user, tuple(args)), []).append(account)
            continue
        args, words = _settings(u, old)
        if args:
            argv = (
                *base, "modify", "user", "where", f"name={user}", f"account={account}", c, "set",
                *args,
            )  # fmt: skip
            out.append(Change("; ".join(words), argv))
    for (user, limits), accounts in sorted(user_adds.items()):
        lines = [f"add user {user} to {a}" for a in accounts]
        argv = (*base, "add", "user", user, f"account={','.join(accounts)}", c, *limits)
        out.append(Change(lines[0], argv, tuple(lines[1:])))
    leaving: set[tuple[str, str]] = set()
    for key in sorted(have.users):
        account, user = key
        if account in want.accounts and account in have.ours and key not in want.users:
            if account in want.everyone or want.accounts[account].grp_submit_jobs == 0:
                continue  # first-use associations of "*" accounts; archived accounts keep theirs
            leaving.add(key)
    gone = [n for n in have.ours if n not in want.accounts]
    kept = set(want.accounts) | (set(have.accounts) - set(have.ours))
    removals: list[Change] = []
    deleted: set[str] = set()
    for name in sorted(gone, key=lambda n: (-_depth(n), n)):
        old = have.accounts[name]
        below = any(a.parent == name and a.account in kept for a in have.accounts.values())
        if name in has_usage or below:
            kept.add(name)
            if old.grp_submit_jobs != 0:
                why = "it has usage" if name in has_usage else "an account below it has usage"
                removals.append(
                    Change(
                        f"archive account {name} ({why})",
                        (*base, "modify", "account", "where", f"name={name}", c, "set",
                         "GrpSubmitJobs=0"),
                    )
                )  # fmt: skip
        else:
            deleted.add(name)
    if deleted:
        # One command for all: Slurm refuses to delete a user's default account while the
        # user has another association, even one deleted by the same plan a moment later.
        order = sorted(deleted, key=lambda n: (-_depth(n), n))
        words = [f"remove account {n}" for n in order]
        argv = (*base, "delete", "account", "where", f"name={','.join(order)}", c)
        removals.append(Change(words[0], argv, tuple(words[1:])))
    defaults, last = _new_defaults(want, have, leaving, deleted, c)
    out += defaults
    for account, user in sorted(leaving):
        if user not in last:
            out.append(
                Change(
                    f"remove user {user} from {account}",
                    (*base, "delete", "user", "where", f"name={user}", f"account={account}", c),
                )
            )
    for user in sorted(last):
        # Slurm refuses to remove a user's last association (their default account) by
        # account, but removes all of the user's on this cluster, and the user only where no
        # other cluster of a shared slurmdbd has one (never ``name=`` alone: every cluster's).
        words = [f"remove user {user} from {a}" for a, u in sorted(leaving) if u == user]
        words = words or [f"remove user {user} (no account left)"]
        argv = (*base, "delete", "user", "where", f"name={user}", c)
        out.append(Change(words[0], argv, tuple(words[1:])))
    return out + removals


def _new_defaults(
    want: Tree, have: Tree, leaving: set[tuple[str, str]], deleted: set[str], cluster: str
) -> tuple[list[Change], set[str]]:
    """Slurm refuses to remove a user's default account while the user keeps others: the
    changes that move it first, to one the user keeps; and the users who keep none."""
    out: list[Change] = []
    after: dict[str, set[str]] = {}
    for account, user in [*have.users, *want.users]:
        if (account, user) not in leaving and account not in deleted:
            after.setdefault(user, set()).add(account)
    last = {u for _, u in have.users if u not in after}
    for user, default in sorted(have.defaults.items()):
        if (default, user) not in leaving and default not in deleted:
            continue
        others = sorted(after.get(user, set()) - {default})
        if others:
            out.append(
                Change(
                    f"set default account of {user} {default} → {others[0]}",
                    ("sacctmgr", "-i", "modify", "user", "where", f"name={user}", cluster, "set",
                     f"defaultaccount={others[0]}"),
                )
            )  # fmt: skip
    return out, last


def ensure_user(
    have: Tree, account: str, user: str, association: Association | None = None
) -> list[Change]:
    """The change that gives ``user`` an association in ``account`` on first use (a ``"*"``
    member), with the limits ``association`` carries; empty when it has one."""
    if (account, user) in have.users:
        return []
    a = association or Association(account=account, user=user)
    args, _ = _settings(replace(_known(a, have.tres), fairshare=None), None)
    return [
        Change(
            f"add user {user} to {account}",
            ("sacctmgr", "-i", "add", "user", user, f"account={account}",
             f"cluster={have.cluster}", *args),
        )
    ]  # fmt: skip


# -- pools against sinfo ---------------------------------------------------------------------

#: ``sinfo`` format of one line per node and partition.
SINFO_FORMAT = "%N|%R|%c|%m|%G"


def _gres_gpus(text: str) -> dict[str, int]:
    """``gpu:a100:4(S:0-1),gpu:t4:1`` → GPUs by model ("" where Slurm names none)."""
    out: dict[str, int] = {}
    for item in text.split(","):
        item = item.split("(", 1)[0].strip()
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2 or not parts[-1].isdigit():
            continue
        model = parts[1] if len(parts) > 2 else ""
        out[model] = out.get(model, 0) + int(parts[-1])
    return out


def pool_drift(policy: Policy, sinfo: str) -> list[str]:
    """Where the policy's Slurm pools and Slurm's partitions disagree (``sinfo -h -N -o
    SINFO_FORMAT``): a partition missing, a declared node missing from it or declared with
    more CPUs, memory or GPUs than Slurm has, a node of the partition the policy does not
    declare."""
    nodes: dict[str, dict[str, tuple[int, int, dict[str, int]]]] = {}
    for line in sinfo.splitlines():
        cols = line.strip().split("|")
        if len(cols) < 5 or not cols[0]:
            continue
        node, part, cpu_text, mem_text, gres = cols[:5]
        nodes.setdefault(part, {})[node] = (
            int(cpu_text) if cpu_text.isdigit() else 0,
            int(mem_text) if mem_text.isdigit() else 0,
            _gres_gpus(gres),
        )
    out: list[str] = []
    for name in slurm_pools(policy):
        spec = policy.pools[name]
        part = spec.partition or ""
        if part not in nodes:
            out.append(f"pool {name}: Slurm has no partition {part or '(none named)'}")
            continue
        have = nodes[part]
        for n in spec.nodes:
            if n.name not in have:
                out.append(f"pool {name}: node {n.name} is not in Slurm's partition {part}")
                continue
            cpus, mem, gpus = have[n.name]
            if n.cpus != cpus:
                out.append(f"pool {name}: node {n.name} has {cpus} CPUs in Slurm, {n.cpus:g} here")
            if n.memory // MIB != mem:
                out.append(
                    f"pool {name}: node {n.name} has {mem} MiB in Slurm (RealMemory), "
                    f"{n.memory // MIB} MiB here"
                )
            if sum(n.gpus.values()) != sum(gpus.values()):
                out.append(
                    f"pool {name}: node {n.name} has {sum(gpus.values())} GPUs in Slurm, "
                    f"{sum(n.gpus.values())} here"
                )
        declared = {n.name for n in spec.nodes}
        for node in sorted(set(have) - declared):
            out.append(f"pool {name}: Slurm's partition {part} has node {node}, not declared here")
    return out
