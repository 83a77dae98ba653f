"""The spawner's Slurm pieces without a hub: what a session waiting in Slurm's queue says, and
where its server listens (the node's own address, from Slurm; loopback anywhere else)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from allotment.hub.form import render_form
from allotment.hub.spawner import ON_NODE, backend_waiting_message, queued_in_backend
from allotment.schemas import QuoteOut
from tests.support.builders import workload_out

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
QUEUED = "queued in Slurm: waiting for resources (Resources)"


def test_a_session_queued_in_slurm_shows_slurms_reason_and_expected_start() -> None:
    w = workload_out(
        status="starting", reason=QUEUED, expected_start=NOW + timedelta(minutes=20), position=2
    )
    assert queued_in_backend(w)
    text = backend_waiting_message(w, now=NOW.timestamp())
    assert text.startswith("Queued in Slurm: waiting for resources (Resources); 2nd in line, ")
    assert "expected to start at " in text and text.endswith("(in 20 min).")
    bare = workload_out(status="starting", reason=QUEUED)
    assert backend_waiting_message(bare, now=NOW.timestamp()) == (
        "Queued in Slurm: waiting for resources (Resources)."
    )
    # Placed on a node (or no reason given): starting, not queued.
    assert not queued_in_backend(workload_out(status="starting", reason=QUEUED, node="n2"))
    assert not queued_in_backend(workload_out(status="starting", reason=""))
    assert not queued_in_backend(workload_out(status="pending"))


def _listen(tmp_path: Path, env: dict[str, str]) -> str:
    """The command line the session's server is started with, under ``env``."""
    out = subprocess.run(
        ["/bin/sh", "-c", ON_NODE, "allotment-session", "echo", "jupyterhub-singleuser"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_on_a_slurm_node_the_server_listens_on_the_node_address_slurm_reports(
    tmp_path: Path,
) -> None:
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(
        "#!/bin/sh\n"
        '[ "$4" = n2 ] || exit 1\n'
        "echo 'NodeName=n2 Arch=x86_64 CoresPerSocket=1 NodeAddr=10.1.0.2 NodeHostName=n2 Port=0'\n"
    )
    os.chmod(scontrol, 0o755)
    assert _listen(tmp_path, {"SLURMD_NODENAME": "n2"}) == "jupyterhub-singleuser --ip=10.1.0.2"
    # Not in a Slurm job: where the spawner said (JUPYTERHUB_SERVICE_URL), unchanged.
    assert _listen(tmp_path, {}) == "jupyterhub-singleuser"


def test_without_an_answer_from_slurm_the_server_listens_on_the_nodes_resolved_name(
    tmp_path: Path,
) -> None:
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\nexit 1\n")
    os.chmod(scontrol, 0o755)
    line = _listen(tmp_path, {"SLURMD_NODENAME": "n2"})
    assert line.startswith("jupyterhub-singleuser --ip=") and line != "jupyterhub-singleuser --ip="


def test_the_form_says_why_the_last_session_ended() -> None:
    quote = QuoteOut(account="lab", accounts=["lab"], currency="EUR", at=NOW, profiles=[])
    html = render_form(
        quote,
        service_url="/services/allotment/",
        token="t",
        refresh_seconds=5,
        notice="Your last session ended: node <n2> stopped responding.",
    )
    assert "Your last session ended: node &lt;n2&gt; stopped responding." in html
    assert "allot-notice" not in render_form(quote, service_url="/s/", token="t", refresh_seconds=5)


def test_why_a_session_was_lost_outlives_the_spawner_the_hub_replaces() -> None:
    from allotment.hub.spawner import AllotmentSpawner

    lost = AllotmentSpawner()
    lost.workload_id = 3
    lost._ended = "Your last session ended: node n2 stopped responding (NODE_FAIL)."
    lost.clear_state()  # the hub, after poll() found it ended
    state = lost.get_state()
    assert state == {"ended": lost._ended}
    fresh = AllotmentSpawner()  # the hub's next spawner of that server, for the form
    fresh.load_state(state)
    assert (fresh.workload_id, fresh._ended) == (0, lost._ended)
    fresh._ended = None  # a session started again
    assert fresh.get_state() == {}
