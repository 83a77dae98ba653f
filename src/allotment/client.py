"""Typed HTTP client of the Allotment API: the only way the CLI, the hub and Dask reach it.

It needs only httpx and pydantic, holds no database credentials, and works with any
JupyterHub token: inside a session ``$JUPYTERHUB_API_TOKEN`` is enough.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from allotment.schemas import (
    AccountArchived,
    AccountCreate,
    AccountOut,
    AccountPatch,
    ApplyResult,
    AuditOut,
    BudgetIn,
    BudgetOut,
    DaskAdapt,
    DaskClusterCreate,
    DaskClusterOut,
    DaskCredentials,
    DaskScale,
    Me,
    MembershipOut,
    Page,
    PolicyIn,
    PoolOut,
    Problem,
    ProfileOut,
    QuoteOut,
    UsageReportOut,
    WorkloadCreate,
    WorkloadOut,
)

__all__ = [
    "DEFAULT_URL",
    "AllotmentClient",
    "ApiError",
    "AsyncAllotmentClient",
    "Retry",
    "discover",
    "search_path",
]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

#: Where ``allot serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8750/services/allotment/"


class ApiError(Exception):
    """The service answered with a problem; ``str()`` is its message for the researcher."""

    def __init__(self, problem: Problem, *, retried: bool = False) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        #: The answer came to a call sent more than once: an earlier try may have done what
        #: was asked before its answer was lost (a cancel then meets "already stopping").
        self.retried = retried

    @property
    def status(self) -> int:
        return self.problem.status


def search_path(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The data directories ``discover`` looks in for a local service's admin token, as the
    CLI does: ``$ALLOTMENT_DATA_DIR``, then each of ``$ALLOTMENT_SEARCH_PATH``
    (``:``-separated; set and empty: none more) or, where that is not set, the standard places
    of ``allot serve`` and of ``allot up``'s service (for this user, then as root)."""
    env = os.environ if environ is None else environ
    data_dir = env.get("ALLOTMENT_DATA_DIR")
    found = [Path(data_dir)] if data_dir else []
    if "ALLOTMENT_SEARCH_PATH" in env:
        return found + [Path(d) for d in env["ALLOTMENT_SEARCH_PATH"].split(":") if d]
    return found + [
        Path.home() / ".local/share/allotment",
        Path("/var/lib/allotment-service"),
        # The service of `allot up`:
        Path.home() / ".local/share/allotment-hub/service",
        Path("/var/lib/allotment/service"),
    ]


def discover(
    search: Sequence[Path], environ: Mapping[str, str] | None = None
) -> tuple[str, str | None]:
    """The service URL and a token, from the environment, else from a local service.

    URL: ``$ALLOTMENT_URL``, else the default of ``allot serve``. Token: ``$ALLOTMENT_TOKEN``,
    else ``$JUPYTERHUB_API_TOKEN`` (set inside every JupyterHub session), else the admin token
    file of the first data directory in ``search`` that has a readable one. Where to look is
    the caller's to say (the CLI passes ``search_path()``; a test passes its own directories,
    or none), so that nothing finds the token of an installation it was not meant to reach.
    """
    env = os.environ if environ is None else environ
    url = env.get("ALLOTMENT_URL") or DEFAULT_URL
    token = env.get("ALLOTMENT_TOKEN") or env.get("JUPYTERHUB_API_TOKEN")
    if not token:
        for d in search:
            try:
                token = (d / "admin-token").read_text().strip()
                break
            except OSError:
                continue
    return url, token


def _unreachable(base: httpx.URL, e: Exception) -> ApiError:
    return ApiError(
        Problem(
            title="Cannot reach Allotment",
            status=0,
            detail=f"Cannot reach Allotment at {base}: {e}. "
            "Is the service running, and is $ALLOTMENT_URL right?",
        )
    )


def _problem(r: httpx.Response) -> Problem:
    try:
        return Problem.model_validate(r.json())
    except (ValueError, ValidationError):
        return Problem(title=r.reason_phrase, status=r.status_code, detail=r.text[:500])


