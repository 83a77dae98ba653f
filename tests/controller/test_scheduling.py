"""The scheduling loop and the reconciler together, on the fake: admission up to capacity, a
queue that moves when a workload ends, exit statuses recorded, cancels at every stage."""

from __future__ import annotations

import stat

from allotment.backends.base import LaunchSpec
from allotment.backends.fake import TERMINATED
from allotment.domain.resources import Resources
from tests.controller.conftest import Fast


async def test_jobs_run_up_to_capacity_and_the_queue_moves_when_one_ends(fast: Fast) -> None:
    first = [await fast.submit() for _ in range(4)]
    for wid in first:
        w = await fast.until(wid, "running")
        assert (w["node"], w["reason"]) == ("ws1", "running on ws1")
    fifth = await fast.submit()
    held = await fast.eventually(fifth, lambda w: w["position"] is not None)
    assert (held["status"], held["position"]) == ("pending", 1), held
    assert fast.backend.running() == first

    fast.backend.finish(first[0], 0)
    done = await fast.until(first[0], "stopped")
    assert (done["exit_code"], done["reason"]) == (0, "completed (exit status 0)")
    await fast.until(fifth, "running")
    assert fast.backend.running() == [*first[1:], fifth]
    assert all(n == 1 for n in fast.backend.launches.values())


async def test_the_launch_gets_what_was_submitted(fast: Fast) -> None:
    wid = await fast.submit("train", "--epochs", "3", env={"SEED": "7"}, workdir="/srv/lab")
    await fast.until(wid, "running")
    spec = fast.backend.processes[wid].spec
    assert isinstance(spec, LaunchSpec)
    assert (spec.user, spec.account, spec.node) == ("admin-token/setup", "lab", "ws1")
    assert list(spec.command) == ["train", "--epochs", "3"]
    assert spec.resources == Resources.of(1, 2**30)
    assert spec.env["SEED"] == "7" and spec.env["ALLOT_JOB_ID"] == str(wid)
    assert spec.workdir == "/srv/lab"


async def test_a_failed_exit_is_recorded_with_its_reason(fast: Fast) -> None:
    wid = await fast.submit()
    await fast.until(wid, "running")
    fast.backend.finish(wid, 3)
    w = await fast.until(wid, "failed")
    assert (w["exit_code"], w["reason"], w["target"]) == (3, "exited with status 3", "stopped")
    assert await fast.backend.present() == set()


async def test_commands_that_end_at_once_are_recorded(fast: Fast) -> None:
    ok, bad = await fast.submit("true"), await fast.submit("kill", "9")
    assert (await fast.until(ok, "stopped"))["exit_code"] == 0
    w = await fast.until(bad, "failed")
    assert w["reason"] == "killed by SIGKILL (exit status 137)"


async def test_a_cancel_stops_a_running_workload(fast: Fast) -> None:
    wid = await fast.submit()
    await fast.until(wid, "running")
    await fast.cancel(wid)
    w = await fast.until(wid, "stopped")
    assert w["exit_code"] == TERMINATED
    assert w["reason"] == "cancelled by admin-token/setup", w
    assert fast.backend.running() == [] and await fast.backend.present() == set()


async def test_a_cancel_of_a_waiting_workload_starts_nothing(fast: Fast) -> None:
    busy = [await fast.submit() for _ in range(4)]
    for wid in busy:
        await fast.until(wid, "running")
    waiting = await fast.submit()
    await fast.until(waiting, "pending")
    await fast.cancel(waiting)
    w = await fast.until(waiting, "stopped")
    assert w["started_at"] is None
    for wid in busy:
        fast.backend.finish(wid)
        await fast.until(wid, "stopped")
    assert waiting not in fast.backend.launches


async def test_recovery_reaps_what_no_active_workload_accounts_for(fast: Fast) -> None:
    kept = await fast.submit()
    await fast.until(kept, "running")
    # Left on the machine by something the database does not know as active.
    stray = LaunchSpec(999_999, "alice", "lab", ["work"], Resources.of(1, 2**30))
    [p async for p in fast.backend.start(stray)]
    await fast.abandon()
    await fast.restart()
    assert fast.backend.reaped == [999_999]
    assert fast.backend.running() == [kept]
    await fast.until(kept, "running")
    assert fast.backend.launches[kept] == 1


