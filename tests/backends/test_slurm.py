"""What the Slurm backend does beyond the contract, on the real 3-node cluster
(``slurm_cluster``: n1..n3, 2 CPUs and 4 GiB each, partition ``main``, accounting on).

Queued starts and their resumption, Slurm's ends in the researcher's words (out of memory,
time limit, node failure), jobs over two nodes, associations added on first use, a controller
that does not answer, and the one shared ``squeue`` per interval.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from allotment.backends.base import LaunchSpec, Observation, Placement
from allotment.backends.slurm.backend import SlurmBackend
from allotment.backends.slurm.runner import SlurmUnavailable
from allotment.domain.resources import Resources
from tests.backends.conftest import slurm_backend

MIB = 2**20


def spec(wid: int, command: list[str], workdir: Path, cpus: float = 1, **kw: Any) -> LaunchSpec:
    memory = kw.pop("memory", 256 * MIB)
    user = kw.pop("user", "alice")
    return LaunchSpec(
        wid, user, "lab", command, Resources.of(cpus, memory), workdir=str(workdir), **kw
    )


async def placed(
    backend: SlurmBackend, s: LaunchSpec, resume: Placement | None = None
) -> Placement:
    return [p async for p in backend.start(s, resume=resume)][-1]


async def until(
    backend: SlurmBackend,
    wid: int,
    p: Placement,
    test: Callable[[Observation], bool],
    seconds: float = 60,
) -> Observation:
    deadline = time.monotonic() + seconds
    while True:
        seen = (await backend.poll({wid: p}))[wid]
        if test(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"workload {wid}: still {seen} after {seconds} s")
        await asyncio.sleep(0.2)


def cluster_of(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("slurm_cluster")
    except pytest.FixtureLookupError:
        pytest.skip("needs the slurm_cluster fixture (tests/support/slurm.py)")


async def test_a_job_behind_a_full_cluster_ends_start_queued_and_is_submitted_once(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    blocker, waiter = new_id(), new_id()
    full = await placed(slurm, spec(blocker, ["sleep", "300"], shared, cpus=6, nodes=3))
    assert full.get("running") and len(full["nodes"]) == 3
    s = spec(waiter, ["sleep", "300"], shared)
    queued = await placed(slurm, s)
    assert queued.get("queued") and not queued.get("running")
    assert queued["waiting"].startswith("queued in Slurm: ")
    assert queued["waiting"].endswith(("(Resources)", "(Priority)", "(None)"))
    assert queued["position"] >= 1
    submitted = slurm.runner.calls["sbatch"]
    again = await placed(slurm, s, resume=queued)  # resumed while still waiting: no new job
    assert again.get("queued") and again["job_id"] == queued["job_id"]
    assert slurm.runner.calls["sbatch"] == submitted
    assert (await slurm.poll({waiter: again}))[waiter] == Observation(alive=True)
    changed = asyncio.Event()
    slurm.watch(waiter, again, lambda w: changed.set() if w == waiter else None)
    await slurm.stop(blocker, full, grace=5)
    await asyncio.wait_for(changed.wait(), 20)
    running = await placed(slurm, s, resume=again)
    assert running.get("running") and not running.get("queued")
    assert running["job_id"] == queued["job_id"]
    assert running["node"] in ("n1", "n2", "n3")
    assert running["host"].startswith("127.0.1.")
    assert slurm.runner.calls["sbatch"] == submitted
    await slurm.stop(waiter, running, grace=5)


async def test_a_queued_job_cancelled_in_slurm_is_reported_ended(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    blocker, wid = new_id(), new_id()
    full = await placed(slurm, spec(blocker, ["sleep", "300"], shared, cpus=6, nodes=3))
    queued = await placed(slurm, spec(wid, ["true"], shared))
    assert queued.get("queued")
    subprocess.run(
        ["scancel", str(queued["job_id"])],
        env={**os.environ, "SLURM_CONF": str(slurm.runner.conf)},
        check=True,
    )
    seen = await until(slurm, wid, queued, lambda o: not o.alive, 20)
    assert (seen.failed, seen.reason) == (True, "cancelled in Slurm before it started")
    await slurm.stop(blocker, full, grace=5)


async def test_out_of_memory_is_said_in_words(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    hog = ["python3", "-c", "a = bytearray(300 * 2**20); import time; time.sleep(2)"]
    p = await placed(slurm, spec(wid, hog, shared, memory=64 * MIB))
    seen = await until(slurm, wid, p, lambda o: not o.alive)
    assert seen.failed
    assert seen.reason.startswith("out of memory: it used more than its 64M on n"), seen.reason


async def test_a_job_at_its_time_limit_is_stopped_and_says_so(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    p = await placed(slurm, spec(wid, ["sleep", "300"], shared, max_runtime=30))
    seen = await until(slurm, wid, p, lambda o: not o.alive, seconds=150)
    assert (seen.failed, seen.reason) == (True, "stopped at its time limit (0:01:00)")


async def test_a_job_over_two_nodes_runs_a_step_on_each(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    p = await placed(slurm, spec(wid, ["srun", "hostname"], shared, cpus=2, nodes=2))
    assert p.get("running") and len(p["nodes"]) == 2 and p["node"] == p["nodes"][0]
    seen = await until(slurm, wid, p, lambda o: not o.alive)
    assert (seen.exit_code, seen.failed) == (0, False)
    out = await slurm.read_output(wid, p, "stdout", 0, 1000)
    assert out is not None and out.data is not None
    assert sorted(out.data.decode().split()) == sorted(p["nodes"])


async def test_a_user_gets_an_association_on_first_use(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    hub_user = f"newcomer{os.getpid()}"
    p = await placed(slurm, spec(wid, ["true"], shared, user=hub_user))
    seen = await until(slurm, wid, p, lambda o: not o.alive)
    assert (seen.exit_code, seen.failed) == (0, False)
    assoc = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"users={p['user']}", "format=account"],
        env={**os.environ, "SLURM_CONF": str(slurm.runner.conf)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert assoc.stdout.split() == ["lab"]
    assert slurm.runner.calls["sacctmgr"] == 1


async def test_polls_share_one_squeue_per_interval(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    wids = [new_id() for _ in range(4)]
    placements = {w: await placed(slurm, spec(w, ["sleep", "30"], shared)) for w in wids}
    await asyncio.sleep(slurm.poll_interval)
    before = slurm.runner.calls["squeue"]
    answers = await asyncio.gather(*(slurm.poll(placements) for _ in range(20)))
    assert all(set(a) == set(wids) and all(o.alive for o in a.values()) for a in answers)
    assert slurm.runner.calls["squeue"] - before == 1
    for w, p in placements.items():
        await slurm.stop(w, p, grace=5)


async def test_a_controller_that_does_not_answer_is_never_taken_for_an_end(
    request: pytest.FixtureRequest, slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    cluster = cluster_of(request)
    wid, later = new_id(), new_id()
    p = await placed(slurm, spec(wid, ["sleep", "300"], shared))
    cluster.stop_controller()
    try:
        await asyncio.sleep(slurm.poll_interval)
        with pytest.raises(SlurmUnavailable):
            await slurm.poll({wid: p})
        with pytest.raises(SlurmUnavailable):
            await slurm.capacity()
        with pytest.raises(SlurmUnavailable):
            await placed(slurm, spec(later, ["true"], shared))
    finally:
        cluster.start_controller()
        for node in cluster.nodes:  # "unknown" until each slurmd registers again
            cluster.wait_node(node, {"idle", "mixed", "allocated"}, 60)
    assert (await until(slurm, wid, p, lambda o: True)).alive
    await slurm.stop(wid, p, grace=5)


async def test_a_node_failure_requeues_a_job_and_ends_a_session(
    request: pytest.FixtureRequest, slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    cluster = cluster_of(request)
    job, session = new_id(), new_id()
    pj = await placed(slurm, spec(job, ["sleep", "300"], shared, kind="job"))
    ps = await placed(slurm, spec(session, ["sleep", "300"], shared, kind="session"))
    nodes = {pj["node"], ps["node"]}
    for node in nodes:
        cluster.kill_node(node)
    try:
        requeued = await until(slurm, job, pj, lambda o: o.requeued or not o.alive, 90)
        assert requeued.alive and requeued.requeued
        assert requeued.reason == f"requeued by Slurm: node {pj['node']} stopped responding"
        lost = await until(slurm, session, ps, lambda o: not o.alive, 60)
        assert lost.failed
        assert lost.reason == f"node {ps['node']} stopped responding (NODE_FAIL)"
    finally:
        for node in nodes:
            cluster.start_node(node)
        for node in nodes:
            cluster.wait_node(node, {"idle", "mixed", "allocated"}, 60)
    await slurm.stop(job, pj, grace=5)


async def test_capacity_reports_every_node_with_its_state(
    request: pytest.FixtureRequest, slurm: SlurmBackend
) -> None:
    cluster = cluster_of(request)
    cluster.drain("n3", "disk check")
    try:
        nodes = {n.name: n for n in await slurm.capacity()}
        assert set(nodes) == {"n1", "n2", "n3"}
        assert nodes["n1"].resources == Resources.of(2, 4096 * MIB)
        assert (nodes["n3"].state, nodes["n3"].reason) == ("drained", "disk check")
        assert nodes["n3"].resources == Resources()
    finally:
        cluster.resume("n3")


async def test_gpus_are_given_as_gres_where_slurm_has_them_untyped(
    request: pytest.FixtureRequest, shared: Path, new_id: Callable[[], int], tmp_path: Path
) -> None:
    cluster_of(request)  # skips where no cluster can run
    from tests.support.slurm import start_cluster, stop_cluster

    gpus = start_cluster(nodes=1, gpus=2)  # plain gpu:2 on n1: no model in Slurm
    try:
        gpus.run("sacctmgr", "-i", "add", "account", "lab", check=False)
        b = slurm_backend(str(gpus.conf), tmp_path / "state", gpu_models={"n1": "a100"})
        try:
            (node,) = await b.capacity()
            assert node.resources.gpus == {"a100": 2}
            wid = new_id()
            s = LaunchSpec(
                wid,
                "alice",
                "lab",
                ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"],
                Resources.of(1, 256 * MIB, {"a100": 1}),
                workdir=str(shared),
            )
            p = await placed(b, s)
            seen = await until(b, wid, p, lambda o: not o.alive)
            assert (seen.exit_code, seen.failed) == (0, False)
            out = await b.read_output(wid, p, "stdout", 0, 100)
            assert out is not None and out.data is not None and out.data.strip() in (b"0", b"1")
        finally:
            await b.close()
    finally:
        stop_cluster(gpus)


async def test_running_jobs_are_measured_in_one_sstat(
    slurm: SlurmBackend, shared: Path, new_id: Callable[[], int]
) -> None:
    busy, idle = new_id(), new_id()
    spin = (
        "a = bytearray(80 * 2**20)\nimport time\nt = time.time()\nwhile time.time() - t < 30: pass"
    )
    placements = {
        busy: await placed(slurm, spec(busy, ["python3", "-c", spin], shared)),
        idle: await placed(slurm, spec(idle, ["sleep", "30"], shared)),
    }
    before = slurm.runner.calls["sstat"]
    deadline = time.monotonic() + 20
    while True:
        seen = await slurm.measure(placements)
        got = seen.get(busy)
        busy_seen = (
            got is not None and (got.peak_memory or 0) >= 80 * MIB and (got.cpu_seconds or 0) >= 1
        )
        # A start ends queued: the idle job may begin a Slurm scheduling pass after the busy one.
        if busy_seen and idle in seen:
            break
        assert time.monotonic() < deadline, f"not measured: {seen}"
        await asyncio.sleep(1)
    assert slurm.runner.calls["sstat"] - before >= 1
    assert (seen[idle].peak_memory or 0) < 80 * MIB
    for w, p in placements.items():
        await slurm.stop(w, p, grace=5)
