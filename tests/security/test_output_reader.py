"""Security issue 11, part 4: no helper outlives its request.

``allot logs`` reads a job's output as the job's own POSIX account. The user controls that
file: it may be replaced by a FIFO (which a plain ``open`` waits on for ever), by a symlink to
a file only the service could read, or by a device that never ends. Every request must come
back promptly, read only a regular file, and leave no process and no descriptor behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from allotment.backends.local import output
from allotment.backends.local.cgroups import HELPERS, detect, prefix_of
from allotment.backends.local.output import read_as
from allotment.backends.local.posix import PosixAccount, PosixAccounts
from allotment.db.tables import WORKLOADS
from allotment.errors import Conflict
from allotment.installation import name_for
from tests.backends.conftest import ROOT
from tests.support.service import Service

root_only = pytest.mark.skipif(not ROOT, reason="needs root: reads as another POSIX account")

#: Each request must answer well within this; the old ``tail`` reader never answered a FIFO.
ANSWER_SECONDS = 20.0


@pytest.fixture
async def account() -> PosixAccount:
    return await PosixAccounts(create=True).resolve("outputreader")


@pytest.fixture
async def outdir(account: PosixAccount, shared: Path) -> AsyncIterator[Path]:
    """A directory of the account's own (0700), where its job's output would be."""
    d = shared / "out"
    d.mkdir()
    os.chown(d, account.uid, account.gid)
    d.chmod(0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _owned(path: Path, account: PosixAccount) -> Path:
    os.chown(path, account.uid, account.gid, follow_symlinks=False)
    return path


def _ppid_and_uid(pid: str) -> tuple[int, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        uid = os.stat(f"/proc/{pid}").st_uid
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(text[text.rindex(")") + 2 :].split()[1]), uid


def _footprint(uid: int) -> tuple[list[int], list[int], int]:
    """The account's processes, this process's children (zombies included in both) and the
    number of this process's open descriptors."""
    mine, children = [], []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        found = _ppid_and_uid(pid)
        if found is None:
            continue
        ppid, owner = found
        if owner == uid:
            mine.append(int(pid))
        if ppid == os.getpid():
            children.append(int(pid))
    return mine, children, len(os.listdir("/proc/self/fd"))


async def _read(account: PosixAccount, path: Path, offset: int = 0, limit: int = 2**20) -> bytes:
    data = await asyncio.wait_for(
        read_as(account.uid, account.gid, str(path), offset, limit), ANSWER_SECONDS
    )
    assert data is not None, f"{path} was not read"
    return data


async def _settled(uid: int, before: tuple[list[int], list[int], int]) -> None:
    """Wait (briefly) for the footprint to come back to ``before``; fail if it does not."""
    for _ in range(50):
        if _footprint(uid) == before:
            return
        await asyncio.sleep(0.1)
    assert _footprint(uid) == before


@root_only
async def test_200_reads_of_a_fifo_leave_no_process_and_no_descriptor(
    account: PosixAccount, outdir: Path
) -> None:
    fifo = outdir / "allot-7.out"
    os.mkfifo(fifo)
    _owned(fifo, account)
    with pytest.raises(Conflict, match=r"allot-7\.out is a FIFO, not a regular file"):
        await _read(account, fifo)  # the first also warms up the event loop's child watching
    before = _footprint(account.uid)
    for _ in range(20):
        results = await asyncio.gather(
            *(_read(account, fifo) for _ in range(10)), return_exceptions=True
        )
        for r in results:
            assert isinstance(r, Conflict), r
            assert "is a FIFO, not a regular file" in r.detail
    await _settled(account.uid, before)
    assert not stat.S_ISREG(fifo.lstat().st_mode)  # and nobody wrote to it


@root_only
@pytest.mark.parametrize("target", ["/etc/shadow", "/dev/zero"])
async def test_a_symlink_is_refused(account: PosixAccount, outdir: Path, target: str) -> None:
    link = outdir / "allot-8.out"
    link.symlink_to(target)
    _owned(link, account)
    with pytest.raises(Conflict, match=r"allot-8\.out is a symbolic link, not a regular file"):
        await _read(account, link)


@root_only
async def test_a_device_is_refused(account: PosixAccount) -> None:
    with pytest.raises(Conflict, match="/dev/zero is a character device, not a regular file"):
        await _read(account, Path("/dev/zero"))


