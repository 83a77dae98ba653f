"""Security issue 11, part 7: what a newcomer met while trying Allotment.

Each test is one of the things they reported; the ones about `allot up`'s start-up are in
tests/cli/test_up.py, the spawner's user_options in tests/unit/test_hub.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from allotment.api.app import default_data_dir, earlier_data_dir
from allotment.backends.base import LaunchSpec
from allotment.backends.local.reasons import setup_failure
from allotment.cli import up as up_module
from allotment.cli import user as user_module
from allotment.cli.hub_setup import HubLayout
from allotment.cli.main import app
from allotment.config.models import ServiceSettings
from allotment.domain.resources import Resources
from allotment.schemas import Me
from tests.backends.conftest import ROOT as AS_ROOT
from tests.backends.conftest import local_backend
from tests.backends.test_contract import ended, started
from tests.support.hub import Hub
from tests.support.service import Service, running_service

REPO = Path(__file__).resolve().parents[2]
READ = ["custom:allotment:read"]

EVERYONE_POLICY = """\
accounts:
  everyone:
    members: ["*"]
pools:
  box:
    backend: local
    nodes: [{name: n1, cpus: 4, memory: 8G}]
profiles:
  small:
    pool: box
    size: {cpus: 1, memory: 1G}
"""


@pytest.fixture
async def everyone_service(tmp_path: Path, hub: Hub) -> AsyncIterator[Service]:
    async with running_service(
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "data",
        policy_text=EVERYONE_POLICY,
        hub_api_url=hub.api_url,
    ) as svc:
        yield svc


class _FakeClient:
    """What `allot whoami` asks of its client, answered with a /me the service gave."""

    def __init__(self, me: Me) -> None:
        self._me = me

    def me(self) -> Me:
        return self._me


@pytest.mark.jupyterhub
async def test_whoami_counts_the_memberships_a_star_gives(
    everyone_service: Service, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with everyone_service.client(hub.token("mallory", READ)) as c:
        r = await c.get("me")
    assert r.status_code == 200, r.text
    me = Me.model_validate(r.json())
    assert [(m.account, m.role) for m in me.memberships] == [("everyone", "member")]

    @contextlib.contextmanager
    def client(url: str | None, token: str | None) -> Iterator[_FakeClient]:
        yield _FakeClient(me)

    monkeypatch.setattr(user_module, "client", client)
    out = CliRunner().invoke(app, ["whoami"]).output
    assert "no memberships yet" not in out
    assert "member   everyone (as every user is)" in out


@pytest.mark.jupyterhub
async def test_cancelling_ones_own_job_with_a_read_only_token_blames_the_token(
    everyone_service: Service, hub: Hub
) -> None:
    async with everyone_service.client(hub.token("mallory")) as c:
        r = await c.post("workloads", json={"profile": "small", "command": ["true"]})
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    async with everyone_service.client(hub.token("mallory", READ)) as c:
        r = await c.post(f"workloads/{wid}/cancel")
    assert r.status_code == 403
    detail = r.json()["detail"]
    assert "its owner (mallory)" not in detail
    assert f"This token may read but not cancel workload {wid}" in detail
    assert "custom:allotment:submit" in detail


def test_allot_serve_and_allot_up_never_share_a_data_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ALLOTMENT_DATA_DIR", raising=False)
    monkeypatch.delenv("ALLOTMENT_HUB_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    serve, hub = default_data_dir(), HubLayout(up_module._default_data_dir())
    assert (serve, hub.root) == (Path("/var/lib/allotment-service"), Path("/var/lib/allotment"))
    for ours in (hub.root, hub.service):
        assert not serve.is_relative_to(ours) and not ours.is_relative_to(serve)
    # The reference, the schema's description and the README say what the code does.
    described = ServiceSettings.model_fields["data_dir"].description or ""
    assert f"`{serve}` as root" in described
    assert f"`{serve}` as root" in (REPO / "docs/reference/config.md").read_text()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"`{serve}` as root (not `{hub.root}`, which is `allot up`'s)" in readme
    assert f"prepares a data directory (`{hub.root}` as root" in readme


def test_allot_serve_prints_its_paths_whole_when_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / ("a-data-directory-with-a-long-name-" * 3)
    monkeypatch.setenv("ALLOTMENT_DATA_DIR", str(data))
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)  # print, then start nothing
    r = CliRunner().invoke(app, ["serve", "--port", "8799"])
    assert r.exit_code == 0, r.output
    assert f"admin token: {data / 'admin-token'} (readable by you only)" in r.output


def test_a_job_that_cannot_open_its_output_names_files_directory_and_account() -> None:
    placement = {
        "user": "jupyter-alice",
        "workdir": "/srv/shared",
        "stdout": "/srv/shared/allot-7.out",
        "stderr": "/srv/shared/allot-7.err",
    }
    reason = setup_failure(253, placement)
    assert reason is not None
    assert reason.startswith("could not open its output files (exit status 253): ")
    assert "jupyter-alice may not create or append to allot-7.out and allot-7.err in " in reason
    assert "/srv/shared." in reason
    elsewhere = {**placement, "stdout": "/home/a/o.txt"}
    assert "/home/a/o.txt and /srv/shared/allot-7.err" in (setup_failure(253, elsewhere) or "")
    same = {**placement, "stderr": placement["stdout"]}  # a session's one log
    assert "append to allot-7.out in /srv/shared." in (setup_failure(253, same) or "")
    entered = setup_failure(254, placement) or ""
    assert "jupyter-alice may not enter /srv/shared" in entered
    assert setup_failure(1, placement) is None


@pytest.mark.skipif(not AS_ROOT, reason="runs a job as another POSIX account: needs root")
async def test_a_job_from_a_directory_its_user_cannot_write_says_where_and_as_whom(
    tmp_path: Path, shared: Path
) -> None:
    readonly = shared / "readonly"
    readonly.mkdir(mode=0o755)  # root's; the job's account may enter but not write
    readonly.chmod(0o755)
    local = local_backend(tmp_path / "state")
    wid = os.getpid() * 1000 + 999
    spec = LaunchSpec(
        wid, "alice", "lab", ["true"], Resources.of(1, 256 * 2**20), workdir=str(readonly)
    )
    try:
        p = (await started(local, spec))[-1]
        seen = await ended(local, wid, p)
        assert (seen.exit_code, seen.failed) == (253, True)
        assert seen.reason == (
            "could not open its output files (exit status 253): jupyter-alice may not create "
            f"or append to allot-{wid}.out and allot-{wid}.err in {readonly}. Submit from a "
            "directory jupyter-alice can write to, or name files it can write with --output "
            "and --error."
        )
        await local.release(wid, p)
    finally:
        for w in await local.present():
            await local.reap(w)
        await local.close()


def test_an_earlier_serve_database_in_the_old_default_is_named_not_hidden(tmp_path: Path) -> None:
    """Upgrade: `allot serve` as root used to keep its data in /var/lib/allotment; starting
    empty in its new default would hide every job it had, so it says how to move them."""
    earlier = tmp_path / "allotment"
    earlier.mkdir()
    new = tmp_path / "allotment-service"
    assert earlier_data_dir(new, earlier, new) is None  # nothing there: start afresh
    (earlier / "allotment.sqlite").write_bytes(b"")
    said = earlier_data_dir(new, earlier, new) or ""
    assert f"An earlier `allot serve` kept its database in {earlier}" in said
    assert f"mv {earlier}/allotment.sqlite* {earlier}/admin-token {earlier}/local {new}/" in said
    assert earlier_data_dir(tmp_path / "elsewhere", earlier, new) is None  # not the default
    new.mkdir()
    assert earlier_data_dir(new, earlier, new) is None  # moved already, or chosen
