"""Make the database match a policy, idempotently, without ever deleting history.

Accounts, pools and profiles that a workload refers to are archived when the policy drops
them; those nothing refers to are deleted. Memberships a manager added through the API
(origin ``api``) survive an apply unless the policy states the same membership itself, and so
do accounts a manager created (origin ``api``): an apply never removes them for being absent
from the file; it adopts one (origin ``policy``) when the file names it. Each change is written
to the audit log (``db.audit``) in the apply's transaction, one entry per change.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from allotment.config.models import Policy
from allotment.config.resolve import account_paths, profile_gpus, resolve_account
from allotment.db.audit import record
from allotment.db.budgets import sync_budgets
from allotment.db.tables import (
    Account,
    LedgerEntry,
    Membership,
    PolicyVersion,
    Pool,
    Profile,
    UsageDay,
    User,
    Workload,
)

__all__ = ["apply_policy", "identity_warnings", "policy_document"]


class Changes(list[str]):
    """What an apply changed, as the lines ``allot config apply`` prints; ``note`` adds a line
    and writes its audit entry in the same transaction."""

    def __init__(self, session: AsyncSession, actor: str, now: datetime) -> None:
        super().__init__()
        self.session, self.actor, self.now = session, actor, now

    def note(
        self,
        line: str,
        *,
        action: str,
        target: str,
        account_path: str = "",
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        self.append(line)
        record(
            self.session,
            actor=self.actor,
            action=action,
            target=target,
            now=self.now,
            account_path=account_path,
            before=before,
            after=after,
        )


def policy_document(policy: Policy) -> dict[str, Any]:
    """The policy as stored: everything but ``service``, which may hold a database password."""
    doc: dict[str, Any] = policy.model_dump(mode="json", exclude={"service"})
    return doc


async def apply_policy(
    session: AsyncSession, policy: Policy, *, actor: str, now: datetime
) -> tuple[int | None, list[str]]:
    """Sync ``policy`` into the database; return the version in force and what changed."""
    doc = policy_document(policy)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    changes = Changes(session, actor, now)
    latest = (
        await session.execute(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))
    ).scalar_one_or_none()
    before = (latest.document.get("accounts", {}) if latest is not None else {}) or {}
    accounts = await _sync_accounts(session, policy, before, now, changes)
    await _sync_users_and_memberships(session, policy, accounts, now, changes)
    pools = await _sync_pools(session, policy, changes)
    await _sync_profiles(session, policy, pools, now, changes)
    await sync_budgets(session, policy, accounts, pools, actor=actor, now=now, changes=changes)
    await _remove_pools(session, policy, now, changes)
    if latest is not None and latest.sha256 == digest and not changes:
        return latest.id, []
    if latest is None or latest.sha256 != digest:
        changes.append("new policy version recorded")
    version = PolicyVersion(
        applied_at=now, applied_by=actor, sha256=digest, document=doc, changes=list(changes)
    )
    session.add(version)
    await session.flush()
    record(
        session,
        actor=actor,
        action="policy.apply",
        target=f"policy version {version.id}",
        now=now,
        after={"version": version.id, "sha256": digest, "changes": len(changes)},
    )
    return version.id, list(changes)


async def identity_warnings(session: AsyncSession, policy: Policy) -> list[str]:
    """What ``policy`` changes for hub users who ran as existing POSIX accounts of their own
    name (as every version before this rule did): without ``identity.existing_accounts``,
    their next workloads run as accounts Allotment creates instead."""
    advice: list[str] = []
    if policy.identity.existing_accounts is not None:
        return advice
    rows = await session.execute(
        select(User.name, Workload.placement)
        .join(User, User.id == Workload.user_id)
        .where(Workload.placement.is_not(None))
    )
    borrowed = sorted({name for name, placement in rows if placement.get("user") == name})
    if not borrowed:
        return advice
    shown = ", ".join(borrowed[:10]) + (
        f" and {len(borrowed) - 10} more" if len(borrowed) > 10 else ""
    )
    return advice + [
        f"hub users {shown} ran workloads as the existing POSIX accounts of the same name; "
        "this policy has no `identity.existing_accounts`, so their next workloads run as "
        "accounts Allotment creates (jupyter-<name>), without their files. If your hub's "
        "authenticator (PAM, LDAP) vouches for these names, keep the old mapping with "
        "`identity: {existing_accounts: {uid_min: 1000}}`."
    ]


async def _used_account_ids(session: AsyncSession) -> set[int]:
    """Accounts history refers to: workloads, and the ledger's entries and daily totals."""
    used: set[int] = set()
    for table in (Workload, LedgerEntry, UsageDay):
        used |= set((await session.execute(select(table.account_id).distinct())).scalars())
    return used


