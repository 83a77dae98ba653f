"""`allot up` run for real on loopback, for browser tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.hub import free_port

CHROMIUM = "/usr/bin/chromium"
#: Chromium on a closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class HubUp:
    data: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def secret(self, name: str) -> str:
        return (self.data / "secrets" / name).read_text().strip()

    @property
    def admin_token(self) -> str:
        return (self.data / "service" / "admin-token").read_text().strip()

    def api(self) -> httpx.Client:
        """The Allotment API through the hub's proxy, as its headless administrator."""
        return httpx.Client(
            base_url=self.url + "/services/allotment/api/",
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=30,
        )

    def log_tail(self, chars: int = 6000) -> str:
        return (self.data / "up.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop the hub, its service and proxy; then every session still running."""
        with self.api() as api:
            for w in api.get(
                "workloads", params={"status": ["pending", "running"], "limit": 1000}
            ).json()["items"]:
                api.post(f"workloads/{w['id']}/cancel")
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_hub(data: Path, policy: Path, *, extra_env: dict[str, str] | None = None) -> HubUp:
    port = free_port()
    log = open(data.parent / f"{data.name}-up.log", "wb")  # noqa: SIM115 - lives with the process
    data.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "allotment", "up",
        "--data-dir", str(data),
        "--config", str(policy),
        "--port", str(port),
        "--hub-port", str(free_port()),
        "--service-port", str(free_port()),
        "--proxy-api-port", str(free_port()),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "ALLOTMENT_"))}
    env.update(extra_env or {})
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    hub = HubUp(data, port, proc)
    os.symlink(log.name, data / "up.log") if not (data / "up.log").exists() else None
    deadline = time.monotonic() + 600  # the first start builds the session environment
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("allot up exited:\n" + hub.log_tail())
        try:
            if httpx.get(hub.url + "/services/allotment/api/health", timeout=2).status_code == 200:
                return hub
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    hub.stop()
    raise RuntimeError("allot up did not start in 10 minutes:\n" + hub.log_tail())
