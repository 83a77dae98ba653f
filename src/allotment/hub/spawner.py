"""AllotmentSpawner: JupyterHub's Spawner contract over Allotment's API.

A session is a workload like any other: the spawner asks the service for one (kind
``session``) and follows it. The scheduler decides when it starts, the controller runs
``jupyterhub-singleuser`` as the user's own account inside its limits, the ledger charges it.
When the machine is full the session waits in the queue (no HTTP 429) and ``progress`` tells
the user their place and expected start. On a pool whose backend places work itself (Slurm)
the session waits in that backend's queue instead, and the page shows the backend's reason and
expected start; the server then runs on whichever node was chosen, listens on that node's
address (``ON_NODE``), and the hub reaches it there (``WorkloadOut.host``). The spawner holds
no database credentials: it
speaks to the service with the token of the ``allotment-spawner`` hub service, which holds
``custom:allotment:spawn`` and acts for the hub user it names.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from traitlets import Dict, Float, Integer, List, Unicode, default

from allotment.client import ApiError, AsyncAllotmentClient
from allotment.domain.quantities import format_while
from allotment.hub.form import render_form
from allotment.schemas import WorkloadCreate, WorkloadOut

__all__ = ["AllotmentSpawner"]

LIVE = ("pending", "admitted", "starting", "running", "stopping")
ENDED = ("stopped", "failed")
FORM_SCOPES = ["custom:allotment:read"]

#: Runs the session's server; on a Slurm node (``SLURMD_NODENAME`` is set in every Slurm job),
#: makes it listen on that node's own address: the ``NodeAddr`` Slurm reports and the hub
#: connects to (``scontrol show node``), else the address the node's name resolves to.
#: Not ``0.0.0.0``: a node's other interfaces (a public one, a storage network) never serve
#: it. Anywhere else the server listens where the spawner says (loopback, for the local
#: backend). Every request still needs the hub's login: the address only narrows who can try.
ON_NODE = (
    'if [ -n "${SLURMD_NODENAME:-}" ]; then '
    'a=$(scontrol show node -o "$SLURMD_NODENAME" 2>/dev/null'
    " | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p'); "
    '[ -n "$a" ] || a=$(hostname -i 2>/dev/null | cut -d" " -f1); '
    '[ -n "$a" ] && exec "$@" --ip="$a"; '
    "fi; "
    'exec "$@"'
)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def waiting_message(w: WorkloadOut, now: float | None = None) -> str:
    """What a queued session tells its user: place, expected start, and why."""
    now = time.time() if now is None else now
    parts = ["Queued"]
    if w.position is not None:
        parts[0] = f"Queued: {_ordinal(w.position)} in line"
    if w.expected_start is not None:
        wait = w.expected_start.timestamp() - now
        at = w.expected_start.astimezone().strftime("%H:%M")
        parts.append(
            f"expected to start at {at} (in {format_while(wait)})" if wait > 30 else "starting soon"
        )
    return ", ".join(parts) + f". {w.reason[:1].upper()}{w.reason[1:]}."


def backend_waiting_message(w: WorkloadOut, now: float | None = None) -> str:
    """What a session waiting in its backend's own queue (Slurm) tells its user: the backend's
    reason, its expected start and place when it gave them."""
    now = time.time() if now is None else now
    text = f"{w.reason[:1].upper()}{w.reason[1:]}".rstrip(".")
    extra = []
    if w.position is not None:
        extra.append(f"{_ordinal(w.position)} in line")
    if w.expected_start is not None:
        wait = w.expected_start.timestamp() - now
        at = w.expected_start.astimezone().strftime("%H:%M")
        extra.append(
            f"expected to start at {at} (in {format_while(wait)})" if wait > 30 else "starting soon"
        )
    return text + (f"; {', '.join(extra)}." if extra else ".")


def queued_in_backend(w: WorkloadOut) -> bool:
    """Accepted by a backend that places work itself, and waiting in its queue: starting, on
    no node yet, with the backend's reason."""
    return w.status in ("admitted", "starting") and not w.node and bool(w.reason)


def _read_by_start(spawner: Spawner, user_options: dict[str, Any]) -> None:
    """JupyterHub's ``apply_user_options`` hook: nothing to do, start() reads them."""


