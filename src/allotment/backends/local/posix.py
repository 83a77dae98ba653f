"""Which POSIX account a hub user's workloads run as.

When Allotment runs as root, every hub user runs as their own account:

- by default ``jupyter-<name>``, created on first use (the convention of The Littlest
  JupyterHub), the name escaped so that any hub name maps to a distinct, valid POSIX name:
  ``a-z``, ``0-9`` stay, every other byte becomes ``_xx`` (hex); a name too long for POSIX is
  cut and given a hash. The GECOS field marks it as made by Allotment for that hub user, so
  the mapping can be read back from the account itself (any installation on the machine may
  use it for the same hub user), and an account that does not carry the mark is never taken
  over. Home directories are created with mode 0700.
- an existing account with the hub user's exact name only where the policy says so
  (``identity.existing_accounts``: sites whose hub logs in with PAM or LDAP, where the
  authenticator vouches for the name), within its uid range and groups. A hub login that
  accepts any name could otherwise become any local user.

When it is not root, every workload runs as the service's own account (single-user mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import hashlib
import logging
import os
import pwd
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from allotment.backends.local.process import ROOT_ENVIRONMENT, program
from allotment.config.models import ExistingAccountsSpec

__all__ = [
    "PosixAccount",
    "PosixAccounts",
    "decode",
    "escape",
    "legacy_unix_name",
    "mark",
    "unix_name",
]

log = logging.getLogger("allotment.local")

PREFIX = "jupyter-"
MAX_NAME = 32
MARK = "allotment "


def mark(hub_name: str) -> str:
    """The GECOS field of the account Allotment makes for ``hub_name``."""
    return MARK + escape(hub_name)


def escape(hub_name: str) -> str:
    out = []
    for byte in hub_name.encode():
        c = chr(byte)
        out.append(c if ("a" <= c <= "z" or "0" <= c <= "9") else f"_{byte:02x}")
    return "".join(out)


def decode(escaped: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(escaped):
        if escaped[i] == "_":
            raw.append(int(escaped[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(escaped[i]))
            i += 1
    return raw.decode()


def unix_name(hub_name: str, digits: int = 16) -> str:
    """The account created for ``hub_name``: distinct for distinct hub names. A name too long
    is cut and given ``digits`` hex digits of a hash: 64 bits, so that nobody can search out a
    hub name whose account would take the name of another's (32 bits fell in hours)."""
    name = PREFIX + escape(hub_name)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(hub_name.encode()).hexdigest()[:digits]
    return name[: MAX_NAME - digits - 1] + "-" + digest


def legacy_unix_name(hub_name: str) -> str:
    """The name versions before 64-bit hashes gave a long hub name's account; still used for
    the hub user it was made for, so that nobody loses their home."""
    return unix_name(hub_name, digits=8)


@dataclass(frozen=True)
class PosixAccount:
    name: str
    uid: int
    gid: int
    home: Path


