"""`allot dask list|show|scale|stop` as a researcher runs them: against the stub of the Dask
endpoints (tests/unit/test_dask_cluster.py: the contract's answers over real HTTP), and, where
the service has them, against a real `allot serve` (what another user may not see is 404)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator

import pytest

from allotment.client import AllotmentClient
from allotment.schemas import DaskAdapt, DaskClusterCreate
from tests.cli.test_cli import allot
from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env
from tests.unit.test_dask_cluster import TOKEN, StubDaskApi


@pytest.fixture
def stub() -> Iterator[StubDaskApi]:
    api = StubDaskApi("tls://127.0.0.1:1", cert="", key="")
    api.start_as = "queued"
    with AllotmentClient(api.url, TOKEN) as c:
        c.create_dask_cluster(DaskClusterCreate(name="era5", python="/p", workers=8, cpus=2))
        c.create_dask_cluster(
            DaskClusterCreate(name="small", python="/p", adapt=DaskAdapt(maximum=4))
        )
    yield api
    api.close()


def _env(stub: StubDaskApi) -> dict[str, str]:
    return {"ALLOTMENT_URL": stub.url, "ALLOTMENT_TOKEN": TOKEN}


def test_list_shows_workers_asked_for_and_why_they_wait(stub: StubDaskApi) -> None:
    r = allot("dask", "list", env=_env(stub))
    assert r.returncode == 0, r.stderr
    era5 = next(line for line in r.stdout.splitlines() if "era5" in line)
    assert "starting" in era5 and "0/8 (8 requested)" in era5
    assert "2 cpu, 2G" in era5 and "0.50 credits" in era5 and "8 of its 8 CPUs" in era5
    assert "adapt 0-4" in r.stdout
    r = allot("dask", "list", "--json", env=_env(stub))
    assert [c["name"] for c in json.loads(r.stdout)] == ["era5", "small"]


def test_show_scale_and_stop(stub: StubDaskApi) -> None:
    r = allot("dask", "show", "era5", env=_env(stub))
    assert r.returncode == 0, r.stderr
    assert "0/8 (8 requested)" in r.stdout and "waiting" in r.stdout
    assert "physics/lab-a (profile dask-worker)" in r.stdout and "on close     stops" in r.stdout
    r = allot("dask", "scale", "era5", "3", env=_env(stub))
    assert r.returncode == 0 and "era5: 0/3 (3 requested) workers" in r.stdout, r.stderr
    assert stub.clusters["era5"]["workers"] == 3
    r = allot("dask", "stop", "era5", env=_env(stub))
    assert r.returncode == 0 and "era5: stopping (stopped by alice)" in r.stdout, r.stderr
    r = allot("dask", "stop", "era5", env=_env(stub))  # stopping already: said as it is
    assert r.returncode == 0 and "era5: stopping (stopped by alice)" in r.stdout, r.stderr


def test_an_unknown_cluster_is_one_line_and_exit_code_1(stub: StubDaskApi) -> None:
    r = allot("dask", "scale", "nope", "2", env=_env(stub))
    assert (
        r.returncode == 1
        and "no Dask cluster called 'nope'" in r.stderr
        and "Traceback" not in r.stderr
    )


@pytest.mark.skipif(
    importlib.util.find_spec("allotment.api.routes.dask") is None,
    reason="the service's Dask endpoints (api/routes/dask.py) are not there yet",
)
def test_against_the_service_a_stranger_finds_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = tmp_path_factory.mktemp("dask-cli")
    port = free_port()
    with allot_serve(port, clean_env(ALLOTMENT_DATA_DIR=str(data)), "--no-controller"):
        env = {
            "ALLOTMENT_URL": f"http://127.0.0.1:{port}/services/allotment/",
            "ALLOTMENT_DATA_DIR": str(data),
        }
        r = allot("dask", "list", env=env)
        assert r.returncode == 0 and "no Dask clusters" in r.stdout, r.stderr
        for args in (("show", "era5"), ("scale", "era5", "2"), ("stop", "era5")):
            r = allot("dask", *args, env=env)
            assert r.returncode == 1 and "era5" in r.stderr, (args, r.stderr)
