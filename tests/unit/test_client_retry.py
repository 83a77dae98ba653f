"""The client retries calls that are safe to repeat while the service is unavailable, says
so once, and gives up with what happened (``allotment.client.Retry``). The service is an
``httpx.MockTransport`` here; tests/integration/test_outage_service.py stops a real
PostgreSQL under a real `allot serve`."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from allotment.client import AllotmentClient, ApiError, AsyncAllotmentClient, Retry
from allotment.schemas import WorkloadCreate

FAST = Retry(seconds=1.0, first=0.01, most=0.05)
UNAVAILABLE = {
    "type": "about:blank",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "The database is unavailable: connection refused. Try again in 5 s; "
    "nothing Allotment acknowledged before is lost.",
}
WORKLOAD = {
    "id": 7,
    "kind": "job",
    "name": "x",
    "user": "alice",
    "account": "lab-a",
    "pool": "workstation",
    "status": "pending",
    "target": "running",
    "reason": "waiting",
    "profile": None,
    "cpus": 1.0,
    "memory": 2**30,
    "gpus": {},
    "command": ["true"],
    "max_runtime": None,
    "created_at": "2026-12-02T08:00:00Z",
    "updated_at": "2026-12-02T08:00:00Z",
}


class Service:
    """Answers ``failures`` times with ``failure`` (a status, or an error raised), then
    with ``body``; records every request."""

    def __init__(self, failures: int, failure: int | Exception = 503, body: object = None):
        self.failures = failures
        self.failure = failure
        self.body = body if body is not None else {"items": [], "next_cursor": None}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            if isinstance(self.failure, Exception):
                raise self.failure
            return httpx.Response(self.failure, json=UNAVAILABLE, headers={"Retry-After": "0"})
        return httpx.Response(200, json=self.body)


def client(service: Service, retry: Retry = FAST, **kw: object) -> AllotmentClient:
    return AllotmentClient(
        "http://allotment.test/", "t", transport=httpx.MockTransport(service), retry=retry, **kw
    )  # type: ignore[arg-type]


def test_a_read_is_retried_until_the_service_answers_and_says_so_once() -> None:
    told: list[tuple[str, float]] = []
    service = Service(failures=3)
    with client(service, on_retry=lambda why, s: told.append((why, s))) as c:
        assert c.pools() == []
    assert len(service.requests) == 4
    assert told == [("the database is unavailable: connection refused", 1.0)]


def test_a_submission_carries_its_key_on_every_try() -> None:
    service = Service(failures=2, body=WORKLOAD)
    with client(service) as c:
        w = c.create_workload(WorkloadCreate(command=["true"]), idempotency_key="run-42")
    assert w.id == 7
    assert [r.headers["Idempotency-Key"] for r in service.requests] == ["run-42"] * 3


def test_a_submission_without_a_key_is_not_sent_twice() -> None:
    service = Service(failures=1, body=WORKLOAD)
    with client(service) as c, pytest.raises(ApiError) as e:
        c.create_workload(WorkloadCreate(command=["true"]))
    assert len(service.requests) == 1
    assert e.value.status == 503


def test_a_cancel_is_retried_cancelling_twice_is_cancelling_once() -> None:
    service = Service(failures=1, body=WORKLOAD)
    with client(service) as c:
        assert c.cancel(7).id == 7
    assert len(service.requests) == 2


def test_a_refused_connection_is_retried_for_any_call_nothing_was_sent() -> None:
    service = Service(failures=2, failure=httpx.ConnectError("refused"), body=WORKLOAD)
    with client(service) as c:
        assert c.create_workload(WorkloadCreate(command=["true"])).id == 7
    assert len(service.requests) == 3


def test_a_lost_answer_to_a_post_without_a_key_is_not_retried() -> None:
    service = Service(failures=1, failure=httpx.ReadError("reset"), body=WORKLOAD)
    with client(service) as c, pytest.raises(ApiError) as e:
        c.create_workload(WorkloadCreate(command=["true"]))
    assert len(service.requests) == 1
    assert "Cannot reach Allotment" in str(e.value)


def test_it_gives_up_at_the_deadline_saying_what_happened() -> None:
    service = Service(failures=10**6)
    started = time.monotonic()
    with client(service, Retry(seconds=0.3, first=0.01, most=0.05)) as c:
        with pytest.raises(ApiError) as e:
            c.pools()
    assert 0.3 <= time.monotonic() - started < 2
    assert e.value.status == 503
    message = str(e.value)
    assert message.startswith(
        "The Allotment service answered 503: the database is unavailable: connection refused; "
        "tried "
    ), message
    assert message.endswith(" s."), message
    assert len(service.requests) > 3


def test_retry_after_is_honoured() -> None:
    waits: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        waits.append(time.monotonic())
        if len(waits) == 1:
            return httpx.Response(503, json=UNAVAILABLE, headers={"Retry-After": "1"})
        return httpx.Response(200, json={"items": [], "next_cursor": None})

    with AllotmentClient("http://allotment.test/", "t", transport=httpx.MockTransport(answer)) as c:
        c.pools()
    assert waits[1] - waits[0] >= 0.95


def test_other_errors_are_not_retried() -> None:
    service = Service(failures=1, failure=404)
    with client(service) as c, pytest.raises(ApiError):
        c.pools()
    assert len(service.requests) == 1


def test_no_retries_when_asked_for_none() -> None:
    service = Service(failures=1)
    with client(service, Retry(seconds=0)) as c, pytest.raises(ApiError) as e:
        c.pools()
    assert len(service.requests) == 1
    assert "tried" not in str(e.value)


def test_the_async_client_retries_the_same_way() -> None:
    told: list[str] = []
    service = Service(failures=2, body=WORKLOAD)

    async def main() -> int:
        async with AsyncAllotmentClient(
            "http://allotment.test/",
            "t",
            transport=httpx.MockTransport(service),
            retry=FAST,
            on_retry=lambda why, _s: told.append(why),
        ) as c:
            w = await c.create_workload(WorkloadCreate(command=["true"]), idempotency_key="k")
            return w.id

    assert asyncio.run(main()) == 7
    assert len(service.requests) == 3
    assert told == ["the database is unavailable: connection refused"]