def _account(entry: pwd.struct_passwd) -> PosixAccount:
    return PosixAccount(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


NOBODY = 65534
#: Shells of accounts nobody logs in to: those of services.
SERVICE_SHELLS = ("nologin", "false")


def refusal(entry: pwd.struct_passwd, hub_name: str, rule: ExistingAccountsSpec) -> str | None:
    """Why the existing account ``entry`` may not run ``hub_name``'s workloads, or None."""
    if entry.pw_name != hub_name:  # name services that match loosely (case, @domain)
        return f"its name {entry.pw_name!r} is not exactly the hub user's"
    if not rule.uid_min <= entry.pw_uid <= rule.uid_max or entry.pw_uid == NOBODY:
        return f"its uid {entry.pw_uid} is outside {rule.uid_min}-{rule.uid_max}"
    if os.path.basename(entry.pw_shell) in SERVICE_SHELLS:
        return f"its shell is {entry.pw_shell} (a service's account)"
    if entry.pw_gecos.startswith(MARK) and entry.pw_gecos != mark(hub_name):
        return "Allotment made it for another hub user"
    if rule.groups:
        mine = {grp.getgrgid(g).gr_name for g in _groups(entry)}
        if not mine & set(rule.groups):
            return f"it is in none of the groups {', '.join(rule.groups)}"
    return None


def _ours(name: str, hub_name: str) -> PosixAccount | None:
    """The account ``name`` if it exists and Allotment made it for ``hub_name``."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return _account(entry) if entry.pw_gecos == mark(hub_name) else None


def _groups(entry: pwd.struct_passwd) -> list[int]:
    try:
        return os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        return [entry.pw_gid]


#: How long a found account is used without looking it up again.
REMEMBER_SECONDS = 30.0


#: Held (``flock``) by whoever creates an account, machine-wide: in a directory only root may
#: write, mode 0600, so that no user can hold it.
CREATION_LOCK = Path("/run/allotment/accounts.lock")
#: How long a creation waits for another process's.
CREATION_WAIT_SECONDS = 60.0


@contextlib.asynccontextmanager
async def _held(path: Path) -> AsyncIterator[None]:
    """``path`` locked exclusively, waiting without blocking the event loop (and ending the
    wait if the caller is cancelled)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + CREATION_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(
                        f"another process has held {path} for {CREATION_WAIT_SECONDS:.0f} s "
                        "while creating a POSIX account"
                    ) from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # and with it the lock


class PosixAccounts:
    """Finds or creates the account for each hub user; one at a time, machine-wide.

    Two ``useradd`` of one name at once do not fail: shadow-utils checks the name before it
    locks ``/etc/passwd``, so the later one replaces the earlier's entry with a new uid, and
    whatever the first owned is left to a uid nobody has. So every creation holds
    ``CREATION_LOCK`` (every installation on the machine, every process) and looks again
    under it; an account made meanwhile is used, as any found one."""

    def __init__(
        self,
        *,
        create: bool | None = None,
        home_base: Path = Path("/home"),
        existing: ExistingAccountsSpec | None = None,
    ) -> None:
        self.isolated = os.geteuid() == 0 if create is None else create
        self.home_base = home_base
        #: The policy's ``identity.existing_accounts``; None: never use an existing account.
        self.existing = existing
        self._lock = asyncio.Lock()
        #: Accounts found lately: a user's jobs come in runs, and every look-up parses
        #: /etc/passwd (twice: the same name, then the mapped one).
        self._found: dict[str, tuple[float, PosixAccount]] = {}
        if not self.isolated:
            me = pwd.getpwuid(os.geteuid()).pw_name
            log.warning(
                "single-user mode: Allotment is not running as root, so every workload runs as "
                "'%s', and users are isolated neither from each other nor from the service's "
                "files. Run it as root to give each user their own POSIX account.",
                me,
            )

    async def resolve(self, hub_name: str) -> PosixAccount:
        if not self.isolated:
            return _account(pwd.getpwuid(os.geteuid()))
        now = time.monotonic()
        found = self._found.get(hub_name)
        if found is not None and now - found[0] < REMEMBER_SECONDS:
            return found[1]
        account = await self._resolve(hub_name)
        if len(self._found) > 10_000:
            self._found.clear()
        self._found[hub_name] = (now, account)
        return account

    async def _resolve(self, hub_name: str) -> PosixAccount:
        async with self._lock:
            if self.existing is not None:
                try:
                    same = pwd.getpwnam(hub_name)
                except KeyError:
                    same = None
                if same is not None:
                    why = refusal(same, hub_name, self.existing)
                    if why is None:
                        return _account(same)
                    log.warning(
                        "not running hub user %s as the existing account %s: %s",
                        hub_name,
                        same.pw_name,
                        why,
                    )
            name = unix_name(hub_name)
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                legacy = _ours(legacy_unix_name(hub_name), hub_name)
                if legacy is not None:
                    return legacy
                return await self._create(hub_name, name)
            if entry.pw_gecos != mark(hub_name):
                raise PermissionError(
                    f"POSIX account {name!r} exists but was not created by Allotment for hub "
                    f"user {hub_name!r}; refusing to run {hub_name!r}'s workloads as it. Rename "
                    "or remove that account."
                )
            return _account(entry)

    async def _create(self, hub_name: str, name: str) -> PosixAccount:
        async with _held(CREATION_LOCK):
            try:
                made = pwd.getpwnam(name)  # by another process, while this one waited
            except KeyError:
                return await self._useradd(hub_name, name)
        if made.pw_gecos != mark(hub_name):
            raise PermissionError(
                f"POSIX account {name!r} was just created, but not by Allotment for hub user "
                f"{hub_name!r}; refusing to run {hub_name!r}'s workloads as it."
            )
        return _account(made)

    async def _useradd(self, hub_name: str, name: str) -> PosixAccount:
        home = self.home_base / name
        proc = await asyncio.create_subprocess_exec(
            program("useradd"),
            "--create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/bin/bash",
            "--user-group",
            "--comment",
            mark(hub_name),
            "--",
            name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=ROOT_ENVIRONMENT,
            cwd="/",
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise OSError(f"useradd {name} failed: {err.decode().strip()}")
        os.chmod(home, 0o700)
        log.info("created POSIX account %s for hub user %s", name, hub_name)
        return _account(pwd.getpwnam(name))
