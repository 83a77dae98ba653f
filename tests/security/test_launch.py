"""Finding 11.1 and 11.5: nothing a submitter sends reaches a root process, and a workload's
/tmp and /dev/shm are its own and die with it. Real POSIX accounts, cgroups and processes.

Before the fix, the environment a submitter passed was the root launcher's own: an
executable named ``setpriv`` early on ``PATH``, or a library in ``LD_PRELOAD``, ran as root.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from allotment.backends.local.backend import LocalBackend
from allotment.backends.local.cgroups import detect
from allotment.backends.local.posix import PosixAccounts
from allotment.backends.local.process import ROOT_ENVIRONMENT
from allotment.domain.resources import Resources
from allotment.installation import name_for
from tests.backends import conftest as backends
from tests.backends.conftest import ROOT
from tests.backends.test_contract import ended, started
from tests.backends.test_local import job
from tests.support.hub import Hub, free_port
from tests.support.jobs import job_service, policy_file

#: The backend tests' fixture: a local backend of its own, reaped after the test.
local = backends.local

pytestmark = pytest.mark.skipif(not ROOT, reason="needs root: POSIX accounts and cgroups")

#: Variables that change what a program or the libraries it loads do, set to places the
#: submitter controls (``{d}``: a directory of theirs).
HOSTILE = {
    "PATH": "{d}/bin:/usr/bin:/bin",
    "LD_PRELOAD": "{d}/evil.so",
    "LD_LIBRARY_PATH": "{d}/lib",
    "LD_AUDIT": "{d}/evil.so",
    "GCONV_PATH": "{d}/gconv",
    "LOCPATH": "{d}/locale",
    "NLSPATH": "{d}/nls/%N",
    "BASH_ENV": "{d}/evil.sh",
    "ENV": "{d}/evil.sh",
    "IFS": "/",
    "PS4": "$(id > {d}/ps4)",
    "SHELLOPTS": "xtrace",
    "PYTHONPATH": "{d}/py",
    "PYTHONSTARTUP": "{d}/evil.py",
    "PERL5OPT": "-M{d}/evil",
    "HOME": "{d}",
    "TMPDIR": "{d}",
}

EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void) {
    FILE *f = fopen("%s", "a");
    if (f) { fprintf(f, "%%d\n", (int)geteuid()); fclose(f); }
}
"""


@pytest.fixture
def new_id() -> Callable[[], int]:
    return lambda: next(_ids)


_ids = itertools.count(os.getpid() * 1000 + 500)


def _root_processes(local: LocalBackend, wid: int) -> dict[int, dict[str, str]]:
    """Environment of every uid-0 process in the workload's cgroups, by pid."""
    assert local.cgroups is not None
    found = {}
    for pid in local.cgroups.procs(wid):
        try:
            if os.stat(f"/proc/{pid}").st_uid != 0:
                continue
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if not raw:  # caught in execve or exiting: it has no memory to read the environment from
            continue
        found[pid] = dict(v.split("=", 1) for v in raw.decode().split("\0") if "=" in v)
    return found