@root_only
async def test_a_regular_file_reads_right_from_any_offset(
    account: PosixAccount, outdir: Path
) -> None:
    content = bytes(range(256)) * 400
    f = outdir / "allot-9.out"
    f.write_bytes(content)
    _owned(f, account).chmod(0o600)
    assert await _read(account, f) == content
    assert await _read(account, f, 0, 10) == content[:10]
    assert await _read(account, f, 250, 10) == content[250:260]
    assert await _read(account, f, len(content) - 10, 100) == content[-10:]
    assert await _read(account, f, len(content), 5) == b""
    assert await _read(account, f, 5, 16 * 2**20) == content[5:]


@root_only
async def test_what_the_account_may_not_read_is_not_read(
    account: PosixAccount, outdir: Path, shared: Path
) -> None:
    secret = shared / "root-only"
    secret.write_text("private")
    secret.chmod(0o600)
    for path in (secret, outdir / "missing", Path("/etc/shadow")):
        assert await read_as(account.uid, account.gid, str(path), 0, 100) is None
    assert pwd.getpwuid(account.uid).pw_name == account.name


@root_only
async def test_a_helper_that_takes_too_long_is_killed_and_reaped(
    account: PosixAccount, outdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = outdir / "allot-10.out"
    f.write_bytes(b"x" * 2**20)
    _owned(f, account)
    await _read(account, f)
    before = _footprint(account.uid)
    monkeypatch.setattr(output, "READ_SECONDS", 0.0)
    with pytest.raises(Conflict, match="could not be read within"):
        await _read(account, f)
    await _settled(account.uid, before)


@root_only
async def test_a_cancelled_request_takes_its_helper_with_it(
    account: PosixAccount, outdir: Path
) -> None:
    f = outdir / "allot-11.out"
    f.write_bytes(b"x" * 2**20)
    _owned(f, account)
    await _read(account, f)
    before = _footprint(account.uid)
    for _ in range(10):
        task = asyncio.ensure_future(read_as(account.uid, account.gid, str(f), 0, 2**20))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _settled(account.uid, before)


async def test_single_user_mode_reads_as_the_service_itself(tmp_path: Path) -> None:
    f = tmp_path / "allot-12.out"
    f.write_bytes(b"hello world")
    fifo = tmp_path / "allot-13.out"
    os.mkfifo(fifo)
    me, group = os.geteuid(), os.getegid()
    assert await read_as(me, group, str(f), 6, 100) == b"world"
    with pytest.raises(Conflict, match="is a FIFO"):
        await asyncio.wait_for(read_as(me, group, str(fifo), 0, 100), ANSWER_SECONDS)


async def test_a_path_with_any_character_comes_back_percent_encoded(
    service: Service, database_url: str, shared: Path
) -> None:
    """Review finding: a path outside Latin-1 made every read of the job's output a 500."""
    path = shared / "résumé-€.out"
    path.write_text("hello\n")
    async with service.admin() as admin:
        r = await admin.post(
            "workloads", json={"profile": "small", "account": "lab-a", "command": ["true"]}
        )
        wid = r.json()["id"]
        me = os.geteuid()
        engine = create_async_engine(database_url)
        async with engine.begin() as conn:
            placement = {"stdout": str(path), "uid": me, "gid": os.getegid(), "user": "me"}
            await conn.execute(
                update(WORKLOADS).where(WORKLOADS.c.id == wid).values(placement=placement)
            )
        await engine.dispose()
        got = await admin.get(f"workloads/{wid}/output")
    assert got.status_code == 200, got.text
    assert got.content == b"hello\n"
    assert unquote(got.headers["x-output-path"]) == str(path)


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:  # gone meanwhile
        return None


@root_only
async def test_a_helper_runs_in_the_helpers_cgroup(
    account: PosixAccount, outdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Design: every helper is bounded in time and lives inside a cgroup, its installation's."""
    installation = name_for(outdir)
    cgroups = detect(prefix=prefix_of(installation))
    if cgroups is None:
        pytest.skip("no writable cgroup hierarchy")
    f = outdir / "allot-13.out"
    f.write_bytes(b"x")
    _owned(f, account)
    monkeypatch.setattr(output, "_HELPER", "import time; time.sleep(5)")
    reading = read_as(account.uid, account.gid, str(f), 0, 1, installation=installation)
    task = asyncio.ensure_future(reading)
    try:
        for _ in range(100):
            inside = [p for p in cgroups.procs(HELPERS) if _uid_of(p) == account.uid]
            if inside:
                break
            await asyncio.sleep(0.05)
        assert inside, f"the helper, as the user, is in allotment/{installation}/helpers"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(100):  # the helper is reaped in the background
            if not cgroups.procs(HELPERS):
                break
            await asyncio.sleep(0.05)
        cgroups.tidy()  # as its backend does when it closes
