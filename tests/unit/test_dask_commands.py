"""The commands a Dask cluster's scheduler and workers run (``domain.dask_commands``)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from allotment.backends.base import LaunchSpec
from allotment.backends.slurm.commands import batch_script
from allotment.cli.environments import DASK_CONFIG, light_client_files
from allotment.domain.dask_commands import Launch, program_text, scheduler_launch, worker_launch
from allotment.domain.resources import Resources

CERT = "-----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIkey\n-----END PRIVATE KEY-----\n"
TOKEN = "allot_dask_" + "s3cret" * 7


def scheduler(**kw: object) -> Launch:
    args: dict[str, object] = {
        "cluster_id": 12,
        "name": "demo",
        "python": "/opt/env/bin/python",
        "service_url": "https://hub.example/services/allotment/",
        "token": TOKEN,
        "tls_cert": CERT,
        "tls_key": KEY,
        "dashboard_prefix": "/hub/dask/12/dashboard",
    }
    args.update(kw)
    return scheduler_launch(**args)  # type: ignore[arg-type]


def worker(**kw: object) -> Launch:
    args: dict[str, object] = {
        "cluster_id": 12,
        "name": "demo",
        "python": "/opt/env/bin/python",
        "address": "tls://10.0.0.5:40001",
        "tls_cert": CERT,
        "tls_key": KEY,
        "cpus": 2.0,
        "memory": 4 * 2**30,
        "threads": 2,
        "gpus": 0,
    }
    args.update(kw)
    return worker_launch(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("launch", [scheduler(), worker()], ids=["scheduler", "worker"])
def test_no_secret_is_on_the_command_line_and_the_environment_holds_them(launch: Launch) -> None:
    argv = "\0".join(launch.command)
    for secret in (TOKEN, KEY, CERT, "MIIkey", "MIIcert", "s3cret"):
        assert secret not in argv
    assert launch.env["ALLOT_DASK_TLS_KEY"] == KEY
    assert launch.env["ALLOT_DASK_TLS_CERT"] == CERT
    assert launch.command[:2] == ["/opt/env/bin/python", "-c"]
    # What `ps` shows tells an administrator what it is.
    assert "cluster=12" in launch.command and "demo" in launch.command


def test_only_the_scheduler_gets_the_token() -> None:
    assert scheduler().env["ALLOT_DASK_TOKEN"] == TOKEN
    assert TOKEN not in worker().env.values()


def test_every_variable_is_one_a_shell_can_export() -> None:
    for launch in (scheduler(), worker(gpus=2)):
        for name in launch.env:
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)


def test_the_scheduler_is_told_where_to_report_and_where_its_dashboard_lives() -> None:
    env = scheduler(service_url="http://svc:8080/services/allotment", dashboard_prefix="x/y/").env
    assert env["ALLOT_DASK_SERVICE_URL"] == "http://svc:8080/services/allotment/"
    assert env["ALLOT_DASK_DASHBOARD_PREFIX"] == "/x/y"
    assert env["ALLOT_DASK_PROGRAM"] == program_text("scheduler")


def test_a_worker_is_sized_and_joins_its_scheduler() -> None:
    env = worker(threads=3, memory=2**30, gpus=0).env
    assert env["ALLOT_DASK_SCHEDULER"] == "tls://10.0.0.5:40001"
    assert (env["ALLOT_DASK_THREADS"], env["ALLOT_DASK_MEMORY"]) == ("3", str(2**30))
    assert "ALLOT_DASK_RESOURCES" not in env
    assert env["ALLOT_DASK_PROGRAM"] == program_text("worker")
    assert worker(threads=0, cpus=2.5).env["ALLOT_DASK_THREADS"] == "3", "CPUs, rounded up"
    assert worker(threads=0, cpus=0.25).env["ALLOT_DASK_THREADS"] == "1"
    assert worker(gpus=2).env["ALLOT_DASK_RESOURCES"] == "GPU=2"


def test_there_are_only_two_programs() -> None:
    with pytest.raises(ValueError, match="no Dask program"):
        program_text("nanny")


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_the_programs_import_only_what_any_dask_environment_has(role: str) -> None:
    """They run where allotment may not be installed."""
    allowed = set(sys.stdlib_module_names) | {"dask", "distributed", "tornado", "__future__"}
    tree = ast.parse(program_text(role))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative import: the text runs as __main__"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{role} imports {name}"


def test_the_bootstrap_runs_the_program_from_the_environment_as_main() -> None:
    """What ``-c`` runs: the program text, as ``__main__``, under a name tracebacks show, and
    the text is not passed on to the program's children."""
    launch = worker()
    program = (
        "import os, sys\n"
        "print(__name__, sys.argv[1:], 'ALLOT_DASK_PROGRAM' in os.environ)\n"
        "raise SystemExit(3)\n"
    )
    env = {**os.environ, **launch.env, "ALLOT_DASK_PROGRAM": program}
    done = subprocess.run(
        [sys.executable, *launch.command[1:]], env=env, capture_output=True, text=True
    )
    assert done.returncode == 3
    assert done.stdout.split(" ", 1)[0] == "__main__"
    assert "['allotment-dask-worker', 'cluster=12', 'demo'] False" in done.stdout

    env["ALLOT_DASK_PROGRAM"] = "1 / 0\n"
    done = subprocess.run(
        [sys.executable, *launch.command[1:]], env=env, capture_output=True, text=True
    )
    assert "<allotment-dask-worker>" in done.stderr and "ZeroDivisionError" in done.stderr


def test_a_slurm_job_knows_its_workload_id_as_a_local_one_does() -> None:
    """A Dask worker's name is ``$ALLOT_WORKLOAD_ID``, on every backend."""
    launch = worker()
    spec = LaunchSpec(4711, "a", "lab/x", launch.command, Resources.of(2, 2**30), env=launch.env)
    script = batch_script(spec, "/home/a", "a").decode()
    assert "export ALLOT_WORKLOAD_ID=4711\n" in script
    assert "export ALLOT_ACCOUNT=lab/x\n" in script
    assert KEY.splitlines()[1] in script, "the secrets travel in the script, not in argv"


def test_the_session_environments_light_client_imports_on_its_own(tmp_path: Path) -> None:
    """What ``allot up`` copies into the session environment (``light_client_files``) is
    enough to make an AllotmentCluster, without the rest of the service."""
    for relative, source in light_client_files().items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp_path / relative)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from allotment.dask.cluster import AllotmentCluster\n"
        "import allotment, allotment.client, allotment.schemas\n"
        "assert allotment.__file__.startswith(sys.argv[1]), allotment.__file__\n"
        "import importlib.util as u\n"
        "print(u.find_spec('allotment.db') is None, u.find_spec('allotment.api') is None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
    assert "allotment.dask.cluster" in DASK_CONFIG["labextension"]["factory"]["module"]