async def _sync_accounts(
    session: AsyncSession,
    policy: Policy,
    before: dict[str, Any],
    now: datetime,
    changes: Changes,
) -> dict[str, Account]:
    """Accounts as the policy states them. Shares and descriptions are set when the file
    changes them (or names the account for the first time): a manager's edit through the API
    survives applies of a file that says the same as before. Accounts managers created are
    left as they are, but follow their parent (its path; archived with it)."""
    existing = {a.name: a for a in (await session.execute(select(Account))).scalars()}
    paths = account_paths(policy)
    by_name: dict[str, Account] = {}
    for name in sorted(paths, key=lambda n: paths[n].count("/")):
        spec = policy.accounts[name]
        parent = by_name[paths[name].rsplit("/", 1)[0].rsplit("/", 1)[-1]] if spec.parent else None
        row = existing.get(name)
        if row is None:
            row = Account(
                name=name,
                path=paths[name],
                parent_id=parent.id if parent else None,
                shares=spec.shares,
                description=spec.description,
                created_at=now,
                origin="policy",
            )
            session.add(row)
            await session.flush()
            changes.note(
                f"+ account {paths[name]} (shares {spec.shares})",
                action="account.create",
                target=paths[name],
                account_path=paths[name],
                after={"shares": spec.shares, "description": spec.description},
            )
        else:
            _update_account(
                row, paths[name], parent, spec.shares, spec.description, before, changes
            )
        by_name[name] = row
    gone = [a for n, a in existing.items() if n not in paths and a.origin == "policy"]
    managers = sorted(
        (a for n, a in existing.items() if n not in paths and a.origin != "policy"),
        key=lambda a: a.path.count("/"),
    )
    if gone:
        # Deepest first, so that an account whose child is kept (in the policy, archived, or
        # created by a manager) is itself kept and the archived subtree stays whole.
        kept = (
            await _used_account_ids(session)
            | {a.id for a in by_name.values()}
            | {a.id for a in managers}
        )
        for row in sorted(gone, key=lambda a: -a.path.count("/")):
            has_kept_child = any(
                other.parent_id == row.id and other.id in kept for other in existing.values()
            )
            if row.id in kept or has_kept_child:
                kept.add(row.id)
                if row.archived_at is None:
                    row.archived_at = now
                    changes.note(
                        f"- account {row.path} archived (its history is kept)",
                        action="account.archive",
                        target=row.path,
                        account_path=row.path,
                        before={"shares": row.shares, "description": row.description},
                    )
            else:
                await session.execute(delete(Membership).where(Membership.account_id == row.id))
                await session.execute(
                    update(User)
                    .where(User.default_account_id == row.id)
                    .values(default_account_id=None)
                )
                await session.execute(
                    update(Account).where(Account.parent_id == row.id).values(parent_id=None)
                )
                await session.delete(row)
                changes.note(
                    f"- account {row.path} removed",
                    action="account.remove",
                    target=row.path,
                    account_path=row.path,
                    before={"shares": row.shares, "description": row.description},
                )
        await session.flush()
    _follow_parents(managers, {a.id: a for a in existing.values()}, now, changes)
    await session.flush()
    return by_name


