"""The local backend on this machine: real POSIX accounts, real cgroups, real processes.

GPUs are a declared inventory (``a100`` × 2; this machine has none): a named fake. What is
checked is the pinning Allotment does, CUDA_VISIBLE_DEVICES and the v1 devices controller.
"""

from __future__ import annotations

import asyncio
import copy
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.backends.base import LaunchSpec, Placement
from allotment.backends.local.backend import LocalBackend, _leftovers
from allotment.backends.local.cgroups import LEGACY, V1, V2, Cgroups, Limits, prefix_of
from allotment.backends.local.gpus import assign, declared, model_of, parse_query
from allotment.backends.local.posix import MAX_NAME, decode, escape, unix_name
from allotment.backends.registry import local_backend as from_policy
from allotment.config.loader import parse_policy
from allotment.controller.capacity import schedulable
from allotment.domain.resources import Resources
from allotment.scheduler import NodeState
from tests.backends.conftest import ROOT, local_backend
from tests.backends.test_contract import ended, started

G = 2**30
root_only = pytest.mark.skipif(not ROOT, reason="needs root: POSIX accounts and cgroups")


def job(wid: int, user: str, command: list[str], workdir: Path, **kw: object) -> LaunchSpec:
    r = kw.pop("resources", Resources.of(1, 256 * 2**20))
    return LaunchSpec(wid, user, "lab", command, r, workdir=str(workdir), **kw)  # type: ignore[arg-type]


# -- naming: pure ----------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=40))
def test_hub_names_map_to_distinct_valid_posix_names(name: str) -> None:
    assert decode(escape(name)) == name
    unix = unix_name(name)
    assert len(unix) <= MAX_NAME
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in unix)
    assert unix[0].isalpha()


def test_distinct_hub_names_get_distinct_accounts() -> None:
    names = ["Alice", "alice", "a.lice", "a_lice", "a-lice", "x" * 40, "x" * 41]
    assert len({unix_name(n) for n in names}) == len(names)


def test_gpu_inventory() -> None:
    assert model_of("NVIDIA A100-SXM4-80GB") == "a100"
    assert model_of("NVIDIA H100 80GB HBM3") == "h100"
    assert parse_query("0, NVIDIA A100-SXM4-80GB\n1, NVIDIA A100-SXM4-80GB\n") == {
        "a100": ["0", "1"]
    }
    inv = declared({"a100": 2, "h100": 1})
    assert inv == {"a100": ["0", "1"], "h100": ["2"]}
    assert assign(inv, {"a100": 1}, {"0"}) == ["1"]
    assert assign(inv, {"a100": 2}, {"0"}) is None


# -- cgroup v2 driver against a fake hierarchy (this machine mounts v1) -----------------------