class AllotmentSpawner(Spawner):  # type: ignore[misc]
    """Start each server as an Allotment session: queued, limited, accounted."""

    allotment_url = Unicode(
        os.environ.get("ALLOTMENT_URL", "http://127.0.0.1:8750/services/allotment/"),
        help="Where the hub reaches the Allotment service (its base URL).",
    ).tag(config=True)

    allotment_token = Unicode(
        os.environ.get("ALLOTMENT_SPAWNER_TOKEN", ""),
        help="API token of the hub service that holds custom:allotment:spawn.",
    ).tag(config=True)

    environments = Dict(
        {},
        help="Environment name → prefix (a directory with bin/jupyterhub-singleuser). A "
        "profile's environment picks one; unknown names run `cmd` from the default PATH.",
    ).tag(config=True)

    poll_seconds = Float(
        1.0, help="Longest wait between two looks at a session that has not started yet."
    ).tag(config=True)

    service_wait = Float(
        60.0, help="Seconds a poll waits for an unreachable Allotment service (it may be starting)."
    ).tag(config=True)

    stop_timeout = Integer(
        90, help="Seconds a stop waits for the session to end before giving up."
    ).tag(config=True)

    form_refresh_seconds = Integer(5, help="How often the launch form asks for a fresh quote.").tag(
        config=True
    )

    env_keep: List[str] = List([], help="Nothing of the hub's environment reaches a session.").tag(
        config=True
    )

    workload_id = Integer(0, help="The session's workload (0: none).")
    #: Shown on the spawn page while the client waits for an unavailable service.
    _waiting_for_service: str | None = None
    #: Why the last session ended without being stopped (its node failed…), for the form.
    _ended: str | None = None

    @default("ip")
    def _ip_default(self) -> str:
        return "127.0.0.1"

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        # A session waits in the queue as long as it must; the user can cancel it.
        return 7 * 24 * 3600

    @default("options_form")
    def _options_form_default(self) -> Any:
        return self._render_options_form

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Any:
        # start() reads the options (profile, account) and the service checks them; saying
        # so keeps JupyterHub (5.3+) from logging "Received unhandled user_options" at
        # every spawn.
        return _read_by_start

    # -- the API ----------------------------------------------------------------------------

    def _client(self) -> AsyncAllotmentClient:
        return AsyncAllotmentClient(
            self.allotment_url,
            self.allotment_token,
            acting_for=self.user.name,
            on_retry=self._unavailable,
        )

    def _unavailable(self, reason: str, seconds: float) -> None:
        """The client waits for the service (its calls are retried): say so in the log and
        on the spawn page."""
        self.log.warning(
            "%s: Allotment is unavailable (%s); retrying for up to %g s",
            self._log_name,
            reason,
            seconds,
        )
        self._waiting_for_service = (
            f"Allotment is unavailable ({reason}); trying again for up to {seconds:g} s…"
        )

    # -- the launch form --------------------------------------------------------------------

    def _form_token(self) -> str:
        """A read-only token of this user for the form's live quote (cached until it nears
        expiry; JupyterHub removes expired tokens)."""
        token, expires = getattr(self, "_form_token_cache", ("", 0.0))
        if time.monotonic() > expires:
            token = self.user.new_api_token(
                scopes=FORM_SCOPES, expires_in=3600, note="Allotment launch form (live quote)"
            )
            self._form_token_cache = (token, time.monotonic() + 3000)
        return str(token)

    async def _render_options_form(self, spawner: Spawner) -> str:
        async with self._client() as api:
            quote = await api.quote()
        return render_form(
            quote,
            service_url=urlsplit(self.allotment_url).path,
            token=self._form_token(),
            refresh_seconds=self.form_refresh_seconds,
            notice=self._ended,
        )

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        options = {"profile": (formdata.get("profile") or [""])[0]}
        account = (formdata.get("account") or [""])[0]
        if account:
            options["account"] = account
        return options

    # -- the contract ----------------------------------------------------------------------

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.workload_id = int(state.get("workload") or 0)
        self._ended = state.get("ended") or None

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.workload_id:
            state["workload"] = self.workload_id
        if self._ended:
            # The hub makes a new spawner after a stop: the next form learns why from here.
            state["ended"] = self._ended
        return state

    def clear_state(self) -> None:
        # Why the session was lost outlives it (until the next one starts).
        super().clear_state()
        self.workload_id = 0

    def _command(self, environment: str | None) -> tuple[list[str], str]:
        prefix = self.environments.get(environment or "default")
        path = "/usr/local/bin:/usr/bin:/bin"
        cmd = list(self.cmd)
        if prefix:
            path = f"{prefix}/bin:{path}"
            if cmd and not os.path.isabs(cmd[0]):
                cmd[0] = os.path.join(prefix, "bin", cmd[0])
        return cmd + list(self.get_args()), path

    async def start(self) -> tuple[str, int]:
        self.port = random_port()
        options = dict(self.user_options or {})
        profile = options.get("profile") or None
        env = self.get_env()
        async with self._client() as api:
            environment = None
            if profile:
                _, quote = await asyncio.gather(
                    self._cancel_strays(api),
                    api.quote(account=options.get("account"), profiles=[profile]),
                )
                environment = quote.profiles[0].environment
            else:
                await self._cancel_strays(api)
            cmd, path = self._command(environment)
            cmd = ["/bin/sh", "-c", ON_NODE, "allotment-session", *cmd]
            env["PATH"] = path
            # The session's server asks for its meter there; `allot` inside it finds it too.
            env["ALLOTMENT_URL"] = self.allotment_url
            log = f".allotment-session{'-' + self.name if self.name else ''}.log"
            request = WorkloadCreate(
                kind="session",
                name=self.name or "",
                profile=profile,
                account=options.get("account"),
                command=cmd,
                env=env,
                # In the home directory, appended to by each session of this server.
                stdout=log,
                stderr=log,
            )
            # One spawn has one API token: a retried request finds the session it made.
            key = "session-" + hashlib.sha256(self.api_token.encode()).hexdigest()[:40]
            w = await api.create_workload(request, idempotency_key=key)
            self._waiting_for_service = None
            self.workload_id = w.id
            self._latest = w
            self.log.info("%s: session is workload %s (%s)", self._log_name, w.id, w.status)
            # Admission usually takes milliseconds: look again soon, then less often.
            delay = 0.05
            while w.status != "running":
                if w.status in ENDED or w.target in ("stopping", "stopped"):
                    raise RuntimeError(f"Your session did not start: {w.reason}.")
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, self.poll_seconds)
                w = await api.workload(w.id)
                self._latest = w
                self._waiting_for_service = None
            # On a cluster's node the server listens on the node's address; here otherwise.
            host = w.host or self.ip
            self._ended = None
            await self._wait_until_answering(api, log, host)
        return (host, self.port)

    async def _wait_until_answering(self, api: AsyncAllotmentClient, log: str, host: str) -> None:
        """Return once the server answers HTTP: the hub's own check backs off exponentially
        and would find it up to a second late. Gives up quietly after ``http_timeout`` (the
        hub then reports it); fails at once if the session ends."""
        url = f"http://{host}:{self.port}{self.server.base_url if self.server else '/'}api"
        deadline = time.monotonic() + self.http_timeout
        checked = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    await http.get(url)
                    return
                except httpx.HTTPError:
                    pass
                if time.monotonic() - checked > 1:
                    checked = time.monotonic()
                    w = await api.workload(self.workload_id)
                    self._latest = w
                    if w.status in ENDED:
                        raise RuntimeError(
                            f"Your session ended before JupyterLab answered: {w.reason}. "
                            f"Its log is ~/{log}."
                        )
                await asyncio.sleep(0.05)

    async def _cancel_strays(self, api: AsyncAllotmentClient) -> None:
        """Sessions of this server that the hub lost track of (it was restarted while they
        waited, before it recorded their id): nobody can reach them, so they stop."""
        for w in await api.workloads(user=self.user.name, kind="session", statuses=list(LIVE)):
            if w.name == (self.name or "") and w.id != self.workload_id and w.target == "running":
                self.log.warning("%s: stopping stray session workload %s", self._log_name, w.id)
                try:
                    await api.cancel(w.id)
                except ApiError as e:
                    if e.status not in (404, 409):
                        raise

    async def poll(self) -> int | None:
        if not self.workload_id:
            return 0
        # When the hub (re)starts it polls before its managed services are up: give the
        # service a while to answer before saying anything.
        deadline = time.monotonic() + self.service_wait
        while True:
            try:
                async with self._client() as api:
                    w = await api.workload(self.workload_id)
                break
            except ApiError as e:
                if e.status == 404:
                    return 0
                if e.status != 0 or time.monotonic() > deadline:
                    self.log.warning("%s: cannot ask Allotment about it: %s", self._log_name, e)
                    return None  # not known to have ended: keep it
                await asyncio.sleep(1)
        if w.status in LIVE and w.target == "running":
            return None
        if w.status == "failed" and w.reason:
            # Ended without a stop: lost (its node failed, Slurm cancelled it). Say why on
            # the next launch form; the hub itself only says the server stopped.
            self._ended = f"Your last session ended: {w.reason}."
            self.log.warning("%s: session %s ended: %s", self._log_name, w.id, w.reason)
        return w.exit_code if w.exit_code is not None else 0

    async def stop(self, now: bool = False) -> None:
        if not self.workload_id:
            return
        async with self._client() as api:
            try:
                w = await api.cancel(self.workload_id)
            except ApiError as e:
                if e.status not in (404, 409):
                    raise
                return
            deadline = time.monotonic() + self.stop_timeout
            while w.status not in ENDED and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                w = await api.workload(self.workload_id)

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        shown = ""
        while True:
            w: WorkloadOut | None = getattr(self, "_latest", None)
            waiting: str | None = getattr(self, "_waiting_for_service", None)
            if waiting is not None and waiting != shown:
                shown = waiting
                yield {"progress": 5, "message": waiting}
            elif w is not None and waiting is None:
                if w.status == "pending":
                    message, value = waiting_message(w), 10
                elif queued_in_backend(w):
                    message, value = backend_waiting_message(w), 30
                elif w.status in ("admitted", "starting"):
                    message, value = f"Starting on {w.node or 'its node'}…", 50
                elif w.status == "running":
                    message, value = "Session started; JupyterLab is loading…", 90
                else:
                    return
                if message != shown:
                    shown = message
                    yield {"progress": value, "message": message}
                if w.status == "running":
                    return
            await asyncio.sleep(0.5)