def _update_account(
    row: Account,
    path: str,
    parent: Account | None,
    shares: int,
    description: str,
    before: dict[str, Any],
    changes: Changes,
) -> None:
    """An account the database holds, as the file states it. A manager's account the file now
    names becomes the file's (and takes the file's values)."""
    diffs = []
    was: dict[str, Any] = {}
    now_is: dict[str, Any] = {}
    old = before.get(row.name)
    if row.origin != "policy":
        diffs.append("now stated by the policy file")
        was["origin"], now_is["origin"] = row.origin, "policy"
        row.origin = "policy"
        old = None  # the file names it for the first time: its values win
    if row.path != path:
        diffs.append(f"moved from {row.path}")
        was["path"], now_is["path"] = row.path, path
        row.path = path
    new_parent = parent.id if parent else None
    if row.parent_id != new_parent:
        row.parent_id = new_parent
    file_changed = old is None or old.get("shares") != shares
    if row.shares != shares and file_changed:
        diffs.append(f"shares {row.shares} → {shares}")
        was["shares"], now_is["shares"] = row.shares, shares
        row.shares = shares
    file_changed = old is None or old.get("description") != description
    if row.description != description and file_changed:
        diffs.append("description")
        was["description"], now_is["description"] = row.description, description
        row.description = description
    if row.archived_at is not None:
        diffs.append("restored from archive")
        was["archived"], now_is["archived"] = True, False
        row.archived_at = None
    if diffs:
        changes.note(
            f"~ account {path}: {', '.join(diffs)}",
            action="account.update",
            target=f"{path} {', '.join(now_is)}",
            account_path=path,
            before=was,
            after=now_is,
        )


def _follow_parents(
    managers: list[Account], rows: dict[int, Account], now: datetime, changes: Changes
) -> None:
    """Accounts managers created (parents first) take their parent's new path, and are
    archived with it: work cannot be charged below an account that is closed."""
    for row in managers:
        parent = rows.get(row.parent_id) if row.parent_id is not None else None
        if parent is None:
            continue
        path = f"{parent.path}/{row.name}"
        if row.path != path:
            changes.note(
                f"~ account {path}: moved from {row.path} with its parent",
                action="account.update",
                target=f"{path} path",
                account_path=path,
                before={"path": row.path},
                after={"path": path},
            )
            row.path = path
        if parent.archived_at is not None and row.archived_at is None:
            row.archived_at = now
            changes.note(
                f"- account {row.path} archived with its parent {parent.path}",
                action="account.archive",
                target=row.path,
                account_path=row.path,
                before={"shares": row.shares, "description": row.description},
            )


