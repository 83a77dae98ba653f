"""Who may create and archive accounts and read the audit log (domain/permissions.py)."""

from __future__ import annotations

from allotment.domain.accounts import Role
from allotment.domain.permissions import Scope
from tests.support.builders import principal as who

M, MG, V = Role.MEMBER, Role.MANAGER, Role.VIEWER
READ = (Scope.READ,)


def test_a_manager_creates_accounts_in_her_subtree_only() -> None:
    al = who("al", ("p/a", MG))
    assert al.can_create_account("p/a") and al.can_create_account("p/a/x")
    assert not al.can_create_account("p")  # above her
    assert not al.can_create_account("p/b")  # next door
    assert not al.can_create_account("p/ab")  # a prefix is not a parent
    assert not al.can_create_account(None)  # roots are the administrator's
    assert not who("al", ("p/a", MG), scopes=(Scope.READ, Scope.SUBMIT)).can_create_account("p/a")
    assert not who("bob", ("p/a", M)).can_create_account("p/a")
    assert not who("fr", ("p/a", V)).can_create_account("p/a")
    root = who("root", scopes=(Scope.ADMIN,))
    assert root.can_create_account(None) and root.can_create_account("q")


def test_a_manager_archives_below_her_own_account_only() -> None:
    al = who("al", ("p/a", MG))
    assert al.can_archive_account("p/a/x")
    assert not al.can_archive_account("p/a")  # her own lab is the level above's
    assert not al.can_archive_account("p/b/x")
    assert who("root", scopes=(Scope.ADMIN,)).can_archive_account("p")


def test_the_audit_log_is_for_managers_of_the_subtree_and_administrators() -> None:
    al = who("al", ("p/a", MG), ("q", M))
    assert al.can_read_audit("p/a") and al.can_read_audit("p/a/x")
    assert not al.can_read_audit("p") and not al.can_read_audit("p/b")
    assert not al.can_read_audit("q")  # a member reads no audit
    assert al.audit_roots() == ["p/a"]
    ro = who("al", ("p/a", MG), scopes=READ)  # reading needs only `read`
    assert ro.can_read_audit("p/a") and ro.audit_roots() == ["p/a"]
    none = who("al", ("p/a", MG), scopes=())
    assert not none.can_read_audit("p/a") and none.audit_roots() == []
    assert not who("fr", ("p/a", V)).can_read_audit("p/a")
    assert who("fr", ("p/a", V)).audit_roots() == []
    assert who("root", scopes=(Scope.ADMIN,)).can_read_audit("")
