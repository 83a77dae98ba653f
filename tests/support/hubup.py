"""`allot up` run for real on loopback, for browser tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.hub import free_port
from tests.support.process import command_lines

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
    #: The `allot up` command line and environment, kept for restarts (same ports).
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

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
        return (self.data.parent / f"{self.data.name}-up.log").read_text(errors="replace")[-chars:]

    def launch(self) -> None:
        """Start `allot up` and wait until the hub and the service answer."""
        log = open(self.data.parent / f"{self.data.name}-up.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + 600  # the first start builds the session environment
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("allot up exited:\n" + self.log_tail())
            try:
                r = httpx.get(self.url + "/services/allotment/api/health", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("allot up did not start in 10 minutes:\n" + self.log_tail())

    def halt(self) -> None:
        """Stop the hub, its service and proxy (SIGTERM, as an administrator would); sessions
        run on, in their own process sessions."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The hub runs its service and proxy in sessions of their own; if it was killed before
        # it stopped them, they must not outlive the test.
        for pid in _processes_mentioning(
            str(self.data / "allotment.yaml"), str(self.data / "hub" / "traefik")
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def stop(self) -> None:
        """Stop every session still running, then the hub."""
        try:
            with self.api() as api:
                for w in api.get(
                    "workloads", params={"status": ["pending", "running"], "limit": 1000}
                ).json()["items"]:
                    api.post(f"workloads/{w['id']}/cancel")
        except httpx.HTTPError:
            pass
        self.halt()


def _processes_mentioning(*needles: str) -> list[int]:
    wanted = [n.encode() for n in needles]
    return [pid for pid, cmd in command_lines() if any(n in cmd for n in wanted)]


def start_hub(data: Path, policy: Path, *, extra_env: dict[str, str] | None = None) -> HubUp:
    port = free_port()
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
    hub = HubUp(data, port, args, env)
    hub.launch()
    return hub
