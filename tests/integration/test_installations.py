"""Two installations on one machine leave each other alone (DESIGN 5a).

Two real ``allot serve`` with data directories of their own (one named in its policy, one by
its data directory), each numbering its workloads from 1: one's job ending, one restarted with a database that forgot its jobs (so that its recovery
reaps all it has), one upgraded from a version that named groups ``allotment/w<id>``: the
other's jobs keep running, with the same processes in the same groups.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from allotment.backends.local.cgroups import LEGACY, Cgroups, Limits, detect, prefix_of
from allotment.installation import name_for
from tests.backends.conftest import ROOT
from tests.support.hub import Hub, free_port
from tests.support.jobs import JobService, ended, job_service, policy_file, wait_for, workload

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs workloads as other POSIX accounts: needs root"),
]


#: The name the first installation's policy gives it (``service.installation``).
NAMED = f"t{os.getpid()}-one"


def _groups(installation: str) -> Cgroups:
    """The driver for the groups of the installation called ``installation``."""
    found = detect(prefix=prefix_of(installation))
    assert found is not None, "no writable cgroup hierarchy"
    return found


def _named(directory: Path, installation: str) -> Path:
    """The test policy in ``directory``, naming the installation."""
    policy = policy_file(directory)
    policy.write_text(policy.read_text() + f"service:\n  installation: {installation}\n")
    return policy


def _submit(s: JobService, token: str, command: str, shared: Path) -> int:
    body = {"profile": "small", "command": ["sh", "-c", command], "workdir": str(shared)}
    with s.client(token) as c:
        r = c.post("workloads", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


def _running(s: JobService, token: str, wids: list[int], groups: Cgroups) -> dict[int, list[int]]:
    """Wait until each workload runs its command; then the processes in its group."""
    for wid in wids:
        wait_for(lambda w=wid: workload(s, token, w)["status"] == "running", what="running")
        wait_for(lambda w=wid: len(groups.procs(w)) >= 2, 10, what="its command")
    return {wid: groups.procs(wid) for wid in wids}


def _untouched_then_cancelled(
    s: JobService, token: str, wids: list[int], groups: Cgroups, before: dict[int, list[int]]
) -> None:
    """The other installation's workloads still run, the same processes in the same groups;
    cancelled, they end as cancelled."""
    for wid in wids:
        assert workload(s, token, wid)["status"] == "running"
        assert groups.procs(wid) == before[wid]
    with s.client(token) as c:
        for wid in wids:
            assert c.post(f"workloads/{wid}/cancel").status_code == 200
    for wid in wids:
        assert ended(s, token, wid)["reason"] == "cancelled by alice"


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two installations' directories (each with its policy file and ``data``); whatever a
    failed test leaves running in either is killed afterwards."""
    dirs = (tmp_path / "one", tmp_path / "two")
    for d in dirs:
        d.mkdir()
    yield dirs
    drivers = [_groups(NAMED), *(_groups(name_for(d / "data")) for d in dirs)]
    if (dirs[0] / "forged").exists():  # the old names are this test's only once it made them
        drivers.append(drivers[0].at(LEGACY))
    for groups in drivers:
        for wid in (1, 2):
            groups.kill_all(wid)
            groups.remove(wid)


def test_one_installations_job_ending_or_restart_leaves_the_others_alone(
    two: tuple[Path, Path], hub: Hub, shared: Path
) -> None:
    (one, other), alice = two, hub.token("alice")
    mine, theirs = _groups(NAMED), _groups(name_for(other / "data"))
    policy, port = _named(one, NAMED), free_port()
    with job_service(free_port(), other / "data", None, hub.api_url, policy_file(other)) as b:
        ids = [_submit(b, alice, "sleep 300", shared) for _ in range(2)]
        assert ids == [1, 2]
        with job_service(port, one / "data", None, hub.api_url, policy) as a:
            assert [_submit(a, alice, "sleep 300", shared) for _ in range(2)] == ids
            _running(a, alice, ids, mine)
            before = _running(b, alice, ids, theirs)
            with a.client(alice) as c:  # one installation's job 1 ends ...
                assert c.post("workloads/1/cancel").status_code == 200
            assert ended(a, alice, 1)["reason"] == "cancelled by alice"
            wait_for(lambda: not mine.exists(1), 10, what="its groups to go")
            a.proc.kill()
            a.proc.wait()
        # ... and it restarts having forgotten its jobs (a database restored from a backup):
        # its recovery reaps what it has no active record of, which is its own job 2 only.
        for f in ("allotment.sqlite", "allotment.sqlite-wal", "allotment.sqlite-shm"):
            (one / "data" / f).unlink(missing_ok=True)
        assert mine.exists(2)
        with job_service(port, one / "data", None, hub.api_url, policy):
            wait_for(lambda: not mine.exists(2), 10, what="its own job reaped")
        _untouched_then_cancelled(b, alice, ids, theirs, before)


