"""The software environment sessions start in.

Sessions run as their users' own accounts, so the environment must be readable and runnable
by every user: the interpreter the hub runs on often is not (``/root/.pyenv``). ``allot up``
therefore builds a virtual environment from an interpreter everyone can run, with JupyterLab,
the hub's own version of ``jupyterhub`` (for ``jupyterhub-singleuser``) and Allotment's
session extension, and makes it world-readable. It builds one, ``default``; the spawner maps a
profile's ``environment`` to a prefix (``AllotmentSpawner.environments``), so a site may add
others in the hub's configuration.

Dask (issue 16): the environment has dask, distributed and bokeh at the versions installed
beside the service (so a notebook, the clusters it starts from its own interpreter and the
service agree), dask-labextension, whose "new cluster" button makes an ``AllotmentCluster``,
and Allotment's light client (``allotment.client``, ``allotment.schemas``, ``allotment.dask``:
copied as files, with only httpx and pydantic beside them, never the service's dependencies).

``allot up`` runs this (as the CLI, before the hub starts); nothing inside JupyterHub does.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import stat
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from allotment.interpreters import python_for_everyone, runnable_by_everyone

__all__ = [
    "DASK_CONFIG",
    "SESSION_PACKAGES",
    "dask_packages",
    "ensure_environment",
    "light_client_files",
    "runnable_by_everyone",
]

#: The meter (hub/labextension) was built against JupyterLab 4.6.
SESSION_PACKAGES = ["jupyterlab>=4.6,<5"]
EXTENSION = "allotment_session"
#: What runs inside the session ships with the hub's code: its server extension and the meter.
SESSION_FILES = Path(__file__).resolve().parent.parent / "hub"
#: Allotment's own package, where the light client's files are copied from.
PACKAGE = Path(__file__).resolve().parent.parent
#: What a notebook imports to use clusters; their own imports of ``allotment.*`` come along.
LIGHT_CLIENT = ("allotment.client", "allotment.schemas", "allotment.dask")
#: Pinned to the versions beside the service where it has them (its clusters' scheduler and
#: workers run the notebook's interpreter: the service checks their versions agree).
PINNED = ("dask", "distributed", "bokeh", "httpx", "pydantic")
#: dask-labextension's "new cluster" button makes an AllotmentCluster (its dashboard link is
#: the service's authenticated proxy, which the cluster reports itself).
DASK_CONFIG = {
    "labextension": {
        "factory": {
            "module": "allotment.dask.cluster",
            "class": "AllotmentCluster",
            "args": [],
            "kwargs": {},
        },
        "default": {"workers": None, "adapt": None},
        "initial": [],
    }
}


def dask_packages() -> list[str]:
    """What the session environment installs for Dask: ``PINNED`` at the service's versions
    (unpinned where the service has none) and dask-labextension."""
    wanted = []
    for name in PINNED:
        try:
            wanted.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            wanted.append(name)
    return [*wanted, "dask-labextension"]


def _module_file(module: str) -> Path | None:
    """The source of ``allotment.…`` module ``module`` in this installation, or None."""
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def light_client_files() -> dict[str, Path]:
    """The light client as files to copy: path under site-packages -> source. ``LIGHT_CLIENT``
    and every ``allotment`` module they import (at any depth), with their packages'
    ``__init__``; a package's ``__init__`` brings its own imports too."""
    files: dict[str, Path] = {}
    todo = ["allotment", *LIGHT_CLIENT]
    while todo:
        module = todo.pop()
        source = _module_file(module)
        if source is None:
            continue
        relative = source.relative_to(PACKAGE.parent).as_posix()
        if relative in files:
            continue
        files[relative] = source
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)
        if source.name == "__init__.py" and module in LIGHT_CLIENT:
            # A package asked for whole: its modules (allotment.dask's, not its remote/
            # programs, which the service sends and nothing imports).
            todo += [
                f"{module}.{f.stem}" for f in source.parent.glob("*.py") if f.stem != "__init__"
            ]
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("allotment")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("allotment"):
                assert node.module is not None
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
    return files


def _install_light_client(site: Path) -> None:
    for relative, source in light_client_files().items():
        target = site / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _wanted() -> dict[str, object]:
    """What the environment is built from; a change rebuilds it."""
    ours = SESSION_FILES
    digest = hashlib.sha256(ours.joinpath("session_extension.py").read_bytes())
    for f in sorted(ours.glob("labextension/**/*")):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    client = hashlib.sha256()
    for relative, source in sorted(light_client_files().items()):
        client.update(relative.encode() + b"\0" + source.read_bytes())
    return {
        "jupyterhub": version("jupyterhub"),
        "packages": SESSION_PACKAGES,
        "extensions": digest.hexdigest(),
        "dask": dask_packages(),
        "dask_config": DASK_CONFIG,
        "client": client.hexdigest(),
        "layout": 3,
    }


def ensure_environment(prefix: Path, *, quiet: bool = True) -> Path:
    """Build (or keep, when it is current) the session environment at ``prefix``."""
    marker = prefix / "allotment-environment.json"
    wanted = _wanted()
    try:
        if json.loads(marker.read_text()) == wanted:
            return prefix
    except (OSError, ValueError):
        pass
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python_for_everyone(), "-m", "venv", str(prefix)], check=True)
    pip = [str(prefix / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    subprocess.run(
        [*pip, f"jupyterhub=={wanted['jupyterhub']}", *SESSION_PACKAGES, *dask_packages()],
        check=True,
    )
    site = subprocess.run(
        [
            str(prefix / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shutil.copyfile(SESSION_FILES / "session_extension.py", Path(site) / f"{EXTENSION}.py")
    _install_light_client(Path(site))
    dask_conf = prefix / "etc" / "dask"
    dask_conf.mkdir(parents=True, exist_ok=True)
    (dask_conf / "allotment.json").write_text(json.dumps(DASK_CONFIG, indent=2))
    # The meter in JupyterLab's status bar, built once with node (meter/) and shipped prebuilt.
    meter = SESSION_FILES / "labextension"
    if (meter / "package.json").exists():
        shutil.copytree(
            meter, prefix / "share" / "jupyter" / "labextensions" / "@allotment" / "meter"
        )
    # The Dask extension checks a dashboard from the browser, with the hub login the proxied
    # dashboard needs (from the Jupyter server, with no login, it would always look inactive).
    lab_settings = prefix / "share" / "jupyter" / "lab" / "settings"
    lab_settings.mkdir(parents=True, exist_ok=True)
    (lab_settings / "overrides.json").write_text(
        json.dumps({"dask-labextension:plugin": {"browserDashboardCheck": True}})
    )
    # No "official Jupyter news?" prompt: sessions should not reach out to the internet.
    labconfig = prefix / "etc" / "jupyter" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    conf = prefix / "etc" / "jupyter" / "jupyter_server_config.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / f"{EXTENSION}.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {EXTENSION: True}}})
    )
    for root, dirs, files in os.walk(prefix):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                mode = os.stat(p).st_mode
                os.chmod(p, mode | stat.S_IRGRP | stat.S_IROTH | (0o011 if mode & 0o100 else 0))
    os.chmod(prefix, 0o755)
    marker.write_text(json.dumps(wanted))
    return prefix