async def test_a_job_after_another_waits_for_its_success(fast: Fast) -> None:
    first = await fast.submit()
    then = await fast.submit(after=first)
    w = await fast.eventually(then, lambda w: w["reason"] != "waiting for the scheduler")
    assert (w["status"], w["reason"]) == (
        "pending",
        f"waiting for workload {first} to end successfully",
    )
    await fast.until(first, "running")  # held back from the queue is not yet started
    fast.backend.finish(first, 0)
    await fast.until(then, "running")


async def test_a_job_after_one_that_failed_never_runs(fast: Fast) -> None:
    first = await fast.submit()
    then = await fast.submit(after=first)
    await fast.until(first, "running")
    fast.backend.finish(first, 1)
    w = await fast.until(then, "failed")
    assert w["reason"] == (
        f"cannot run: workload {first}, which it runs after, did not end successfully"
    )
    assert then not in fast.backend.launches


async def test_an_array_runs_each_task_with_its_index(fast: Fast) -> None:
    async with fast.client() as c:
        r = await c.post(
            "workloads",
            json={
                "profile": "small",
                "account": "lab",
                "command": ["work"],
                "array": "0-2",
                "workdir": "/srv/lab",
            },
        )
    assert r.status_code == 201, r.text
    array = r.json()["array_id"]
    tasks = [array, array + 1, array + 2]
    for index, wid in enumerate(tasks):
        await fast.until(wid, "running")
        spec = fast.backend.processes[wid].spec
        assert (spec.env["ALLOT_ARRAY_JOB_ID"], spec.env["ALLOT_ARRAY_TASK_ID"]) == (
            str(array),
            str(index),
        )
        assert spec.stdout == f"/srv/lab/allot-{array}_{index}.out"
    assert fast.backend.running() == tasks


async def test_output_patterns_are_filled_in(fast: Fast) -> None:
    wid = await fast.submit(stdout="out-%j.txt", stderr="err-%A-%a.txt", workdir="/srv/lab")
    await fast.until(wid, "running")
    spec = fast.backend.processes[wid].spec
    assert (spec.stdout, spec.stderr) == (f"out-{wid}.txt", f"err-{wid}-0.txt")


async def test_a_pool_whose_backend_is_not_run_here_waits_saying_so(fast: Fast) -> None:
    # The policy's only pool is the local one: a fake controller without it runs nothing.
    fast.controller.backends.pop("local")
    wid = await fast.submit()
    w = await fast.eventually(wid, lambda w: w["reason"] != "waiting for the scheduler")
    assert w["reason"] == (
        "pool 'workstation' uses the local backend, which this service does not run yet"
    )
    assert w["status"] == "pending"


async def test_a_cancel_while_admitted_and_no_controller_runs_starts_nothing(fast: Fast) -> None:
    crashed = fast.crash_at("admitted")
    wid = await fast.submit()
    await crashed.wait()
    await fast.abandon()
    await fast.cancel(wid)  # ADMITTED, told to stop, while nothing acts on it
    await fast.restart()
    w = await fast.until(wid, "stopped")
    assert w["started_at"] is None
    assert wid not in fast.backend.launches and await fast.backend.present() == set()


async def test_a_submission_to_another_worker_process_reaches_the_controller(fast: Fast) -> None:
    # With `allot serve --workers N`, the process that took a submission may not be the one
    # running the controller (and `allot serve` runs the controller in a process of its own):
    # it writes to the nudge pipe, on which the controller's event loop listens.
    fast.app.state.allotment.controller = None
    wid = await fast.submit()
    assert stat.S_ISFIFO((fast.data_dir / "controller.nudge").stat().st_mode)
    await fast.until(wid, "running", seconds=2)


async def test_output_is_read_through_the_backend(fast: Fast) -> None:
    wid = await fast.submit(workdir="/srv/lab")
    await fast.until(wid, "running")
    fast.backend.write_output(wid, "stdout", b"epoch 1\n")
    async with fast.client() as c:
        r = await c.get(f"workloads/{wid}/output")
        assert (r.status_code, r.content) == (200, b"epoch 1\n"), r.text
        assert r.headers["X-Next-Offset"] == "8" and r.headers["X-Workload-Ended"] == "false"
        assert r.headers["X-Output-Path"] == f"/srv/lab/allot-{wid}.out"
        fast.backend.write_output(wid, "stdout", b"epoch 2\n")
        fast.backend.finish(wid, 0)
        await fast.until(wid, "stopped")
        r = await c.get(f"workloads/{wid}/output", params={"offset": 8})
        assert (r.content, r.headers["X-Workload-Ended"]) == (b"epoch 2\n", "true")
