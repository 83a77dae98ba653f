"""Who sees which page. The caller comes from the same rules as the API's (``Principal``);
these add only what a page shows beyond the API's reads.

- *Me*: anyone logged in with ``custom:allotment:read``.
- *Account*: administrators; members, managers and viewers of the account or of an account
  above it (a lab's member sees the lab and its projects, not the institute's whole spending,
  nor a sibling lab: those are 404, as the API answers for what one may not see).
- *Leaderboard*: as the Account page, narrowed by ``accounting.leaderboard``: ``managers``
  leaves managers of the account or above (and administrators), ``off`` nobody.
- *Waste*: one's own workloads, and those of the subtrees one manages or views.
- *Admin*: administrators only.
"""

from __future__ import annotations

from allotment.domain.accounts import Role, is_within
from allotment.domain.permissions import Principal, Scope

__all__ = ["can_see_leaderboard", "can_view_account", "manages"]


def can_view_account(principal: Principal, path: str) -> bool:
    if not principal.has(Scope.READ):
        return False
    if principal.is_admin:
        return True
    return any(is_within(path, m.account) for m in principal.memberships)


def manages(principal: Principal, path: str) -> bool:
    """A manager of ``path`` or above (or an administrator): sees its managers' parts."""
    if principal.is_admin:
        return True
    return any(m.role is Role.MANAGER and is_within(path, m.account) for m in principal.memberships)


def can_see_leaderboard(principal: Principal, path: str, setting: str) -> bool:
    if setting == "off" or not can_view_account(principal, path):
        return False
    return setting == "members" or manages(principal, path)