def _checked(r: httpx.Response) -> httpx.Response:
    """``r``, or its problem raised as ``ApiError``."""
    if r.status_code >= 400:
        raise ApiError(_problem(r))
    return r


# -- retrying while the service is unavailable ----------------------------------------------

#: Answers that say "not now": the service's database is unavailable (503), or a proxy in
#: front of it (JupyterHub's) found it down or slow (502, 504).
RETRY_STATUSES = frozenset({502, 503, 504})

#: Methods that do the same however often they are sent.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class Retry:
    """How a call is retried while the service is unavailable.

    Retried: an answer of 502, 503 or 504 and a lost connection, for calls that are safe to
    send again: ``GET``, ``HEAD``, ``PUT``, ``DELETE``, a call that carries an
    ``Idempotency-Key`` (creating a workload), and cancelling (cancelling twice is cancelling
    once); a connection refused, for every call (nothing was sent). Never retried: any other
    answer, and a ``POST`` without a key whose connection was lost after it was sent.
    """

    #: How long a call is tried in all, in seconds; 0: once only.
    seconds: float = 30.0
    #: The first wait; each next one doubles, up to ``most`` (``Retry-After`` wins when given).
    first: float = 0.5
    most: float = 5.0


#: How far a wait between tries is spread (a fraction of it), see ``_Attempts.wait``.
JITTER = 0.2

#: Told, once per outage, why the client waits and for how long at most: (reason, seconds).
OnRetry = Callable[[str, float], None]


def _reason(r: httpx.Response) -> str:
    """The first sentence of a "not now" answer: what is wrong."""
    if r.status_code == 503:
        detail = _problem(r).detail
        first = detail.split(". ", 1)[0].rstrip(".")
        if first:
            return first[:1].lower() + first[1:]
    return f"HTTP {r.status_code} {r.reason_phrase}"


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(float(r.headers["Retry-After"]), 0.0)
    except (KeyError, ValueError):
        return None


class _Attempts:
    """The tries of one call: whether and how long to wait before the next, and the error
    that says what happened when the time is up."""

    def __init__(self, policy: Retry, tell: Callable[[str], None]) -> None:
        self.policy = policy
        self.tell = tell
        self.started = time.monotonic()
        self.tries = 1

    def wait(self, reason: str, retry_after: float | None = None) -> float | None:
        """Seconds to wait before trying again, or None: give up.

        Jittered (``JITTER``), so that the clients one outage stopped together do not all
        come back in the same instant and meet the recovering service at once: ±20 % around
        the backoff, and up to 20 % past a ``Retry-After`` (the service's least wait)."""
        left = self.started + self.policy.seconds - time.monotonic()
        if left <= 0:
            return None
        if retry_after is not None:
            wanted = retry_after * random.uniform(1.0, 1.0 + JITTER)
        else:
            backoff = min(self.policy.first * 2 ** (self.tries - 1), self.policy.most)
            wanted = backoff * random.uniform(1.0 - JITTER, 1.0 + JITTER)
        # The last try comes at the deadline, however long the service asked for.
        wait = min(wanted, left)
        if self.tries == 1:
            self.tell(reason)
        self.tries += 1
        return wait

    def gave_up(self, error: ApiError, reason: str) -> ApiError:
        if self.tries == 1:
            return error
        took = time.monotonic() - self.started
        p = error.problem
        if p.status:
            detail = f"The Allotment service answered {p.status}: {reason}"
        else:
            detail = p.detail.rstrip(".")
        return ApiError(
            p.model_copy(
                update={"detail": f"{detail}; tried {self.tries} times over {took:.0f} s."}
            )
        )


def _safe(method: str, kwargs: Mapping[str, Any], idempotent: bool) -> bool:
    headers = kwargs.get("headers") or {}
    return idempotent or method.upper() in IDEMPOTENT or "Idempotency-Key" in headers


