"""A real JupyterHub process for tests, with Allotment's custom scopes and roles.

Users are granted ``custom:allotment:read``, ``submit`` and ``manage`` by the default
``user`` role; ``hubadmin`` also holds ``custom:allotment:admin``. A harness service with the
``tokens`` scope issues tokens for any user with any subset of their scopes.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

SCOPES = {
    "custom:allotment:read": "Read your own Allotment workloads, accounts and usage.",
    "custom:allotment:submit": "Submit and cancel your own Allotment workloads.",
    "custom:allotment:manage": "Administer the Allotment accounts you manage.",
    "custom:allotment:admin": "Administer all of Allotment.",
    "custom:allotment:spawn": "Act for hub users (the spawner).",
    "custom:allotment:metrics": "Scrape Allotment's metrics.",
}


#: A hub user (when the hub has one so named) whose role grants custom:allotment:metrics.
METRICS_USER = "scraper"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hub:
    def __init__(
        self,
        workdir: Path,
        users: list[str],
        admins: list[str],
        services: list[dict[str, object]] | None = None,
    ) -> None:
        self.workdir = workdir
        #: Extra entries of ``c.JupyterHub.services`` (hub-managed services).
        self.services = services or []
        self.users = users
        self.admins = admins
        self.port = free_port()
        self.hub_port = free_port()
        self.harness_token = secrets.token_hex(32)
        #: Token of a service holding custom:allotment:spawn, like the hub's spawner.
        self.spawner_token = secrets.token_hex(32)
        #: Token of a service with no Allotment scope.
        self.other_service_token = secrets.token_hex(32)
        #: Token of a service holding custom:allotment:metrics, like a Prometheus scraper.
        self.metrics_token = secrets.token_hex(32)
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        support = str(Path(__file__).parent.parent.parent)
        return textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {support!r})
            c = get_config()  # noqa
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
            c.JupyterHub.pid_file = "{self.workdir}/jupyterhub.pid"
            c.JupyterHub.proxy_class = "tests.support.null_proxy.NullProxy"
            c.JupyterHub.authenticator_class = "dummy"
            c.JupyterHub.cleanup_servers = False
            c.JupyterHub.custom_scopes = {{
                name: {{"description": text}} for name, text in {SCOPES!r}.items()
            }}
            c.JupyterHub.load_roles = [
                {{"name": "user", "scopes": ["self", "custom:allotment:read",
                  "custom:allotment:submit", "custom:allotment:manage"]}},
                {{"name": "allotment-admin", "scopes": ["custom:allotment:admin"],
                  "users": {self.admins!r}}},
                {{"name": "harness", "scopes": ["admin:users", "tokens"],
                  "services": ["harness"]}},
                {{"name": "spawner", "scopes": ["custom:allotment:spawn"],
                  "services": ["spawner"]}},
                {{"name": "metrics", "scopes": ["custom:allotment:metrics"],
                  "services": ["metrics"],
                  "users": {[u for u in self.users if u == METRICS_USER]!r}}},
            ]
            c.JupyterHub.services = [
                {{"name": "harness", "api_token": "{self.harness_token}"}},
                {{"name": "spawner", "api_token": "{self.spawner_token}"}},
                {{"name": "other", "api_token": "{self.other_service_token}"}},
                {{"name": "metrics", "api_token": "{self.metrics_token}"}},
            ] + {self.services!r}
            c.Authenticator.allowed_users = set({self.users!r})
            """
        )

    def start(self) -> None:
        cfg = self.workdir / "jupyterhub_config.py"
        cfg.write_text(self._config())
        log = open(self.workdir / "jupyterhub.log", "wb")  # noqa: SIM115 - closed with the process
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(cfg)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop() reaps managed services too
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("JupyterHub exited:\n" + self.log_tail())
            try:
                r = httpx.get(self.api_url + "/", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("JupyterHub did not start in 60 s:\n" + self.log_tail())
        # The API answers before the hub installs its signal handlers; a SIGTERM before then
        # kills it without stopping its managed services.
        while "JupyterHub is now running" not in self.log_tail(100_000):
            if time.monotonic() > deadline:
                raise RuntimeError("JupyterHub did not finish starting:\n" + self.log_tail())
            time.sleep(0.1)
        r = self._api("POST", "/users", json={"usernames": self.users})
        assert r.status_code in (201, 409), r.text

    def log_tail(self, chars: int = 4000) -> str:
        return (self.workdir / "jupyterhub.log").read_text(errors="replace")[-chars:]

    def _api(self, method: str, path: str, **kw: object) -> httpx.Response:
        return httpx.request(
            method,
            self.api_url + path,
            headers={"Authorization": f"token {self.harness_token}"},
            timeout=30,
            **kw,  # type: ignore[arg-type]
        )

    def token(self, user: str, scopes: list[str] | None = None) -> str:
        """A new API token of ``user`` limited to ``scopes`` (default: all the user has)."""
        body: dict[str, object] = {"note": "allotment tests", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        r = self._api("POST", f"/users/{user}/tokens", json=body)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["token"])

    def revoke_all(self, user: str) -> None:
        r = self._api("GET", f"/users/{user}/tokens")
        for t in r.json()["api_tokens"]:
            self._api("DELETE", f"/users/{user}/tokens/{t['id']}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:  # anything the hub left behind in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
