# mypy: disable-error-code="no-untyped-call"
"""An XArray analysis on an Allotment Dask cluster, as a researcher runs one: a chunked
dataset of a few hundred MB written as Zarr, its monthly climatology and anomaly computed on
the cluster's workers (alice's POSIX account, in cgroups), the result written by the workers
to alice's home, then checked against the same arithmetic in numpy.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
import xarray as xr

from tests.backends.conftest import ROOT
from tests.support.dask import DaskService, DaskUnavailable, dask_service
from tests.support.hub import Hub

pytestmark = [
    pytest.mark.jupyterhub,
    pytest.mark.skipif(not ROOT, reason="runs clusters as other POSIX accounts: needs root"),
]

#: Three years of daily fields on a 1° grid, float32: 1,096 × 180 × 360 × 4 B = 284 MB.
DAYS, LAT, LON = 1096, 180, 360


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, hub: Hub) -> Iterator[DaskService]:
    try:
        with dask_service(tmp_path_factory.mktemp("dask-xarray"), hub) as s:
            yield s
    except DaskUnavailable as e:
        pytest.skip(str(e))


def _dataset() -> xr.Dataset:
    """A temperature-like field: a seasonal cycle, a gradient with latitude, and noise."""
    time = pd.date_range("2020-01-01", periods=DAYS, freq="D")
    rng = np.random.default_rng(16)
    season = 10 * np.sin(2 * np.pi * (time.day_of_year.to_numpy() / 365.25))
    lat = np.linspace(-89.5, 89.5, LAT)
    base = 15 + 15 * np.cos(np.deg2rad(lat))
    t = (
        season[:, None, None]
        + base[None, :, None]
        + rng.standard_normal((DAYS, LAT, LON), dtype=np.float32)
    ).astype(np.float32)
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t)},
        coords={"time": time, "lat": lat, "lon": np.arange(0.5, 360, 1.0)},
    )


#: The notebook, run as alice's own POSIX account from the environment her session has (the
#: client the cluster's workers match): the climatology back in the notebook, the anomaly
#: written by the workers to her home.
NOTEBOOK = """\
import os, sys
import xarray as xr
from distributed import Client
from allotment.dask import AllotmentCluster

source, target = sys.argv[1], sys.argv[2]
with AllotmentCluster(profile="dask", account="lab", name="climate", workers=3, cpus=1,
                      memory="2G", timeout=180) as cluster, Client(cluster) as client:
    client.wait_for_workers(3, timeout=180)
    ds = xr.open_zarr(source, consolidated=False)
    climatology = ds.t2m.groupby("time.month").mean("time")
    anomaly = (ds.t2m.groupby("time.month") - climatology).rename("anomaly")
    clim = climatology.compute()
    xr.Dataset({"anomaly": anomaly}).to_zarr(target, mode="w", consolidated=False)
    clim.to_dataset(name="climatology").to_zarr(target + "-clim", mode="w", consolidated=False)
print("done")
"""


@pytest.mark.timeout(420)
def test_monthly_climatology_and_anomaly_on_the_cluster(svc: DaskService, shared: Path) -> None:
    source = shared / "era.zarr"
    expected = _dataset()
    assert expected.t2m.nbytes > 250 * 2**20
    expected.chunk({"time": 92, "lat": 90, "lon": 180}).to_zarr(
        source, mode="w", consolidated=False
    )
    # alice's account exists once something of hers ran.
    made = svc.job.allot(
        svc.token("alice"), "submit", "-p", "dask", "--wait", "--", "true", cwd=shared
    )
    assert made.returncode == 0, made.stdout + made.stderr
    alice = pwd.getpwnam("jupyter-alice")
    home = Path(alice.pw_dir)
    target = home / "t2m-anomaly.zarr"
    notebook = shared / "notebook.py"
    notebook.write_text(NOTEBOOK)
    env = {
        "HOME": str(home),
        "PATH": f"{svc.python.parent}:/usr/bin:/bin",
        "ALLOTMENT_URL": svc.url,
        "ALLOTMENT_TOKEN": svc.token("alice"),  # in its environment, never on a command line
    }
    ran = subprocess.run(
        [str(svc.python), str(notebook), str(source), str(target)],
        user=alice.pw_uid,
        group=alice.pw_gid,
        extra_groups=[],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert ran.returncode == 0 and ran.stdout.strip() == "done", ran.stdout + ran.stderr[-4000:]

    assert target.stat().st_uid == alice.pw_uid
    anomaly = xr.open_zarr(target, consolidated=False).anomaly.to_numpy()
    climatology = xr.open_zarr(str(target) + "-clim", consolidated=False).climatology.to_numpy()
    t = expected.t2m.to_numpy().astype(np.float64)
    months = expected.time.dt.month.to_numpy()
    clim = np.stack([t[months == m].mean(axis=0) for m in range(1, 13)])
    np.testing.assert_allclose(climatology, clim, rtol=0, atol=1e-4)
    np.testing.assert_allclose(anomaly, t - clim[months - 1], rtol=0, atol=1e-4)
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(str(target) + "-clim", ignore_errors=True)