def test_cgroup_v2_writes_limits(tmp_path: Path) -> None:
    """A fake cgroupfs (plain files): the kernel's v2 interface files the driver writes."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "allotment").mkdir()
    (root / "allotment" / "cgroup.subtree_control").write_text("")
    d = root / "allotment" / "w5"
    d.mkdir()
    for f in ("cpu.max", "memory.max", "memory.swap.max", "pids.max", "cgroup.procs"):
        (d / f).write_text("")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (d / "memory.peak").write_text(str(2 * G))
    cg = V2(root)
    assert cg.create(5, Limits(1500, 2 * G, 100)) == [d / "cgroup.procs"]
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "memory.max").read_text() == str(2 * G)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "100"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    mem = cg.memory(5)
    assert (mem.oom_killed, mem.peak, mem.limit) == (True, 2 * G, 2 * G)


def test_cgroup_v2_nests_an_installations_groups(tmp_path: Path) -> None:
    """``allotment/<installation>/w<id>``: every group on the way hands the controllers on,
    and the driver sees only its installation's workloads, not the old ``allotment/w<id>``."""
    root = tmp_path / "cgroup"
    mine = root / "allotment" / "inst-1"
    mine.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    for tree in (root, root / "allotment", mine):
        (tree / "cgroup.subtree_control").write_text("")
    (root / "allotment" / "w5").mkdir()  # a workload of an earlier version
    cg = V2(root, prefix_of("inst-1"))
    assert cg.create(5, Limits(1500, 2 * G, 100)) == [mine / "w5" / "cgroup.procs"]
    for tree in (root, root / "allotment", mine):
        assert (tree / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert cg.workloads() == {5}
    assert cg.at(prefix_of(None)).workloads() == {5}  # the old one, seen only by its own prefix
    (mine / "w5").rmdir()
    assert cg.workloads() == set()
    cg.tidy()
    assert (root / "allotment" / "w5").is_dir()


# -- on this machine, as root ----------------------------------------------------------------


@root_only
async def test_runs_as_the_users_own_account_with_a_private_home(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    out = shared / "id.out"
    p = (await started(local, job(wid, "alice", ["id", "-un"], shared, stdout=str(out))))[-1]
    await ended(local, wid, p)
    account = pwd.getpwnam("jupyter-alice")
    assert out.read_text().strip() == "jupyter-alice"
    assert stat.S_IMODE(os.stat(account.pw_dir).st_mode) == 0o700
    assert out.stat().st_uid == account.pw_uid  # written by the user, not by root
    await local.release(wid, p)


@root_only
async def test_limits_are_set_and_running_out_of_memory_says_so(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    assert isinstance(local.cgroups, V1 | V2)
    wid = new_id()
    hog = ["python3", "-c", "b = bytearray(400 * 2**20); print(len(b))"]
    r = Resources.of(0.5, 100 * 2**20)
    gen = local.start(job(wid, "alice", hog, shared, resources=r))
    placements = [p async for p in gen]
    if isinstance(local.cgroups, V1):
        base = Path("/sys/fs/cgroup")
        group = f"allotment/{local.installation}/w{wid}"
        assert (base / f"cpu/{group}/cpu.cfs_quota_us").read_text().strip() == "50000"
        limit = (base / f"memory/{group}/memory.limit_in_bytes").read_text()
        assert int(limit) == 100 * 2**20
        assert (base / f"pids/{group}/pids.max").read_text().strip() == "4096"
    seen = await ended(local, wid, placements[-1])
    assert seen.failed
    assert seen.reason == "out of memory: used 100M of 100M"
    await local.release(wid, placements[-1])


@root_only
async def test_gpus_are_pinned_and_never_shared(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wids = [new_id() for _ in range(3)]
    one_gpu = Resources.of(0.5, 128 * 2**20, {"a100": 1})
    # Device nodes as the NVIDIA driver makes them (major 195), with no driver behind them:
    # opening one the devices cgroup allows fails with ENXIO, one it denies with EPERM.
    for i in range(2):
        os.mknod(shared / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(195, i))
        (shared / f"nvidia{i}").chmod(0o666)
    placements = {}
    for i, wid in enumerate(wids[:2]):
        show = [
            "sh",
            "-c",
            f"echo $CUDA_VISIBLE_DEVICES > {shared}/gpu{i};"
            f"for d in 0 1; do cat {shared}/nvidia$d 2>> {shared}/open{i}; done; sleep 30",
        ]
        placements[wid] = (await started(local, job(wid, "bob", show, shared, resources=one_gpu)))[
            -1
        ]
    await asyncio.sleep(0.5)
    seen = [(shared / f"gpu{i}").read_text().strip() for i in range(2)]
    assert sorted(seen) == ["0", "1"]
    if isinstance(local.cgroups, V1):
        for i, device in enumerate(seen):
            errors = (shared / f"open{i}").read_text().splitlines()
            other = "1" if device == "0" else "0"
            own = next(e for e in errors if f"nvidia{device}" in e)
            denied = next(e for e in errors if f"nvidia{other}" in e)
            assert "No such device" in own, errors
            assert "Operation not permitted" in denied, errors
    # Both a100s are taken: a third start is refused rather than double-booking one.
    with pytest.raises(RuntimeError, match="GPUs are in use"):
        await started(local, job(wids[2], "bob", ["true"], shared, resources=one_gpu))
    for wid, p in placements.items():
        await local.stop(wid, p, grace=1)
        await local.release(wid, p)


@root_only
async def test_a_workload_sees_no_service_secrets(
    local: LocalBackend, shared: Path, new_id: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOTMENT_DATABASE_URL", "postgresql://allot:s3cret@db/allotment")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    secret = local.runs.parent / "admin-token"
    secret.write_text("admin-secret")
    secret.chmod(0o600)
    wid = new_id()
    script = f"env > {shared}/env; cat {secret} > {shared}/stolen 2>&1; true"
    p = (await started(local, job(wid, "alice", ["sh", "-c", script], shared)))[-1]
    await ended(local, wid, p)
    env = (shared / "env").read_text()
    assert "s3cret" not in env and "hub-secret" not in env and "ALLOTMENT_" not in env
    assert "ALLOT_WORKLOAD_ID=" in env
    assert "admin-secret" not in (shared / "stolen").read_text()
    await local.release(wid, p)


async def test_a_workload_starts_with_every_signal_at_its_default(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    """The service ignores SIGPIPE (Python does) and its launcher catches TERM to record the
    exit status: neither may leave the user's command deaf to a signal (a pipeline whose reader
    is gone would run on; Ctrl-C-style SIGINT would do nothing)."""
    wid = new_id()
    script = f"grep -E '^Sig(Ign|Blk)' /proc/self/status > {shared}/signals"
    p = (await started(local, job(wid, "alice", ["sh", "-c", script], shared)))[-1]
    assert (await ended(local, wid, p)).exit_code == 0
    masks = dict(line.split(":\t") for line in (shared / "signals").read_text().splitlines())
    standard = (1 << 31) - 1  # signals 1-31; glibc keeps two real-time ones for itself
    assert int(masks["SigIgn"], 16) & standard == 0, masks
    assert int(masks["SigBlk"], 16) & standard == 0, masks
    await local.release(wid, p)


@root_only
async def test_a_workload_inherits_no_descriptor_but_its_standard_three(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    """Neither the pipe the launcher reports on (its fds 3 and 4) nor anything the service
    inherited from its own parent (here: pytest's) may reach the user's command."""
    wid = new_id()
    p = (await started(local, job(wid, "alice", ["sleep", "30"], shared)))[-1]
    assert local.cgroups is not None
    for _ in range(100):
        user = [pid for pid in local.cgroups.procs(wid) if pid != p["pid"]]
        if user and Path(f"/proc/{user[0]}/exe").resolve().name == "sleep":
            break
        await asyncio.sleep(0.05)
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{user[0]}/fd"))
    assert fds == [0, 1, 2], [(fd, os.readlink(f"/proc/{user[0]}/fd/{fd}")) for fd in fds]
    await local.stop(wid, p, grace=1)
    await local.release(wid, p)


@root_only
async def test_one_user_cannot_read_or_signal_another(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    bob, alice = new_id(), new_id()
    pb = (
        await started(
            local, job(bob, "bob", ["sh", "-c", "echo private > ~/secret; sleep 60"], shared)
        )
    )[-1]
    await asyncio.sleep(0.5)
    bob_pids = local.cgroups.procs(bob) if local.cgroups else []
    target = max(bob_pids)
    script = (
        f"cat /home/jupyter-bob/secret > {shared}/read 2>&1;"
        f"kill -9 {target} 2> {shared}/kill; echo $? >> {shared}/kill"
    )
    pa = (await started(local, job(alice, "alice", ["sh", "-c", script], shared)))[-1]
    await ended(local, alice, pa)
    assert "private" not in (shared / "read").read_text()
    assert "Permission denied" in (shared / "read").read_text()
    assert (shared / "kill").read_text().strip().endswith("1")
    assert (await local.poll({bob: pb}))[bob].alive
    await local.stop(bob, pb, grace=1)
    for wid, p in ((bob, pb), (alice, pa)):
        await local.release(wid, p)


# -- installations on one machine, as root -----------------------------------------------------


def _as_before_installations(local: LocalBackend) -> LocalBackend:
    """The backend naming things as versions before installations were named did: groups
    ``allotment/w<id>``, private /tmp ``<tmp base>/w<id>.<n>``."""
    old = copy.copy(local)
    old.cgroups = local.cgroups.at(LEGACY) if local.cgroups is not None else None
    old.scratch = local._scratch_base
    return old


async def _started_as_before(local: LocalBackend, s: LaunchSpec) -> Placement:
    """Started by an earlier version: nor its placement nor its run directory names an
    installation."""
    p = (await started(_as_before_installations(local), s))[-1]
    (Path(p["run"]) / "installation").unlink()
    return {k: v for k, v in p.items() if k != "installation"}


async def _procs(groups: Cgroups | None, wid: int, at_least: int = 2) -> list[int]:
    """The workload's processes once its command runs (the launcher and the command)."""
    assert groups is not None
    for _ in range(100):
        if len(found := groups.procs(wid)) >= at_least:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"workload {wid} has {groups.procs(wid)} in its group")


@root_only
async def test_two_installations_running_the_same_workload_id_leave_each_other_alone(
    tmp_path: Path, shared: Path, new_id: Callable[[], int]
) -> None:
    a, b = local_backend(tmp_path / "a"), local_backend(tmp_path / "b")
    assert a.installation != b.installation
    wid = new_id()
    try:
        pa = (await started(a, job(wid, "alice", ["sleep", "60"], shared)))[-1]
        pb = (await started(b, job(wid, "alice", ["sleep", "60"], shared)))[-1]
        theirs = await _procs(b.cgroups, wid)
        assert not set(theirs) & set(await _procs(a.cgroups, wid))
        await a.stop(wid, pa, grace=1)  # one installation's job 1 ends ...
        await a.release(wid, pa)
        assert not a.cgroups or not a.cgroups.exists(wid)
        pa = (await started(a, job(wid, "alice", ["sleep", "60"], shared)))[-1]
        await _procs(a.cgroups, wid)
        await a.reap(wid)  # ... or is reaped at recovery, its record gone
        assert wid not in await a.present()
        assert (await b.poll({wid: pb}))[wid].alive  # ... and the other's is untouched
        assert b.cgroups is not None and b.cgroups.procs(wid) == theirs
        assert await b.present() == {wid}
        assert (b.scratch / Path(pb["run"]).name).is_dir()
    finally:
        for backend in (a, b):
            await backend.reap(wid)
            await backend.close()


@root_only
async def test_workloads_of_an_earlier_version_are_found_after_the_upgrade(
    tmp_path: Path, shared: Path, new_id: Callable[[], int]
) -> None:
    """Started under the old names (``allotment/w<id>``), found by the new version: polled,
    stopped and released through their old groups, or reaped at recovery; another
    installation running the same workload id loses nothing."""
    kept, leftover = new_id(), new_id()
    before = local_backend(tmp_path / "a")
    other = local_backend(tmp_path / "b")
    old_groups = before.cgroups.at(LEGACY) if before.cgroups is not None else None
    try:
        p = await _started_as_before(before, job(kept, "alice", ["sleep", "60"], shared))
        await _started_as_before(before, job(leftover, "alice", ["sleep", "60"], shared))
        po = {
            w: (await started(other, job(w, "alice", ["sleep", "60"], shared)))[-1]
            for w in (kept, leftover)
        }
        theirs = {w: await _procs(other.cgroups, w) for w in (kept, leftover)}
        await _procs(old_groups, kept)

        after = local_backend(tmp_path / "a")  # the upgrade: same data directory, new code
        assert await after.present() == {kept, leftover}
        seen = (await after.poll({kept: p}))[kept]
        assert seen.alive and seen.cpu_seconds is not None  # its old group, found
        await after.stop(kept, p, grace=1)
        assert not (await after.poll({kept: p}))[kept].alive
        assert old_groups is None or old_groups.procs(kept) == []
        await after.release(kept, p)
        await after.reap(leftover)  # at recovery: no active record of it
        assert await after.present() == set()
        assert old_groups is None or not (old_groups.exists(kept) or old_groups.exists(leftover))
        assert not list(before._scratch_base.glob("w*"))

        for w in (kept, leftover):
            assert (await other.poll({w: po[w]}))[w].alive
            assert other.cgroups is not None and other.cgroups.procs(w) == theirs[w]
        assert await other.present() == {kept, leftover}
    finally:
        for w in (kept, leftover):
            await other.reap(w)
            await local_backend(tmp_path / "a").reap(w)
            if old_groups is not None:
                old_groups.kill_all(w)
                old_groups.remove(w)
        await other.close()


async def test_this_machine_is_what_the_policy_declares(tmp_path: Path) -> None:
    """The local backend reports no capacity of its own, so every local pool's node is scheduled
    as declared: two pools naming this machine differently or alike, and sizes changed by a
    policy applied while it runs (the backend is built once, at the controller's start)."""
    policy = parse_policy(
        """
accounts: {lab: {shares: 1}}
pools:
  cpu:
    backend: local
    nodes: [{name: big, cpus: 8, memory: 16G}]
  small:
    backend: local
    nodes: [{name: small, cpus: 2, memory: 4G, gpus: {a100: 1}}]
  alike:
    backend: local
    nodes: [{name: big, cpus: 1, memory: 1G}]
""",
        "policy.yaml",
    )
    backend = from_policy(policy, tmp_path, "lab-machine")
    assert backend is not None
    try:
        reported = {"local": await backend.capacity()}
        nodes = [
            NodeState("cpu", "big", Resources.of(8, 16 * 2**30)),
            NodeState("small", "small", Resources.of(2, 4 * 2**30, {"a100": 1})),
            NodeState("alike", "big", Resources.of(1, 2**30)),
            NodeState("cpu", "big", Resources.of(64, 512 * 2**30)),  # a later policy's size
        ]
        backends = {"cpu": "local", "small": "local", "alike": "local"}
        assert schedulable(nodes, backends, reported) == (nodes, [])
    finally:
        await backend.close()


# -- reasons that say what happened ------------------------------------------------------------


@root_only
async def test_a_stop_that_needed_sigkill_says_so(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    polite, deaf = new_id(), new_id()
    p1 = (await started(local, job(polite, "alice", ["sleep", "1000"], shared)))[-1]
    command = ["sh", "-c", "trap '' TERM; sleep 1000"]
    p2 = (await started(local, job(deaf, "alice", command, shared)))[-1]
    await asyncio.sleep(0.3)
    await local.stop(polite, p1, grace=5)
    await local.stop(deaf, p2, grace=1)
    seen = await local.poll({polite: p1, deaf: p2})
    assert seen[polite].how_stopped == ""
    assert seen[deaf].how_stopped == (
        "it did not stop on SIGTERM and was killed after the 1 s grace period"
    )
    for wid, p in ((polite, p1), (deaf, p2)):
        await local.release(wid, p)


@root_only
async def test_a_stop_with_no_grace_period_tells_of_none(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    # Given no time to stop, a process still there right after SIGTERM did not "ignore" it.
    wid = new_id()
    command = ["sh", "-c", "trap '' TERM; sleep 1000"]
    p = (await started(local, job(wid, "alice", command, shared)))[-1]
    await asyncio.sleep(0.3)
    await local.stop(wid, p, grace=0)
    seen = (await local.poll({wid: p}))[wid]
    assert (seen.alive, seen.how_stopped) == (False, "")
    await local.release(wid, p)


class InUninterruptibleSleep:
    """Cgroups in which one process outlives every SIGKILL (a process in D state, waiting
    on a hung NFS server): a named fake, since no test can make one on demand."""

    def procs(self, workload: int) -> list[int]:
        return [4242]

    def kill_all(self, workload: int, spare: tuple[int, ...] = ()) -> None:
        pass


def test_a_leftover_that_outlives_sigkill_is_counted_once(tmp_path: Path) -> None:
    stuck: Any = InUninterruptibleSleep()
    assert _leftovers(stuck, 7, tmp_path) == 1
    assert _leftovers(stuck, 7, tmp_path) == 1, "the same process, seen again"


@root_only
async def test_leftover_processes_are_killed_at_the_end_and_counted(
    local: LocalBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    daemons = "for i in 1 2 3; do setsid nohup sleep 1000 >/dev/null 2>&1 & done; exit 0"
    p = (await started(local, job(wid, "alice", ["sh", "-c", daemons], shared)))[-1]
    seen = await ended(local, wid, p)
    assert (seen.exit_code, seen.failed) == (0, False)
    assert seen.reason == "completed (exit status 0); 3 leftover processes were killed at its end"
    assert local.cgroups is not None and local.cgroups.procs(wid) == []
    again = (await local.poll({wid: p}))[wid]  # a second look (after a restart) says the same
    assert again.reason == seen.reason
    await local.release(wid, p)
