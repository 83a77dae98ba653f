"""Who may do what: the one place where Allotment decides authorisation.

Two things combine. *Scopes* come from the JupyterHub token and say what the token may be used
for at all (``custom:allotment:read`` < ``submit``; ``manage``; ``admin``). *Roles* come from
memberships in Allotment's accounts tree and say where: a role on an account holds for the
account's whole subtree. A token with the ``manage`` scope lets a user administer only the
subtrees they manage; ``admin`` holds everywhere.

Rules (``path`` is the account a workload charges or an action touches):

- read a workload: its owner (read); a manager or viewer of ``path`` (read); admin.
- submit: submit scope, and role member or manager on ``path`` (direct), or manager above it.
- cancel a workload: its owner (submit); a manager of ``path`` (manage); admin.
- see an account: any membership at, above or below it (ancestors are shown so the tree reads).
- change an account's settings: manager of a *proper* ancestor (manage); admin. A lab manager
  shapes the projects inside the lab, not the lab's weight among its siblings.
- change memberships of ``path``: manager of ``path`` or above (manage); admin.
- create an account under ``parent``: manager of ``parent`` or above (manage); admin (a root
  account, with no parent, is the administrator's alone). Archive one: as for its settings
  (manager of a proper ancestor), so a lab manager removes the lab's projects, not the lab.
- read the audit log of ``path``: a manager of ``path`` or above (read); admin. Viewers and
  members read workloads, not who changed what.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from allotment.domain.accounts import Membership, Role, ancestors, is_within

__all__ = ["Principal", "Scope", "expand_scopes"]


class Scope(StrEnum):
    READ = "custom:allotment:read"
    SUBMIT = "custom:allotment:submit"
    MANAGE = "custom:allotment:manage"
    ADMIN = "custom:allotment:admin"
    #: Held by the hub's spawner (a JupyterHub service): act for the hub user it names, with
    #: ``read`` and ``submit``. The hub already decided that user may start a server.
    SPAWN = "custom:allotment:spawn"
    #: Scrape ``…/api/metrics`` (Prometheus), and nothing else: sums by pool and account,
    #: never a user's workload. Held by the scraper's hub service; administrators hold it too.
    METRICS = "custom:allotment:metrics"


_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset(),
    Scope.SUBMIT: frozenset({Scope.READ}),
    Scope.MANAGE: frozenset({Scope.READ}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.SUBMIT, Scope.MANAGE, Scope.METRICS}),
    Scope.SPAWN: frozenset(),
    Scope.METRICS: frozenset(),
}


def expand_scopes(scopes: Iterable[str]) -> frozenset[Scope]:
    """The Allotment scopes a token holds, with the ones they imply; others are ignored."""
    out: set[Scope] = set()
    for s in scopes:
        try:
            scope = Scope(s)
        except ValueError:
            continue
        out.add(scope)
        out |= _IMPLIES[scope]
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user (or the headless admin) and what their token allows."""

    user: str
    scopes: frozenset[Scope]
    memberships: tuple[Membership, ...] = ()

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def _roles_over(self, path: str) -> set[Role]:
        """Roles held on ``path`` through a membership at or above it."""
        return {m.role for m in self.memberships if is_within(path, m.account)}

    def can_read_workload(self, owner: str, path: str) -> bool:
        if not self.has(Scope.READ):
            return False
        if self.is_admin or owner == self.user:
            return True
        return bool(self._roles_over(path) & {Role.MANAGER, Role.VIEWER})

    def can_submit_to(self, path: str) -> bool:
        if not self.has(Scope.SUBMIT):
            return False
        if self.is_admin:
            return True
        direct = any(
            m.account == path and m.role in (Role.MEMBER, Role.MANAGER) for m in self.memberships
        )
        return direct or Role.MANAGER in self._roles_over(path)

    def can_cancel_workload(self, owner: str, path: str) -> bool:
        if self.is_admin:
            return True
        if owner == self.user and self.has(Scope.SUBMIT):
            return True
        return self.has(Scope.MANAGE) and Role.MANAGER in self._roles_over(path)

    def can_see_account(self, path: str) -> bool:
        if not self.has(Scope.READ):
            return False
        if self.is_admin:
            return True
        return any(
            is_within(path, m.account) or is_within(m.account, path) for m in self.memberships
        )

    def can_change_account(self, path: str) -> bool:
        if self.is_admin:
            return True
        if not self.has(Scope.MANAGE):
            return False
        return any(
            m.role is Role.MANAGER and m.account in ancestors(path) for m in self.memberships
        )

    def can_change_memberships(self, path: str) -> bool:
        if self.is_admin:
            return True
        return self.has(Scope.MANAGE) and Role.MANAGER in self._roles_over(path)

    def can_create_account(self, parent: str | None) -> bool:
        if self.is_admin:
            return True
        return parent is not None and self.can_change_memberships(parent)

    def can_archive_account(self, path: str) -> bool:
        return self.can_change_account(path)

    def can_read_audit(self, path: str) -> bool:
        if not self.has(Scope.READ):
            return False
        return self.is_admin or Role.MANAGER in self._roles_over(path)

    def audit_roots(self) -> list[str]:
        """Roots of the subtrees whose audit entries this caller may read (admins: all)."""
        if not self.has(Scope.READ):
            return []
        return sorted({m.account for m in self.memberships if m.role is Role.MANAGER})

    def spendable_accounts(self) -> list[str]:
        """Accounts the user may charge directly (member or manager), sorted."""
        return sorted({m.account for m in self.memberships if m.role in ("member", "manager")})

    def oversight_roots(self) -> list[str]:
        """Roots of the subtrees whose workloads this caller may read besides their own."""
        return [m.account for m in self.memberships if m.role in (Role.MANAGER, Role.VIEWER)]
