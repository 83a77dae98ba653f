"""Checks that need the whole policy: references, the tree's shape, sizes against nodes.

Each finding carries the key path it is about, so the loader can name the line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from allotment.config.models import Policy, PoolSpec, QuotaSpec, SizeSpec
from allotment.config.resolve import (
    account_paths,
    parents,
    profile_gpus,
    resolve_account,
    resolve_parent,
)
from allotment.domain.accounts import find_cycle
from allotment.domain.quantities import format_bytes
from allotment.domain.resources import Resources
from allotment.domain.slurm import slurm_account

__all__ = ["Finding", "check"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    loc: Loc
    message: str
    hint: str = ""


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    if not choices:
        return "none are defined yet"
    shown = ", ".join(sorted(choices)[:8])
    return f"known: {shown}" + (" …" if len(choices) > 8 else "")


def check(policy: Policy) -> list[Finding]:
    """Every problem of the policy as a whole, in file order of the sections."""
    out: list[Finding] = []
    out += _check_accounts(policy)
    out += _check_pools(policy)
    out += _check_profiles(policy)
    out += _check_allocations(policy)
    out += _check_limits(policy)
    out += _check_budgets(policy)
    out += _check_slurm_names(policy)
    return out


def _check_accounts(policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    names = policy.accounts
    for name, spec in names.items():
        if spec.parent is not None and resolve_parent(policy, spec.parent) is None:
            out.append(
                Finding(
                    ("accounts", name, "parent"),
                    f"unknown parent account '{spec.parent}'",
                    f"{_did_you_mean(spec.parent, names)}; define it under `accounts:` "
                    "or leave `parent` out to make a root.",
                )
            )
        seen: dict[str, str] = {}
        for role in ("managers", "members", "viewers"):
            for user in getattr(spec, role):
                if user in seen:
                    out.append(
                        Finding(
                            ("accounts", name, role),
                            f"user '{user}' is listed in both {seen[user]} and {role}",
                            "a user holds one role per account; keep the strongest "
                            "(managers > members > viewers).",
                        )
                    )
                seen[user] = role
    cycle = find_cycle(parents(policy))
    if cycle:
        out.append(
            Finding(
                ("accounts", cycle[0], "parent"),
                "the accounts tree has a cycle: " + " → ".join(cycle),
                "every account's chain of parents must end at a root; "
                f"remove `parent` from one of {', '.join(sorted(set(cycle)))}.",
            )
        )
        return out
    paths = account_paths(policy)
    for name, spec in names.items():
        if spec.parent and "/" in spec.parent and resolve_parent(policy, spec.parent):
            parent = spec.parent.rsplit("/", 1)[-1]
            if paths[parent] != spec.parent:
                out.append(
                    Finding(
                        ("accounts", name, "parent"),
                        f"parent path '{spec.parent}' does not exist; "
                        f"'{parent}' is at '{paths[parent]}'",
                        f"write `parent: {parent}` or `parent: {paths[parent]}`.",
                    )
                )
    for user, uspec in policy.users.items():
        if uspec.default_account is None:
            continue
        acct = resolve_account(policy, uspec.default_account)
        if acct is None:
            out.append(
                Finding(
                    ("users", user, "default_account"),
                    f"unknown account '{uspec.default_account}'",
                    _did_you_mean(uspec.default_account, names),
                )
            )
        elif not any(user in getattr(names[acct], r) for r in ("managers", "members")):
            out.append(
                Finding(
                    ("users", user, "default_account"),
                    f"user '{user}' cannot charge '{paths[acct]}': not a member or manager of it",
                    f"add '{user}' to `accounts.{acct}.members`, or pick an account they are in.",
                )
            )
    return out


def _check_pools(policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    for pname, pool in policy.pools.items():
        seen: set[str] = set()
        for i, node in enumerate(pool.nodes):
            if node.name in seen:
                out.append(
                    Finding(
                        ("pools", pname, "nodes", i, "name"),
                        f"node '{node.name}' is listed twice in pool '{pname}'",
                        "give each node a unique name.",
                    )
                )
            seen.add(node.name)
        if pool.backend == "local" and len(pool.nodes) > 1:
            out.append(
                Finding(
                    ("pools", pname, "nodes", 1),
                    f"pool '{pname}' uses the local backend, which runs on this machine alone, "
                    f"but lists {len(pool.nodes)} nodes",
                    "keep one node (this machine), or use `backend: slurm` for a cluster.",
                )
            )
        if pool.backend != "slurm" and pool.qos:
            out.append(
                Finding(
                    ("pools", pname, "qos"),
                    f"pool '{pname}' names a Slurm QOS but uses the {pool.backend} backend",
                    "remove `qos`, or use `backend: slurm`.",
                )
            )
        if pool.backend == "slurm" and not pool.partition:
            out.append(
                Finding(
                    ("pools", pname, "partition"),
                    f"pool '{pname}' uses the slurm backend but names no partition",
                    "add `partition: <name>` (see `sinfo -s`).",
                )
            )
        models = {m for node in pool.nodes for m in node.gpus}
        for model in pool.rates.gpu:
            if model not in models:
                out.append(
                    Finding(
                        ("pools", pname, "rates", "gpu", model),
                        f"a rate for GPU model '{model}', which no node of '{pname}' has",
                        _did_you_mean(model, models),
                    )
                )
    return out


def _check_slurm_names(policy: Policy) -> list[Finding]:
    """Accounts are mirrored into Slurm as flat names (``domain/slurm.py``): two
    paths that would share one name cannot both be."""
    if not any(p.backend == "slurm" for p in policy.pools.values()):
        return []
    if find_cycle(parents(policy)):
        return []
    out: list[Finding] = []
    seen: dict[str, str] = {}
    for name, path in sorted(account_paths(policy).items(), key=lambda kv: kv[1]):
        slurm = slurm_account(path)
        if slurm in seen:
            out.append(
                Finding(
                    ("accounts", name),
                    f"accounts '{seen[slurm]}' and '{path}' would both be Slurm account "
                    f"'{slurm}' (paths are mirrored with '/' as '.')",
                    "rename one of them: dots in account names can collide with the tree's levels.",
                )
            )
        seen[slurm] = path
    return out


def advice(policy: Policy) -> list[str]:
    """What is allowed but worth a word when the policy is applied (not an error)."""
    out: list[str] = []
    slurm = sorted(name for name, p in policy.pools.items() if p.backend == "slurm")
    if slurm:
        out.append(
            f"Slurm pools ({', '.join(slurm)}): jobs run on the cluster's nodes as the users' "
            "POSIX accounts, so the nodes must know those accounts (from the site's directory: "
            "`identity.existing_accounts` with LDAP or PAM, or accounts Allotment creates made "
            "known there), and home directories and environments must be on a filesystem the "
            "nodes share: a session or job started on another node needs its files there."
        )
    return out


def _largest(pool: PoolSpec) -> str:
    parts = [f"{n.name}: {Resources.of(n.cpus, n.memory, n.gpus).describe()}" for n in pool.nodes]
    return "; ".join(parts[:4]) + (" …" if len(parts) > 4 else "")


def _check_profiles(policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    for name, prof in policy.profiles.items():
        pool = policy.pools.get(prof.pool)
        if pool is None:
            out.append(
                Finding(
                    ("profiles", name, "pool"),
                    f"unknown pool '{prof.pool}'",
                    _did_you_mean(prof.pool, policy.pools),
                )
            )
        else:
            out += _check_size(name, prof.size, pool, prof.pool)
        for i, ref in enumerate(prof.accounts):
            if resolve_account(policy, ref) is None:
                out.append(
                    Finding(
                        ("profiles", name, "accounts", i),
                        f"unknown account '{ref}'",
                        _did_you_mean(ref, policy.accounts),
                    )
                )
        gpus = profile_gpus(prof.size, pool) if pool else None
        for key, value in (
            ("cpus", prof.size.cpus),
            ("memory_gib", prof.size.memory / 1024**3),
            ("gpus", sum(gpus.values()) if gpus else 0),
        ):
            rng = getattr(prof.options, key)
            if rng is None:
                continue
            if rng.min > rng.max:
                out.append(
                    Finding(
                        ("profiles", name, "options", key),
                        f"min {rng.min:g} is above max {rng.max:g}",
                        "swap them.",
                    )
                )
            elif not rng.min <= value <= rng.max:
                out.append(
                    Finding(
                        ("profiles", name, "options", key),
                        f"the default size ({value:g}) lies outside the range "
                        f"{rng.min:g}–{rng.max:g}",
                        "widen the range or change `size`.",
                    )
                )
    return out


def _check_size(profile: str, size: SizeSpec, pool: PoolSpec, pool_name: str) -> list[Finding]:
    gpus = profile_gpus(size, pool)
    models = sorted({m for node in pool.nodes for m in node.gpus})
    if gpus is None:
        return [
            Finding(
                ("profiles", profile, "size", "gpus"),
                f"pool '{pool_name}' has several GPU models ({', '.join(models)}); "
                "a bare count is ambiguous",
                f"write `gpus: {{{models[0]}: {size.gpus}}}`.",
            )
        ]
    out = []
    for model in gpus:
        if model not in models:
            out.append(
                Finding(
                    ("profiles", profile, "size", "gpus", model),
                    f"no node of pool '{pool_name}' has GPU model '{model}'",
                    _did_you_mean(model, models),
                )
            )
    if out:
        return out
    fits = any(
        size.cpus <= n.cpus
        and size.memory <= n.memory
        and all(c <= n.gpus.get(m, 0) for m, c in gpus.items())
        for n in pool.nodes
    )
    if not fits:
        want = Resources.of(size.cpus, size.memory, gpus).describe()
        out.append(
            Finding(
                ("profiles", profile, "size"),
                f"asks for {want}, more than any node of pool '{pool_name}' has",
                f"nodes: {_largest(pool)}. Make the profile smaller or add a bigger node.",
            )
        )
    return out


def _check_allocations(policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    seen: dict[tuple[str, str], int] = {}
    for i, alloc in enumerate(policy.allocations):
        acct = resolve_account(policy, alloc.account)
        if acct is None:
            out.append(
                Finding(
                    ("allocations", i, "account"),
                    f"unknown account '{alloc.account}'",
                    _did_you_mean(alloc.account, policy.accounts),
                )
            )
        pool = policy.pools.get(alloc.pool)
        if pool is None:
            out.append(
                Finding(
                    ("allocations", i, "pool"),
                    f"unknown pool '{alloc.pool}'",
                    _did_you_mean(alloc.pool, policy.pools),
                )
            )
        if acct and pool:
            key = (acct, alloc.pool)
            if key in seen:
                out.append(
                    Finding(
                        ("allocations", i),
                        f"account '{acct}' already has an allocation on pool '{alloc.pool}' "
                        f"(allocations[{seen[key]}])",
                        "merge the two entries.",
                    )
                )
            seen[key] = i
            out += _check_quota(("allocations", i, "quota"), alloc.quota, pool, alloc.pool)
    return out


def _check_quota(loc: Loc, quota: QuotaSpec, pool: PoolSpec, pool_name: str) -> list[Finding]:
    cpus = sum(n.cpus for n in pool.nodes)
    memory = sum(n.memory for n in pool.nodes)
    out = []
    if quota.cpus > cpus:
        out.append(
            Finding(
                (*loc, "cpus"),
                f"quota of {quota.cpus:g} CPUs is more than pool '{pool_name}' has ({cpus:g})",
                "a guarantee larger than the pool cannot be kept; lower it.",
            )
        )
    if quota.memory > memory:
        out.append(
            Finding(
                (*loc, "memory"),
                f"quota of {format_bytes(quota.memory)} is more than pool '{pool_name}' "
                f"has ({format_bytes(memory)})",
                "a guarantee larger than the pool cannot be kept; lower it.",
            )
        )
    for model, n in quota.gpus.items():
        have = sum(node.gpus.get(model, 0) for node in pool.nodes)
        if n > have:
            out.append(
                Finding(
                    (*loc, "gpus", model),
                    f"quota of {n}× {model} is more than pool '{pool_name}' has ({have})",
                    "lower it, or check the model name.",
                )
            )
    return out


def _check_limits(policy: Policy) -> list[Finding]:
    out = []
    for ref in policy.limits.accounts:
        if resolve_account(policy, ref) is None:
            out.append(
                Finding(
                    ("limits", "accounts", ref),
                    f"unknown account '{ref}'",
                    _did_you_mean(ref, policy.accounts),
                )
            )
    return out


def _check_budgets(policy: Policy) -> list[Finding]:
    """A budget's ``step_down`` names a profile that exists, on the budget's pool (any pool
    for an account's budget across pools): work steps down within its pool."""
    out: list[Finding] = []
    where: list[tuple[Loc, str | None, str]] = [
        (("accounts", name, "budget", "step_down"), None, spec.budget.step_down)
        for name, spec in policy.accounts.items()
        if spec.budget is not None and spec.budget.step_down is not None
    ]
    where += [
        (("allocations", i, "budget", "step_down"), alloc.pool, alloc.budget.step_down)
        for i, alloc in enumerate(policy.allocations)
        if alloc.budget is not None and alloc.budget.step_down is not None
    ]
    for loc, pool, name in where:
        profile = policy.profiles.get(name)
        if profile is None:
            out.append(
                Finding(
                    loc,
                    f"unknown profile '{name}' to step down to",
                    f"{_did_you_mean(name, policy.profiles)}; define it under `profiles:` "
                    "(a low-priority one), or leave `step_down` out to stop work instead.",
                )
            )
        elif pool is not None and profile.pool != pool:
            out.append(
                Finding(
                    loc,
                    f"profile '{name}' runs on pool '{profile.pool}', not on this budget's "
                    f"pool '{pool}'",
                    f"running work steps down within its pool: name a profile of pool '{pool}'.",
                )
            )
    return out