class _Retrying:
    """What both clients share: the policy, and telling the caller once per outage."""

    def __init__(self, retry: Retry | None, on_retry: OnRetry | None) -> None:
        self.retry = retry or Retry()
        self.on_retry = on_retry
        self._told = False

    def _attempts(self) -> _Attempts:
        return _Attempts(self.retry, self._tell)

    def _tell(self, reason: str) -> None:
        if not self._told and self.on_retry is not None:
            self.on_retry(reason, self.retry.seconds)
        self._told = True

    def _answered(self) -> None:
        self._told = False

    def _next(
        self,
        attempts: _Attempts,
        base: httpx.URL,
        method: str,
        safe: bool,
        answer: httpx.Response | httpx.HTTPError,
    ) -> float | httpx.Response:
        """Seconds to wait before the next try, or the response to return; raises
        ``ApiError`` when the call failed for good. A retried ``DELETE`` that finds nothing
        (404) succeeded: an earlier try whose answer was lost did it."""
        if isinstance(answer, httpx.HTTPError):
            reason = f"cannot reach it: {answer}"
            if safe or isinstance(answer, httpx.ConnectError):
                wait = attempts.wait(reason)
                if wait is not None:
                    return wait
            raise attempts.gave_up(_unreachable(base, answer), reason)
        if answer.status_code in RETRY_STATUSES and safe:
            reason = _reason(answer)
            wait = attempts.wait(reason, _retry_after(answer))
            if wait is not None:
                return wait
            raise attempts.gave_up(ApiError(_problem(answer)), reason)
        self._answered()
        if attempts.tries > 1 and method.upper() == "DELETE" and answer.status_code == 404:
            # An earlier try deleted it and its answer was lost: what was asked is done.
            return httpx.Response(204, request=answer.request)
        if answer.status_code >= 400:
            raise ApiError(_problem(answer), retried=attempts.tries > 1)
        return answer


def _may_have_cancelled(e: ApiError) -> bool:
    """A cancel answered 409 ("already stopping") after an earlier try whose answer was lost:
    that try may be what stopped it."""
    return e.status == 409 and e.retried


def _cancelled_already(w: WorkloadOut, conflict: ApiError) -> WorkloadOut:
    """``w`` when it was cancelled (by the earlier try, or by someone else: either way what
    was asked is done); else the conflict (it ended on its own, or was stopped otherwise)."""
    if w.reason.startswith("cancelled by"):
        return w
    raise conflict


def _dask_path(name: str, action: str = "") -> str:
    """A cluster's URL path (its name percent-encoded: the API says what is wrong with it)."""
    return f"dask/clusters/{quote(name, safe='')}" + (f"/{action}" if action else "")


def _dask_params(ended: bool, user: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"ended": "true"} if ended else {}
    if user is not None:
        params["user"] = user
    return params


def _dask_clusters(data: Any) -> list[DaskClusterOut]:
    """Clusters from a list, or from one page of them."""
    items = data["items"] if isinstance(data, dict) else data
    return [DaskClusterOut.model_validate(c) for c in items or []]


def _headers(token: str | None, acting_for: str | None) -> dict[str, str]:
    headers = {"Authorization": f"token {token}"} if token else {}
    if acting_for is not None:
        # Percent-encoded UTF-8: a header carries Latin-1 only, a hub name may hold any letter.
        headers["X-Allotment-User"] = quote(acting_for, safe="")
    return headers


