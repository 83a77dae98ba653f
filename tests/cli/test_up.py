"""`allot up` before it starts anything: what it checks, writes and prints (in-process, with
the session environment's build replaced by a stub; ``--prepare-only`` so nothing starts)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from allotment.cli import up as up_module
from allotment.cli.main import app


def _stub_environment(python: str) -> Callable[..., Path]:
    """An `ensure_environment` that builds nothing: ``bin/python`` is a link to ``python``."""

    def build(prefix: Path, *, quiet: bool = True) -> Path:
        (prefix / "bin").mkdir(parents=True, exist_ok=True)
        link = prefix / "bin" / "python"
        if not link.is_symlink():
            link.symlink_to(python)
        return prefix

    return build


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(up_module, "ensure_environment", _stub_environment("/usr/bin/python3"))
    monkeypatch.delenv("COLUMNS", raising=False)  # as in a service's log: no terminal, no width
    yield


def allot_up(*args: str) -> Result:
    return CliRunner().invoke(app, ["up", "--prepare-only", *args])


def test_the_policy_it_writes_is_readable_by_the_service_only(stubbed: None, shared: Path) -> None:
    data = shared / "hub"
    r = allot_up("--data-dir", str(data))
    assert r.exit_code == 0, r.output
    assert os.stat(data / "allotment.yaml").st_mode & 0o777 == 0o600
    own = shared / "mine.yaml"
    own.write_text((data / "allotment.yaml").read_text())
    own.chmod(0o644)
    r = allot_up("--data-dir", str(data), "--config", str(own))
    assert r.exit_code == 0, r.output
    assert os.stat(data / "allotment.yaml").st_mode & 0o777 == 0o600


def test_start_up_lines_keep_paths_whole_when_not_a_terminal(stubbed: None, shared: Path) -> None:
    data = shared / ("a-data-directory-with-a-long-name-" * 3) / "hub"
    r = allot_up("--data-dir", str(data))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for shown in (f"policy: {data}/allotment.yaml", f"data:   {data}", str(data / "secrets")):
        assert any(shown in line for line in lines), (shown, r.output)


def test_without_the_hub_extra_it_says_which_extra_to_install(
    stubbed: None, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up_module, "HUB_MODULES", ("jupyterhub_traefik_proxy_not_here",))
    r = allot_up("--data-dir", str(shared / "hub"))
    assert r.exit_code == 1
    assert "needs the hub extra (jupyterhub_traefik_proxy_not_here not found)" in r.output
    assert f"{sys.executable} -m pip install 'allotment[hub]'" in r.output
    assert not (shared / "hub").exists()  # said before anything was written


def test_a_data_directory_other_users_cannot_reach_is_named_at_start(
    stubbed: None, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # sessions run as their users' accounts
    closed = shared / "private"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    r = allot_up("--data-dir", str(closed / "data"))
    assert r.exit_code == 1
    assert f"other users cannot enter {closed} (mode 0700)" in r.output
    assert f"chmod o+x {closed}" in r.output
    closed.chmod(0o711)
    assert allot_up("--data-dir", str(closed / "data")).exit_code == 0


def test_a_session_interpreter_other_users_cannot_run_is_named_at_start(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    hidden = shared / "home"
    hidden.mkdir()
    (hidden / "python3").write_text("")
    hidden.chmod(0o700)
    monkeypatch.setattr(up_module, "ensure_environment", _stub_environment(str(hidden / "python3")))
    r = allot_up("--data-dir", str(shared / "hub"))
    assert r.exit_code == 1
    assert "Sessions could not run" in r.output
    assert f"other users cannot enter {hidden} (mode 0700)" in r.output


def test_a_data_directory_under_tmp_is_refused_at_start(
    stubbed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every session has a private /tmp: an environment under the machine's is out of reach."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    data = Path(tempfile.mkdtemp(prefix="allot-test-", dir="/tmp"))
    try:
        data.chmod(0o755)
        r = allot_up("--data-dir", str(data / "hub"))
        assert r.exit_code == 1
        assert "it is under /tmp, and every session has a private /tmp of its own" in r.output
    finally:
        shutil.rmtree(data, ignore_errors=True)