async def _sync_users_and_memberships(
    session: AsyncSession,
    policy: Policy,
    accounts: dict[str, Account],
    now: datetime,
    changes: Changes,
) -> None:
    paths = {i: path for i, path in await session.execute(select(Account.id, Account.path))}
    wanted: dict[tuple[str, int], str] = {}
    for name, spec in policy.accounts.items():
        for role, holders in (
            ("viewer", spec.viewers),
            ("member", spec.members),
            ("manager", spec.managers),
        ):
            for user in holders:
                wanted[(user, accounts[name].id)] = role
    names = {u for u, _ in wanted} | set(policy.users)
    users = {
        u.name: u
        for u in (await session.execute(select(User).where(User.name.in_(names)))).scalars()
    }
    for name in sorted(names - users.keys()):
        users[name] = User(name=name, created_at=now)
        session.add(users[name])
    await session.flush()
    for name, uspec in policy.users.items():
        ref = uspec.default_account
        acct = accounts[resolve_account(policy, ref) or ""] if ref else None
        new = acct.id if acct else None
        old = users[name].default_account_id
        if old != new:
            users[name].default_account_id = new
            changes.note(
                f"~ user {name}: default account {acct.path if acct else 'none'}",
                action="user.default_account",
                target=f"{name} default account",
                before={"account": paths.get(old) if old is not None else None},
                after={"account": acct.path if acct else None},
            )
    ids = {u.id: u.name for u in users.values()}
    current = list((await session.execute(select(Membership))).scalars())
    seen: set[tuple[str, int]] = set()
    all_names = dict(ids)
    if any(m.user_id not in ids for m in current):
        rows = await session.execute(select(User.id, User.name))
        all_names = {i: n for i, n in rows}
    for m in current:
        key = (all_names[m.user_id], m.account_id)
        stated = wanted.get(key)
        path = paths.get(m.account_id, "?")
        where = f"{key[0]} in {path}"
        if stated is None:
            if m.origin == "policy":
                await session.delete(m)
                changes.note(
                    f"- member {where}",
                    action="member.remove",
                    target=where,
                    account_path=path,
                    before={"role": m.role},
                )
            continue
        seen.add(key)
        if m.role != stated or m.origin != "policy":
            changes.note(
                f"~ member {where}: {m.role} → {stated}",
                action="member.role",
                target=where,
                account_path=path,
                before={"role": m.role, "origin": m.origin},
                after={"role": stated, "origin": "policy"},
            )
            m.role, m.origin = stated, "policy"
    for (user, account_id), role in sorted(wanted.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if (user, account_id) not in seen:
            session.add(
                Membership(
                    user_id=users[user].id, account_id=account_id, role=role, origin="policy"
                )
            )
            where = f"{user} in {paths[account_id]}"
            changes.note(
                f"+ member {where} as {role}",
                action="member.add",
                target=where,
                account_path=paths[account_id],
                after={"role": role},
            )
    await session.flush()


async def _sync_pools(session: AsyncSession, policy: Policy, changes: Changes) -> dict[str, Pool]:
    existing = {p.name: p for p in (await session.execute(select(Pool))).scalars()}
    out: dict[str, Pool] = {}
    for name, spec in policy.pools.items():
        doc = spec.model_dump(mode="json")
        row = existing.get(name)
        if row is None:
            row = Pool(name=name, backend=spec.backend, spec=doc)
            session.add(row)
            changes.note(
                f"+ pool {name} ({spec.backend}, {len(spec.nodes)} node(s))",
                action="pool.add",
                target=f"pool {name}",
                after={"backend": spec.backend},
            )
        elif row.spec != doc or row.backend != spec.backend or row.archived_at is not None:
            row.spec, row.backend, row.archived_at = doc, spec.backend, None
            changes.note(f"~ pool {name}", action="pool.update", target=f"pool {name}")
        out[name] = row
    await session.flush()
    return out


async def _remove_pools(
    session: AsyncSession, policy: Policy, now: datetime, changes: Changes
) -> None:
    """Drop or archive the pools the policy no longer names (after profiles moved off them)."""
    for row in (await session.execute(select(Pool))).scalars():
        name = row.name
        if name in policy.pools:
            continue
        used = await session.scalar(
            select(func.count()).select_from(Workload).where(Workload.pool_id == row.id)
        ) or await session.scalar(
            select(func.count()).select_from(Profile).where(Profile.pool_id == row.id)
        )
        if used:
            if row.archived_at is None:
                row.archived_at = now
                changes.note(
                    f"- pool {name} archived (its history is kept)",
                    action="pool.archive",
                    target=f"pool {name}",
                )
        else:
            await session.delete(row)
            changes.note(f"- pool {name} removed", action="pool.remove", target=f"pool {name}")
    await session.flush()


async def _sync_profiles(
    session: AsyncSession,
    policy: Policy,
    pools: dict[str, Pool],
    now: datetime,
    changes: Changes,
) -> None:
    existing = {p.name: p for p in (await session.execute(select(Profile))).scalars()}
    paths = account_paths(policy)
    for name, spec in policy.profiles.items():
        doc = spec.model_dump(mode="json")
        # Stored with the GPU model resolved, so readers need not know the pool.
        doc["size"]["gpus"] = profile_gpus(spec.size, policy.pools[spec.pool]) or {}
        doc["accounts"] = [paths[resolve_account(policy, ref) or ref] for ref in spec.accounts]
        row = existing.get(name)
        pool_id = pools[spec.pool].id
        if row is None:
            session.add(Profile(name=name, pool_id=pool_id, spec=doc))
            changes.note(
                f"+ profile {name} on {spec.pool}",
                action="profile.add",
                target=f"profile {name}",
                after={"pool": spec.pool},
            )
        elif row.spec != doc or row.pool_id != pool_id or row.archived_at is not None:
            row.spec, row.pool_id, row.archived_at = doc, pool_id, None
            changes.note(f"~ profile {name}", action="profile.update", target=f"profile {name}")
    for name, row in existing.items():
        if name in policy.profiles:
            continue
        used = await session.scalar(
            select(func.count()).select_from(Workload).where(Workload.profile_id == row.id)
        )
        if used:
            if row.archived_at is None:
                row.archived_at = now
                changes.note(
                    f"- profile {name} archived (its history is kept)",
                    action="profile.archive",
                    target=f"profile {name}",
                )
        else:
            await session.delete(row)
            changes.note(
                f"- profile {name} removed", action="profile.remove", target=f"profile {name}"
            )
    await session.flush()