class AllotmentClient:
    """Blocking client. Each method maps to one API call and returns typed models.

    Parameters
    ----------
    url
        Base URL of the service, e.g. ``https://hub.example.org/services/allotment/``.
    token
        A JupyterHub API token (or an Allotment admin token).
    transport
        An httpx transport; tests pass ``httpx.ASGITransport`` or ``httpx.MockTransport``.
    retry
        How long calls are retried while the service is unavailable (``Retry``: 30 s).
    on_retry
        Told once per outage why calls wait, and for how long at most (the CLI prints it).
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self._retrying = _Retrying(retry, on_retry)
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/api/",
            headers=_headers(token, None),
            transport=transport,
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AllotmentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._request(method, path, **kwargs)
        return r.json() if r.content else None

    def _request(
        self, method: str, path: str, *, idempotent: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """The response to a call; a problem (or no answer) raised as ``ApiError``, after
        retrying for a while where that is safe (``Retry``)."""
        safe = _safe(method, kwargs, idempotent)
        attempts = self._retrying._attempts()
        while True:
            answer: httpx.Response | httpx.HTTPError
            try:
                answer = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as e:
                answer = e
            step = self._retrying._next(attempts, self._http.base_url, method, safe, answer)
            if isinstance(step, httpx.Response):
                return step
            time.sleep(step)

    def _get(self, adapter: TypeAdapter[T], path: str, **kwargs: Any) -> T:
        return adapter.validate_python(self._call("GET", path, **kwargs))

    # -- identity -----------------------------------------------------------------------

    def me(self) -> Me:
        return Me.model_validate(self._call("GET", "me"))

    # -- accounts -----------------------------------------------------------------------

    def accounts(self, *, under: str | None = None, archived: bool = False) -> list[AccountOut]:
        """Every account you can see, in tree order (all pages)."""
        return list(
            self._pages(
                AccountOut, "accounts", {"under": under, "archived": archived, "limit": 1000}
            )
        )

    def members(self, account: str) -> list[MembershipOut]:
        return list(self._pages(MembershipOut, f"accounts/{account}/members", {"limit": 1000}))

    def create_account(self, request: AccountCreate) -> AccountOut:
        """A sub-account (a manager of the parent, or above)."""
        data = self._call("POST", "accounts", json=request.model_dump(exclude_none=True))
        return AccountOut.model_validate(data)

    def archive_account(self, account: str) -> AccountArchived:
        return AccountArchived.model_validate(self._call("DELETE", f"accounts/{account}"))

    def update_account(self, account: str, change: AccountPatch) -> AccountOut:
        data = self._call("PATCH", f"accounts/{account}", json=change.model_dump(exclude_none=True))
        return AccountOut.model_validate(data)

    def set_member(self, account: str, user: str, role: str) -> MembershipOut:
        """Add ``user`` to ``account`` with ``role``, or change their role."""
        data = self._call(
            "PUT", f"accounts/{account}/members/{quote(user, safe='')}", json={"role": role}
        )
        return MembershipOut.model_validate(data)

    def remove_member(self, account: str, user: str) -> None:
        self._call("DELETE", f"accounts/{account}/members/{quote(user, safe='')}")

    def audit(self, *, account: str | None = None, limit: int | None = 50) -> list[AuditOut]:
        """Audit entries you may read, newest first; ``limit=None`` fetches every page."""
        params: dict[str, Any] = {"account": account, "limit": min(limit or 1000, 1000)}
        out: list[AuditOut] = []
        for e in self._pages(AuditOut, "audit", params):
            out.append(e)
            if limit is not None and len(out) >= limit:
                break
        return out

    # -- catalogue ----------------------------------------------------------------------

    def pools(self) -> list[PoolOut]:
        """Every active pool (all pages)."""
        return list(self._pages(PoolOut, "pools", {"limit": 1000}))

    def profiles(self) -> list[ProfileOut]:
        """The profiles you may launch (all pages)."""
        return list(self._pages(ProfileOut, "profiles", {"limit": 1000}))

    # -- workloads ----------------------------------------------------------------------

    def create_workload(
        self, request: WorkloadCreate, *, idempotency_key: str | None = None
    ) -> WorkloadOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = self._call(
            "POST", "workloads", json=request.model_dump(exclude_none=True), headers=headers
        )
        return WorkloadOut.model_validate(data)

    def workload(self, workload_id: int) -> WorkloadOut:
        return WorkloadOut.model_validate(self._call("GET", f"workloads/{workload_id}"))

    def cancel(self, workload_id: int) -> WorkloadOut:
        """Cancel it; a retried cancel that meets "already stopping" is read back
        (``_cancelled_already``)."""
        try:
            return WorkloadOut.model_validate(
                self._call("POST", f"workloads/{workload_id}/cancel", idempotent=True)
            )
        except ApiError as e:
            if not _may_have_cancelled(e):
                raise
            return _cancelled_already(self.workload(workload_id), e)

    def output(
        self, workload_id: int, *, stream: str = "stdout", offset: int = 0
    ) -> tuple[bytes, int, bool]:
        """A job's output from ``offset``: (bytes, where to continue, whether it has ended)."""
        r = self._request(
            "GET", f"workloads/{workload_id}/output", params={"stream": stream, "offset": offset}
        )
        return (
            r.content,
            int(r.headers.get("X-Next-Offset", offset + len(r.content))),
            r.headers.get("X-Workload-Ended") == "true",
        )

    def workloads(
        self,
        *,
        status: list[str] | None = None,
        account: str | None = None,
        user: str | None = None,
        since: datetime | None = None,
        limit: int | None = 50,
        kind: str | None = None,
        array: int | None = None,
    ) -> list[WorkloadOut]:
        """Workloads you can see, newest first; ``limit=None`` fetches every page."""
        params: dict[str, Any] = {
            "status": status,
            "account": account,
            "user": user,
            "kind": kind,
            "array": array,
            "since": since.isoformat() if since else None,
            "limit": min(limit or 1000, 1000),
        }
        out: list[WorkloadOut] = []
        for w in self._pages(WorkloadOut, "workloads", params):
            out.append(w)
            if limit is not None and len(out) >= limit:
                break
        return out

    def _pages(self, model: type[M], path: str, params: dict[str, Any]) -> Iterator[M]:
        adapter = TypeAdapter(Page[model])  # type: ignore[valid-type]
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            page = adapter.validate_python(self._call("GET", path, params=query))
            yield from page.items
            if not page.next_cursor:
                return
            query["cursor"] = page.next_cursor

    # -- usage --------------------------------------------------------------------------

    def usage(
        self,
        *,
        account: str | None = None,
        user: str | None = None,
        since: str | None = None,
        period: str | None = None,
        by: str = "account",
    ) -> UsageReportOut:
        """A usage report, every page of it: ``since`` ``30d`` or a first day, or ``period``
        ``2026``, ``2026-Q4``, ``2026-12`` or ``2026-12-02`` (neither: the last 30 days),
        grouped ``by`` user, account, profile, pool, day or week."""
        query = {
            k: v
            for k, v in {
                "account": account,
                "user": user,
                "since": since,
                "period": period,
                "by": by,
                "limit": 10_000,
            }.items()
            if v is not None
        }
        report = UsageReportOut.model_validate(self._call("GET", "usage", params=query))
        items = list(report.items)
        while report.next_cursor:
            query["cursor"] = report.next_cursor
            report = UsageReportOut.model_validate(self._call("GET", "usage", params=query))
            items += report.items
        return report.model_copy(update={"items": items, "next_cursor": None})

    # -- budgets ------------------------------------------------------------------------

    def budgets(self, *, account: str | None = None) -> list[BudgetOut]:
        """The budgets you can see (over ``account`` only, if given), with what each spent
        in its current period."""
        return list(self._pages(BudgetOut, "budgets", {"account": account}))

    def set_budget(self, account: str, budget: BudgetIn, *, pool: str | None = None) -> BudgetOut:
        """Set ``account``'s budget (on ``pool``, or across all pools): a manager of an
        account above it, within what their own has, or an administrator."""
        data = self._call(
            "PUT",
            f"accounts/{account}/budget",
            json=budget.model_dump(exclude_none=True),
            params={"pool": pool} if pool else {},
        )
        return BudgetOut.model_validate(data)

    # -- Dask clusters (allotment.dask.AllotmentCluster, `allot dask`) -----------------------

    def dask_clusters(
        self, *, ended: bool = False, user: str | None = None
    ) -> list[DaskClusterOut]:
        """Your Dask clusters that have not ended (``ended``: those too); an administrator
        may name another ``user``'s."""
        return _dask_clusters(self._call("GET", "dask/clusters", params=_dask_params(ended, user)))

    def create_dask_cluster(
        self, request: DaskClusterCreate, *, idempotency_key: str | None = None
    ) -> DaskClusterOut:
        """A new cluster: its scheduler is queued like any workload (state ``starting``). With
        ``idempotency_key`` a lost answer is retried safely (the same key: the same cluster)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = request.model_dump(exclude_none=True)
        data = self._call("POST", "dask/clusters", json=body, headers=headers)
        return DaskClusterOut.model_validate(data)

    def dask_cluster(self, name: str) -> DaskClusterOut:
        return DaskClusterOut.model_validate(self._call("GET", _dask_path(name)))

    def dask_credentials(self, name: str) -> DaskCredentials:
        """The cluster's own TLS certificate and key, which its clients connect with (its
        owner only). Keep them in memory: never write them where others read."""
        return DaskCredentials.model_validate(self._call("GET", _dask_path(name, "credentials")))

    def scale_dask_cluster(self, name: str, workers: int) -> DaskClusterOut:
        """Ask for ``workers`` workers (ends adaptive scaling)."""
        body = DaskScale(workers=workers).model_dump()
        data = self._call("POST", _dask_path(name, "scale"), json=body, idempotent=True)
        return DaskClusterOut.model_validate(data)

    def adapt_dask_cluster(self, name: str, *, minimum: int = 0, maximum: int) -> DaskClusterOut:
        """Let the scheduler ask for workers as its load needs, within the bounds."""
        body = DaskAdapt(minimum=minimum, maximum=maximum).model_dump()
        data = self._call("POST", _dask_path(name, "adapt"), json=body, idempotent=True)
        return DaskClusterOut.model_validate(data)

    def stop_dask_cluster(self, name: str) -> DaskClusterOut:
        """Stop its workers and its scheduler."""
        data = self._call("POST", _dask_path(name, "stop"), idempotent=True)
        return DaskClusterOut.model_validate(data)

    def dask_heartbeat(self, name: str) -> DaskClusterOut:
        """Tell the service a client of the cluster still lives (``shutdown_on_close``);
        answers the cluster as it is."""
        data = self._call("POST", _dask_path(name, "heartbeat"), idempotent=True)
        return DaskClusterOut.model_validate(data)

    # -- policy -------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        data: dict[str, Any] = self._call("GET", "policy")
        return data

    def apply_policy(self, text: str, filename: str, *, dry_run: bool = False) -> ApplyResult:
        body = PolicyIn(text=text, filename=filename, dry_run=dry_run)
        return ApplyResult.model_validate(self._call("PUT", "policy", json=body.model_dump()))

    def slurm_drift(self) -> dict[str, Any]:
        """Where Slurm differs from the policy in force (``GET policy/slurm``, administrators):
        accounts the mirror would change, conflicts it may not touch, pools unlike ``sinfo``."""
        found: dict[str, Any] = self._call("GET", "policy/slurm")
        return found


class AsyncAllotmentClient:
    """Asynchronous client for code that runs in an event loop (the hub's spawner): the calls
    a session needs. ``acting_for`` names the hub user a service token acts for (it needs
    ``custom:allotment:spawn``)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        acting_for: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self._retrying = _Retrying(retry, on_retry)
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/api/",
            headers=_headers(token, acting_for),
            transport=transport,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAllotmentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self, method: str, path: str, *, idempotent: bool = False, **kwargs: Any
    ) -> Any:
        safe = _safe(method, kwargs, idempotent)
        attempts = self._retrying._attempts()
        while True:
            answer: httpx.Response | httpx.HTTPError
            try:
                answer = await self._http.request(method, path, **kwargs)
            except httpx.HTTPError as e:
                answer = e
            step = self._retrying._next(attempts, self._http.base_url, method, safe, answer)
            if isinstance(step, httpx.Response):
                return step.json() if step.content else None
            await asyncio.sleep(step)

    async def quote(
        self, *, account: str | None = None, profiles: list[str] | None = None
    ) -> QuoteOut:
        params: dict[str, Any] = {}
        if account is not None:
            params["account"] = account
        if profiles:
            params["profile"] = profiles
        return QuoteOut.model_validate(await self._call("GET", "quote", params=params))

    async def create_workload(
        self, request: WorkloadCreate, *, idempotency_key: str | None = None
    ) -> WorkloadOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self._call(
            "POST", "workloads", json=request.model_dump(exclude_none=True), headers=headers
        )
        return WorkloadOut.model_validate(data)

    async def workloads(
        self,
        *,
        user: str | None = None,
        kind: str | None = None,
        statuses: list[str] | None = None,
        limit: int = 1000,
    ) -> list[WorkloadOut]:
        """The newest workloads you may see (one page of up to ``limit``)."""
        params: dict[str, Any] = {"limit": limit}
        if user is not None:
            params["user"] = user
        if kind is not None:
            params["kind"] = kind
        if statuses:
            params["status"] = statuses
        page = await self._call("GET", "workloads", params=params)
        return [WorkloadOut.model_validate(w) for w in page["items"]]

    async def workload(self, workload_id: int) -> WorkloadOut:
        return WorkloadOut.model_validate(await self._call("GET", f"workloads/{workload_id}"))

    async def cancel(self, workload_id: int) -> WorkloadOut:
        """Cancel it; a retried cancel that meets "already stopping" is read back
        (``_cancelled_already``)."""
        try:
            return WorkloadOut.model_validate(
                await self._call("POST", f"workloads/{workload_id}/cancel", idempotent=True)
            )
        except ApiError as e:
            if not _may_have_cancelled(e):
                raise
            return _cancelled_already(await self.workload(workload_id), e)

    # -- Dask clusters (allotment.dask.AllotmentCluster, `allot dask`) -----------------------

    async def dask_clusters(
        self, *, ended: bool = False, user: str | None = None
    ) -> list[DaskClusterOut]:
        """Your Dask clusters that have not ended (``ended``: those too); an administrator
        may name another ``user``'s."""
        return _dask_clusters(
            await self._call("GET", "dask/clusters", params=_dask_params(ended, user))
        )

    async def create_dask_cluster(
        self, request: DaskClusterCreate, *, idempotency_key: str | None = None
    ) -> DaskClusterOut:
        """A new cluster: its scheduler is queued like any workload (state ``starting``). With
        ``idempotency_key`` a lost answer is retried safely (the same key: the same cluster)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = request.model_dump(exclude_none=True)
        data = await self._call("POST", "dask/clusters", json=body, headers=headers)
        return DaskClusterOut.model_validate(data)

    async def dask_cluster(self, name: str) -> DaskClusterOut:
        return DaskClusterOut.model_validate(await self._call("GET", _dask_path(name)))

    async def dask_credentials(self, name: str) -> DaskCredentials:
        """The cluster's own TLS certificate and key, which its clients connect with (its
        owner only). Keep them in memory: never write them where others read."""
        return DaskCredentials.model_validate(
            await self._call("GET", _dask_path(name, "credentials"))
        )

    async def scale_dask_cluster(self, name: str, workers: int) -> DaskClusterOut:
        """Ask for ``workers`` workers (ends adaptive scaling)."""
        body = DaskScale(workers=workers).model_dump()
        data = await self._call("POST", _dask_path(name, "scale"), json=body, idempotent=True)
        return DaskClusterOut.model_validate(data)

    async def adapt_dask_cluster(
        self, name: str, *, minimum: int = 0, maximum: int
    ) -> DaskClusterOut:
        """Let the scheduler ask for workers as its load needs, within the bounds."""
        body = DaskAdapt(minimum=minimum, maximum=maximum).model_dump()
        data = await self._call("POST", _dask_path(name, "adapt"), json=body, idempotent=True)
        return DaskClusterOut.model_validate(data)

    async def stop_dask_cluster(self, name: str) -> DaskClusterOut:
        """Stop its workers and its scheduler."""
        data = await self._call("POST", _dask_path(name, "stop"), idempotent=True)
        return DaskClusterOut.model_validate(data)

    async def dask_heartbeat(self, name: str) -> DaskClusterOut:
        """Tell the service a client of the cluster still lives (``shutdown_on_close``);
        answers the cluster as it is."""
        data = await self._call("POST", _dask_path(name, "heartbeat"), idempotent=True)
        return DaskClusterOut.model_validate(data)