async def test_no_root_process_of_a_workload_has_anything_of_the_submitters_environment(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    env = {name: value.format(d=shared) for name, value in HOSTILE.items()}
    env["SECRET_OF_THE_USER"] = "it's\nmine $(id)"
    wid = new_id()
    script = f'printf "%s" "$SECRET_OF_THE_USER" > {shared}/seen; sleep 2'
    p = (await started(local, job(wid, "alice", ["/bin/sh", "-c", script], shared, env=env)))[-1]
    samples: list[dict[str, str]] = []
    for _ in range(20):
        samples += _root_processes(local, wid).values()
        await asyncio.sleep(0.05)
    assert samples, "the launcher (root) is in the workload's cgroup while it runs"
    for environ in samples:
        # The launcher's shell exports its own working directories (the run directory).
        assert {k: v for k, v in environ.items() if k not in ("PWD", "OLDPWD")} == ROOT_ENVIRONMENT
    seen = await ended(local, wid, p)
    assert (seen.exit_code, seen.failed) == (0, False), seen.reason
    # The user's own command still gets what was asked for, byte for byte.
    assert (shared / "seen").read_text() == "it's\nmine $(id)"
    assert not (shared / "ps4").exists()
    await local.release(wid, p)


@pytest.fixture
def hijack(shared: Path) -> tuple[dict[str, str], Path]:
    """The attack of finding 11.1: a ``setpriv`` of the submitter's early on ``PATH`` and a
    library in ``LD_PRELOAD``; each writes the uid it runs as to the returned file."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (scripts/test installs gcc)")
    marks = shared / "uids"
    (shared / "bin").mkdir()
    fake = shared / "bin" / "setpriv"
    fake.write_text(f"#!/bin/sh\nid -u >> {marks}\nexit 0\n")
    fake.chmod(0o755)
    (shared / "evil.c").write_text(EVIL_C % marks)
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(shared / "evil.so"), str(shared / "evil.c")],
        check=True,
    )
    (shared / "evil.so").chmod(0o755)
    return {"PATH": f"{shared}/bin:/usr/bin:/bin", "LD_PRELOAD": f"{shared}/evil.so"}, marks


def _uids(marks: Path) -> list[str]:
    return marks.read_text().split() if marks.exists() else []


async def test_a_setpriv_on_the_users_path_or_a_preloaded_library_never_runs_as_root(
    local: LocalBackend,
    shared: Path,
    new_id: Callable[[], int],
    hijack: tuple[dict[str, str], Path],
) -> None:
    env, marks = hijack
    wid = new_id()
    p = (await started(local, job(wid, "alice", ["/bin/true"], shared, env=env)))[-1]
    seen = await ended(local, wid, p)
    assert (seen.exit_code, seen.failed) == (0, False), seen.reason
    uids = _uids(marks)
    alice = str(pwd.getpwnam("jupyter-alice").pw_uid)
    # The library did load, into the user's own command: the attempt was real.
    assert alice in uids
    assert "0" not in uids, f"ran as root: {uids}"
    await local.release(wid, p)


@pytest.mark.jupyterhub
def test_the_hijack_fails_from_a_session_token_through_the_api(
    tmp_path: Path, hub: Hub, shared: Path, hijack: tuple[dict[str, str], Path]
) -> None:
    """As reported: a member with only a session's token (read + submit) and ``allot submit
    --env``, against a real ``allot serve``."""
    env, marks = hijack
    token = hub.token("alice", ["custom:allotment:read", "custom:allotment:submit"])
    with job_service(free_port(), tmp_path / "data", None, hub.api_url, policy_file(tmp_path)) as s:
        flags = [f"--env={name}={value}" for name, value in env.items()]
        r = s.allot(token, "submit", "-p", "small", "--wait", *flags, "--", "true", cwd=shared)
    errors = "".join(f.read_text() for f in shared.glob("allot-*.err"))
    assert r.returncode == 0, r.stdout + r.stderr + errors
    uids = _uids(marks)
    assert str(pwd.getpwnam("jupyter-alice").pw_uid) in uids
    assert "0" not in uids, f"ran as root: {uids}"


async def test_a_workloads_tmp_and_shm_are_its_own_and_die_with_it(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    alice, bob = new_id(), new_id()
    r = Resources.of(0.5, 256 * 2**20)
    mine = f"alice-{alice}"  # a name no other run of this test leaves behind
    write = (
        f"echo private > /tmp/{mine} && "
        f"head -c 50000000 /dev/zero > /dev/shm/{mine} && "
        # Renamed into place once written: the test must never read a listing half made.
        f"ls -A /tmp > {shared}/alice-tmp.part && mv {shared}/alice-tmp.part {shared}/alice-tmp;"
        " sleep 30"
    )
    pa = (await started(local, job(alice, "alice", ["sh", "-c", write], shared, resources=r)))[-1]
    for _ in range(600):
        if (shared / "alice-tmp").exists():
            break
        await asyncio.sleep(0.05)
    assert (shared / "alice-tmp").read_text().split() == [mine]
    # Not on the machine's /tmp or /dev/shm, and the shared memory counts as the workload's.
    assert not Path(f"/tmp/{mine}").exists() and not Path(f"/dev/shm/{mine}").exists()
    assert local.cgroups is not None
    assert (local.cgroups.memory(alice).peak or 0) >= 50_000_000
    launcher = pa["pid"]
    look = (
        f"ls -A /tmp /dev/shm > {shared}/bob-lists 2>&1;"
        f"cat /proc/{launcher}/root/tmp/{mine} > {shared}/bob-reads 2>&1; true"
    )
    pb = (await started(local, job(bob, "bob", ["sh", "-c", look], shared, resources=r)))[-1]
    await ended(local, bob, pb)
    assert (shared / "bob-lists").read_text().split() == ["/dev/shm:", "/tmp:"]
    assert "Permission denied" in (shared / "bob-reads").read_text()
    await local.release(bob, pb)
    await local.stop(alice, pa, grace=1)
    await ended(local, alice, pa)
    run = Path(pa["run"])
    tmp = local.scratch / run.name
    assert (tmp / mine).read_text() == "private\n"  # on disk: scratch is not memory
    await local.release(alice, pa)
    assert not run.exists() and not tmp.exists()
    assert mine not in os.listdir("/dev/shm")
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "allot-shm" not in mounts and str(tmp) not in mounts


def _segments(user: str) -> set[str]:
    """Ids of the machine's System V shared memory segments owned by ``user``'s account (only
    theirs: a PostgreSQL another test starts or stops meanwhile makes or removes its own)."""
    try:
        uid = str(pwd.getpwnam(user).pw_uid)
    except KeyError:
        return set()  # no account yet (its first job makes it): none of its segments either
    rows = (line.split() for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:])
    return {row[1] for row in rows if row[7] == uid}


async def test_system_v_shared_memory_is_the_workloads_own_and_dies_with_it(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    """Review finding: a segment from ``shmget`` outlived its job, owned by the user, outside
    every cgroup's accounting. Each workload has an IPC namespace of its own now."""
    before = _segments("jupyter-alice")
    wid = new_id()
    # Create a segment and stay attached (an unattached one goes at once: shm_rmid_forced).
    script = (
        "import ctypes, subprocess, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "seg = libc.shmget(0, 8388608, 0o1600)\n"
        "assert seg >= 0 and libc.shmat(seg, None, 0) not in (None, ctypes.c_void_p(-1).value)\n"
        f"open('{shared}/seen', 'w').write(subprocess.run(['ipcs', '-m'], capture_output=True,"
        " text=True).stdout)\n"
        "time.sleep(1)\n"
    )
    p = (await started(local, job(wid, "alice", ["python3", "-c", script], shared)))[-1]
    for _ in range(200):
        # Created before it is written: wait for what it says, not for the file.
        if (shared / "seen").exists() and "\n" in (shared / "seen").read_text():
            break
        await asyncio.sleep(0.05)
    assert "8388608" in (shared / "seen").read_text()  # it made one, in its own namespace
    assert _segments("jupyter-alice") == before  # the machine's never saw it
    seen = await ended(local, wid, p)
    assert seen.exit_code == 0, seen.reason
    await local.release(wid, p)
    assert _segments("jupyter-alice") == before


async def test_a_command_exiting_with_a_set_up_failures_status_is_not_taken_for_one(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    """Review finding: a job exiting 253 was reported as "could not open its output files"."""
    wid = new_id()
    p = (await started(local, job(wid, "alice", ["sh", "-c", "exit 253"], shared)))[-1]
    seen = await ended(local, wid, p)
    assert (seen.exit_code, seen.reason) == (253, "exited with status 253")
    await local.release(wid, p)


async def test_a_private_tmp_held_open_from_outside_is_still_removed(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    """Review finding: a process of the same user elsewhere, holding the workload's /tmp open
    (through ``/proc/<pid>/root/tmp``), kept creating files while root removed it, and some
    survived. Root takes each directory over before emptying it."""
    wid = new_id()
    p = (await started(local, job(wid, "alice", ["sh", "-c", "mkdir /tmp/d; sleep 30"], shared)))[
        -1
    ]
    tmp = local.scratch / Path(p["run"]).name
    for _ in range(100):
        if (tmp / "d").exists():
            break
        await asyncio.sleep(0.05)
    uid = pwd.getpwnam("jupyter-alice").pw_uid
    assert local.cgroups is not None
    user_pid = next(
        pid for pid in local.cgroups.procs(wid) if os.stat(f"/proc/{pid}").st_uid == uid
    )
    # The user's process elsewhere: it opens the directory through the job's /proc entry
    # (same user) and writes into it without pause.
    writer = subprocess.Popen(
        [
            "/usr/bin/setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--",
            "/usr/bin/python3",
            "-c",
            "import os, sys, itertools\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "for i in itertools.count():\n"
            "    try:\n"
            "        os.close(os.open(f'f{i}', os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))\n"
            "    except OSError:\n"
            "        pass\n",
            f"/proc/{user_pid}/root/tmp/d",
        ]
    )
    try:
        for _ in range(100):
            if len(os.listdir(tmp / "d")) > 100:
                break
            await asyncio.sleep(0.05)
        assert len(os.listdir(tmp / "d")) > 100, "the writer is writing"
        await local.stop(wid, p, grace=1)
        await ended(local, wid, p)
        await local.release(wid, p)
        assert not tmp.exists()
    finally:
        writer.kill()
        writer.wait()


async def test_a_job_in_a_directory_under_the_machines_tmp_is_told_why_it_cannot_start(
    local: LocalBackend, new_id: Callable[[], int], tmp_path: Path
) -> None:
    there = Path(tempfile.mkdtemp(prefix="allot-test-", dir="/tmp"))
    try:
        there.chmod(0o1777)
        wid = new_id()
        p = (await started(local, job(wid, "alice", ["/bin/true"], there)))[-1]
        seen = await ended(local, wid, p)
        assert seen.failed and seen.exit_code == 254
        assert f"{there} is under /tmp, and every workload has a private one" in seen.reason
        await local.release(wid, p)
    finally:
        shutil.rmtree(there, ignore_errors=True)


async def test_private_tmp_directories_live_where_the_pool_says(
    tmp_path: Path, shared: Path, new_id: Callable[[], int]
) -> None:
    """A pool's ``tmp_dir`` (Slurm's BasePath): scratch on a file system of its own."""
    base = tmp_path / "scratch space"  # a blank, escaped in the fstab
    local = LocalBackend(
        tmp_path / "state",
        "localhost",
        Resources.of(2, 4 * 2**30),
        detect(),
        PosixAccounts(),
        installation=name_for(tmp_path),
        tmp_base=base,
    )
    wid = new_id()
    p = (await started(local, job(wid, "alice", ["sh", "-c", "echo x > /tmp/here"], shared)))[-1]
    assert (await ended(local, wid, p)).exit_code == 0
    assert (base / local.installation / Path(p["run"]).name / "here").read_text() == "x\n"
    assert os.stat(base).st_mode & 0o777 == 0o700
    await local.release(wid, p)
    assert list(base.iterdir()) == [base / local.installation]  # the installation's own
    assert list((base / local.installation).iterdir()) == []
    await local.close()


@pytest.mark.parametrize("planted", ["link", "theirs"])
def test_a_directory_planted_where_private_tmp_goes_is_refused(
    tmp_path: Path, planted: str
) -> None:
    """A pool's ``tmp_dir`` may be a file system users write to: a user who makes the
    installation's directory there first (or a link to their own) would hold every workload's
    private /tmp. The backend refuses to start on it, and changes nothing of it."""
    base = tmp_path / "scratch"
    base.mkdir()
    name = name_for(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    if planted == "link":
        (base / name).symlink_to(theirs)
    else:
        (base / name).mkdir()
        os.chown(base / name, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(RuntimeError, match="not a directory of the service's own"):
        LocalBackend(
            tmp_path / "state",
            "localhost",
            Resources.of(2, 4 * 2**30),
            detect(),
            PosixAccounts(),
            installation=name,
            tmp_base=base,
        )
    assert os.stat(theirs).st_mode & 0o777 == 0o755 and os.stat(theirs).st_uid == nobody.pw_uid
