"""The contract every backend must keep (``backends/base.py``), run against each of them.

Commands come from ``programs``: the same effect on every backend (a shell on the real ones,
the fake's own words on the in-memory fake), so each test means the same for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from allotment.backends.base import Backend, LaunchSpec, Observation, Output, Placement
from allotment.domain.resources import Resources
from tests.backends.conftest import Programs


def spec(wid: int, command: list[str], workdir: Path, **kw: Any) -> LaunchSpec:
    return LaunchSpec(
        wid, "alice", "lab", command, Resources.of(1, 256 * 2**20), workdir=str(workdir), **kw
    )


async def started(backend: Backend, s: LaunchSpec) -> list[Mapping[str, Any]]:
    return [p async for p in backend.start(s)]


async def ended(backend: Backend, wid: int, p: Placement, seconds: float = 30) -> Observation:
    for _ in range(int(seconds / 0.05)):
        seen = (await backend.poll({wid: p}))[wid]
        if not seen.alive:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"workload {wid} still running after {seconds} s")


async def test_start_checkpoints_before_anything_runs(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    marker = shared / "ran"
    gen = backend.start(spec(wid, programs.touch(marker), shared))
    first = await gen.__anext__()
    await asyncio.sleep(0.3)
    assert not marker.exists(), "the first placement must come before the workload runs"
    rest = [p async for p in gen]
    assert rest, "start yields the running workload's placement last"
    seen = await ended(backend, wid, rest[-1])
    assert marker.exists()
    assert (seen.exit_code, seen.failed) == (0, False)
    assert first.keys() <= rest[-1].keys()
    await backend.release(wid, rest[-1])


async def test_exit_status_and_reason_are_reported(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    wids = [new_id() for _ in range(3)]
    commands = [programs.succeed(), programs.exit(7), programs.kill_itself()]
    placements = {}
    for wid, command in zip(wids, commands, strict=True):
        placements[wid] = (await started(backend, spec(wid, command, shared)))[-1]
    for wid in wids:
        await ended(backend, wid, placements[wid])
    seen = await backend.poll(placements)  # one batched call answers every key
    assert set(seen) == set(wids)
    ok, seven, killed = (seen[w] for w in wids)
    assert (ok.exit_code, ok.failed) == (0, False)
    assert (seven.exit_code, seven.failed, seven.reason) == (7, True, "exited with status 7")
    assert (killed.exit_code, killed.failed) == (137, True)
    assert "SIGKILL" in killed.reason
    for wid in wids:
        await backend.release(wid, placements[wid])


async def test_stop_is_polite_then_forceful_and_leaves_nothing(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    polite, stubborn = new_id(), new_id()
    p1 = (await started(backend, spec(polite, programs.sleep(300), shared)))[-1]
    p2 = (await started(backend, spec(stubborn, programs.stubborn(), shared)))[-1]
    await asyncio.sleep(0.3)
    t = asyncio.get_running_loop().time()
    await backend.stop(polite, p1, grace=10)
    assert asyncio.get_running_loop().time() - t < 5, "SIGTERM alone should end it"
    seen = (await backend.poll({polite: p1}))[polite]
    assert not seen.alive and seen.exit_code == 143
    t = asyncio.get_running_loop().time()
    await backend.stop(stubborn, p2, grace=1)
    assert asyncio.get_running_loop().time() - t >= 1, "the grace period is honoured"
    assert not (await backend.poll({stubborn: p2}))[stubborn].alive
    for wid, p in ((polite, p1), (stubborn, p2)):
        await backend.release(wid, p)
        assert wid not in await backend.present()


async def test_a_resumed_start_never_runs_a_workload_twice(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    # Crash right after the first checkpoint: the resumed start runs it once.
    wid = new_id()
    log = shared / "runs"
    s = spec(wid, programs.append(log, "run"), shared)
    gen = backend.start(s)
    first = await gen.__anext__()
    await gen.aclose()  # the service died here
    placements = [p async for p in backend.start(s, resume=first)]
    await ended(backend, wid, placements[-1])
    # Crash after the launch, before its placement was stored: resuming finds it.
    again = [p async for p in backend.start(s, resume=placements[0])]
    assert again[-1].get("pid") == placements[-1].get("pid")
    assert again[-1].get("job_id") == placements[-1].get("job_id")  # Slurm: the same job
    await asyncio.sleep(0.3)
    assert log.read_text() == "run\n"
    await backend.release(wid, placements[-1])


async def test_a_workload_left_behind_is_present_until_reaped(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    await started(backend, spec(wid, programs.sleep(300), shared))
    assert wid in await backend.present()
    await backend.reap(wid)
    assert wid not in await backend.present()


async def test_watch_reports_the_end_at_once(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    p = (await started(backend, spec(wid, programs.sleep(0.5), shared)))[-1]
    done = asyncio.Event()
    backend.watch(wid, p, lambda w: done.set() if w == wid else None)
    await asyncio.wait_for(done.wait(), 10)
    assert not (await backend.poll({wid: p}))[wid].alive
    await backend.release(wid, p)


async def test_output_is_read_through_the_backend(
    backend: Backend, programs: Programs, shared: Path, new_id: Callable[[], int]
) -> None:
    wid = new_id()
    p = (await started(backend, spec(wid, programs.say("hello"), shared)))[-1]
    await ended(backend, wid, p)
    out = await backend.read_output(wid, p, "stdout", 0, 1 << 20)
    assert out == Output(p["stdout"], b"hello\n")
    assert await backend.read_output(wid, p, "stdout", 2, 2) == Output(p["stdout"], b"ll")
    assert await backend.read_output(wid, p, "stdout", 6, 10) == Output(p["stdout"], b"")
    assert await backend.read_output(wid, p, "stderr", 0, 100) == Output(p["stderr"], b"")
    await backend.release(wid, p)
    # The files outlive the workload's release: its output is read after it ended.
    assert await backend.read_output(wid, p, "stdout", 0, 100) == Output(p["stdout"], b"hello\n")
