"""The hub's pieces without a hub: the queued message, the launch form's escaping and form
data, the session command, the generated JupyterHub configuration, the environment check."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from traitlets.config.loader import PyFileConfigLoader

from allotment.cli.environments import runnable_by_everyone
from allotment.cli.hub_setup import HubLayout, default_policy, hub_config
from allotment.config import parse_policy
from allotment.hub.form import render_form
from allotment.hub.spawner import AllotmentSpawner, waiting_message
from allotment.schemas import ProfileQuote, QuoteOut
from tests.support.builders import workload_out as _workload

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_a_queued_session_says_its_place_its_start_and_why() -> None:
    w = _workload(position=3, expected_start=NOW + timedelta(minutes=12))
    text = waiting_message(w, now=NOW.timestamp())
    assert text.startswith("Queued: 3rd in line, expected to start at ")
    assert "(in 12 min)" in text
    assert text.endswith("Waiting for 1 CPU, 1G to free up (next in line).")
    assert waiting_message(_workload(position=1), now=NOW.timestamp()).startswith(
        "Queued: 1st in line. Waiting"
    )
    assert waiting_message(_workload(position=12), now=NOW.timestamp()).startswith("Queued: 12th")


def _quote(display_name: str) -> QuoteOut:
    p = ProfileQuote(
        profile="small", display_name=display_name, description="", pool="box",
        environment="default", cpus=1, memory=2**30, gpus={}, free_cpus=1, free_memory=2**30,
        free_gpus={}, starts_now=True, queued=0, position=None, expected_start=None,
        wait_seconds=0, cost_per_hour=1.0, budget=None, quota=None,
    )  # fmt: skip
    return QuoteOut(account="lab", accounts=["lab"], currency="EUR", at=NOW, profiles=[p])


def test_the_form_cannot_be_broken_out_of_by_a_profile_name() -> None:
    evil = "</script><script>alert(1)</script>"
    html = render_form(
        _quote(evil), service_url="/services/allotment/", token="t", refresh_seconds=5
    )
    assert evil not in html
    assert "\\u003c/script\\u003e" in html  # inside the script's JSON
    assert '"quoteUrl": "/services/allotment/api/quote"' in html


def test_form_data_becomes_options() -> None:
    s = AllotmentSpawner()
    assert s.options_from_form({"profile": ["small"], "account": ["lab"]}) == {
        "profile": "small",
        "account": "lab",
    }
    assert s.options_from_form({"profile": ["small"], "account": [""]}) == {"profile": "small"}


def test_a_session_runs_the_servers_of_its_environment() -> None:
    s = AllotmentSpawner(environments={"default": "/envs/default"})
    cmd, path = s._command("default")
    assert cmd == ["/envs/default/bin/jupyterhub-singleuser"]
    assert path.startswith("/envs/default/bin:")
    cmd, path = s._command("unknown")
    assert cmd == ["jupyterhub-singleuser"] and path == "/usr/local/bin:/usr/bin:/bin"
    assert s.env_keep == []  # nothing of the hub's environment reaches a session


def test_the_generated_configuration_loads_and_holds_no_secret(tmp_path: Path) -> None:
    layout = HubLayout(tmp_path / "data")
    layout.create()
    for name in ("admin-password", "user-password", "spawner-token", "traefik-api"):
        layout.secret(name)
    text = hub_config(
        layout, admin="root-admin", ip="127.0.0.1", port=8000, hub_port=8081,
        service_port=8751, traefik_api_port=8099, named_servers=3,
    )  # fmt: skip
    layout.config.write_text(text)
    for name in ("spawner-token", "admin-password"):
        assert layout.secret(name) not in text
        assert oct(os.stat(layout.secrets / name).st_mode & 0o777) == "0o600"
    assert oct(os.stat(layout.root).st_mode & 0o777) == "0o711"
    assert oct(os.stat(layout.secrets).st_mode & 0o777) == "0o700"
    c = PyFileConfigLoader(str(layout.config)).load_config()
    assert c.JupyterHub.spawner_class == "allotment.hub.spawner.AllotmentSpawner"
    assert c.JupyterHub.proxy_class == "traefik_file"
    assert c.JupyterHub.named_server_limit_per_user == 3
    assert c.AllotmentSpawner.allotment_token == layout.secret("spawner-token")
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["allotment-spawner"]["scopes"] == ["custom:allotment:spawn"]
    assert "custom:allotment:submit" in roles["server"]["scopes"]
    assert roles["allotment-admin"]["users"] == ["root-admin"]


def test_the_default_policy_is_valid() -> None:
    policy = parse_policy(default_policy("admin"), environ={})
    assert policy.accounts["everyone"].members == ["*"]
    assert policy.pools["local"].nodes[0].cpus == (os.cpu_count() or 1)


def test_runnable_by_everyone(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    f = d / "x"
    f.write_text("")
    os.chmod(f, 0o755)
    os.chmod(tmp_path, 0o700)
    assert not runnable_by_everyone(f)
    os.chmod(tmp_path, 0o711)
    assert runnable_by_everyone(f) == all(os.stat(p).st_mode & 0o001 for p in tmp_path.parents)


def test_cpu_use_counts_as_use_from_five_percent_of_a_core() -> None:
    from allotment.controller.culler import CpuWatch, idle_deadline

    watch = CpuWatch(min_cores=0.05)
    assert watch.busy(1, 10.0, at=100.0)  # first sight: in use (a restart forgets history)
    assert not watch.busy(1, 10.2, at=105.0)  # 0.04 of a core
    assert watch.busy(1, 10.5, at=110.0)  # 0.06
    watch.keep(set())
    assert watch.busy(1, 99.0, at=200.0)  # forgotten: first sight again
    start = NOW
    assert idle_deadline(start, None, 0) is None
    assert idle_deadline(start, None, 60) == start + timedelta(seconds=60)
    later = start + timedelta(minutes=5)
    assert idle_deadline(start, later, 60) == later + timedelta(seconds=60)
    assert idle_deadline(later, start, 60) == later + timedelta(seconds=60)


def test_the_policy_is_readable_by_the_service_only(tmp_path: Path) -> None:
    """It may hold a database URL with its password (security issue 11, part 6c)."""
    layout = HubLayout(tmp_path / "data")
    layout.create()
    layout.write_policy("currency: credits\n")
    assert os.stat(layout.policy).st_mode & 0o777 == 0o600
    assert layout.policy.read_text() == "currency: credits\n"
    assert os.stat(layout.policy).st_uid == os.geteuid()
    os.chmod(layout.policy, 0o644)  # as earlier versions left it
    layout.create()
    assert os.stat(layout.policy).st_mode & 0o777 == 0o600
    layout.write_policy("currency: EUR\n")  # replaced, not appended to, and still 0600
    assert os.stat(layout.policy).st_mode & 0o777 == 0o600
    assert layout.policy.read_text() == "currency: EUR\n"
    assert sorted(p.name for p in layout.root.iterdir() if p.name.startswith(".")) == []


async def test_a_spawn_logs_no_unhandled_user_options(caplog: pytest.LogCaptureFixture) -> None:
    """start() reads the options itself: JupyterHub must not warn of them at every spawn."""
    s = AllotmentSpawner()
    with caplog.at_level(logging.DEBUG):
        await s._run_apply_user_options({"profile": "small", "account": "lab"})
    assert not [r for r in caplog.records if "user_options" in r.getMessage()]


async def test_the_spawn_page_says_when_allotment_is_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client retries while the service is unavailable: the spawner logs it and its
    progress shows it, instead of a page that seems stuck."""
    s = AllotmentSpawner()
    with caplog.at_level(logging.WARNING):
        s._unavailable("the database is unavailable: connection refused", 30.0)
    assert any("Allotment is unavailable" in r.getMessage() for r in caplog.records)
    progress = s.progress()
    event = await anext(progress)
    await progress.aclose()
    assert event["message"] == (
        "Allotment is unavailable (the database is unavailable: connection refused); "
        "trying again for up to 30 s…"
    )