def _as_before_installations(data: Path, wid: int) -> None:
    """Turn a running workload of the stopped service at ``data`` into what a version before
    installations were named left: its processes in ``allotment/w<id>``, its private /tmp in
    ``local/tmp/w<id>.1``, no installation named in its run directory or its placement."""
    new = _groups(name_for(data))
    old = new.at(LEGACY)
    procs = old.create(wid, Limits(1000, 256 * 2**20))
    for _ in range(100):  # until no fork of the moment was missed
        pids = new.procs(wid)
        if not pids:
            break
        for pid in pids:
            for path in procs:
                try:
                    path.write_text(str(pid))
                except ProcessLookupError:
                    pass
    new.remove(wid)
    assert old.procs(wid) and not new.exists(wid)
    run = data / "local" / "run" / f"w{wid}.1"
    (run / "installation").unlink()
    tmp = data / "local" / "tmp"
    if (tmp / name_for(data) / run.name).exists():  # as root: a private /tmp
        os.rename(tmp / name_for(data) / run.name, tmp / run.name)
    with sqlite3.connect(data / "allotment.sqlite") as db:
        (text,) = db.execute("SELECT placement FROM workloads WHERE id = ?", (wid,)).fetchone()
        placement = json.loads(text)
        del placement["installation"]
        db.execute("UPDATE workloads SET placement = ? WHERE id = ?", (json.dumps(placement), wid))


def test_workloads_started_before_installations_were_named_are_found_after_the_upgrade(
    two: tuple[Path, Path], hub: Hub, shared: Path
) -> None:
    """The upgraded service finds its running workloads under their old names, sees one end,
    stops the other, and removes their old groups, while another installation's workloads
    of the same ids run on untouched."""
    (one, other), alice = two, hub.token("alice")
    data, theirs = one / "data", _groups(name_for(other / "data"))
    go = shared / "go"
    port = free_port()
    with job_service(free_port(), other / "data", None, hub.api_url, policy_file(other)) as b:
        ids = [_submit(b, alice, "sleep 300", shared) for _ in range(2)]
        before = _running(b, alice, ids, theirs)
        with job_service(port, data, None, hub.api_url, policy_file(one)) as a:
            ending = _submit(a, alice, f"while [ ! -e {go} ]; do sleep 0.2; done", shared)
            stopped = _submit(a, alice, "sleep 300", shared)
            assert [ending, stopped] == ids
            _running(a, alice, ids, _groups(name_for(data)))
            a.proc.kill()
            a.proc.wait()
        (one / "forged").touch()
        for wid in ids:
            _as_before_installations(data, wid)
        old = _groups(name_for(data)).at(LEGACY)
        with job_service(port, data, None, hub.api_url, policy_file(one)) as a:
            for wid in ids:  # found, not reaped
                assert workload(a, alice, wid)["status"] == "running"
                assert old.procs(wid)
            go.touch()  # one ends by itself: seen by polling it
            w = ended(a, alice, ending)
            assert (w["status"], w["exit_code"]) == ("stopped", 0), w
            with a.client(alice) as c:  # the other is stopped
                assert c.post(f"workloads/{stopped}/cancel").status_code == 200
            assert ended(a, alice, stopped)["reason"] == "cancelled by alice"
            for wid in ids:
                wait_for(lambda w=wid: not old.exists(w), 10, what="the old groups to go")
            assert not list((data / "local" / "run").iterdir())
            assert not list((data / "local" / "tmp").glob("w*"))
        _untouched_then_cancelled(b, alice, ids, theirs, before)
