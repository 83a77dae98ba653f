"""The software environment sessions start in.

Sessions run as their users' own accounts, so the environment must be readable and runnable
by every user: the interpreter the hub runs on often is not (``/root/.pyenv``). ``allot up``
therefore builds a virtual environment from an interpreter everyone can run, with JupyterLab,
the hub's own version of ``jupyterhub`` (for ``jupyterhub-singleuser``) and Allotment's
session extension, and makes it world-readable. It builds one, ``default``; the spawner maps a
profile's ``environment`` to a prefix (``AllotmentSpawner.environments``), so a site may add
others in the hub's configuration.

``allot up`` runs this (as the CLI, before the hub starts); nothing inside JupyterHub does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from importlib.metadata import version
from pathlib import Path

from allotment.interpreters import python_for_everyone, runnable_by_everyone

__all__ = ["SESSION_PACKAGES", "ensure_environment", "runnable_by_everyone"]

#: The meter (hub/labextension) was built against JupyterLab 4.6.
SESSION_PACKAGES = ["jupyterlab>=4.6,<5"]
EXTENSION = "allotment_session"
#: What runs inside the session ships with the hub's code: its server extension and the meter.
SESSION_FILES = Path(__file__).resolve().parent.parent / "hub"


def _wanted() -> dict[str, object]:
    """What the environment is built from; a change rebuilds it."""
    ours = SESSION_FILES
    digest = hashlib.sha256(ours.joinpath("session_extension.py").read_bytes())
    for f in sorted(ours.glob("labextension/**/*")):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    return {
        "jupyterhub": version("jupyterhub"),
        "packages": SESSION_PACKAGES,
        "extensions": digest.hexdigest(),
        "layout": 2,
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
    subprocess.run([*pip, f"jupyterhub=={wanted['jupyterhub']}", *SESSION_PACKAGES], check=True)
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
    # The meter in JupyterLab's status bar, built once with node (meter/) and shipped prebuilt.
    meter = SESSION_FILES / "labextension"
    if (meter / "package.json").exists():
        shutil.copytree(
            meter, prefix / "share" / "jupyter" / "labextensions" / "@allotment" / "meter"
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
