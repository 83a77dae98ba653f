"""A call sent again after its answer was lost may meet what its first try did: a retried
cancel that finds the workload already stopping, a retried DELETE that finds nothing. What was
asked is done, so the client says so rather than failing; and the waits between tries are
spread (jitter), so that clients stopped together by one outage do not return together."""

from __future__ import annotations

import httpx
import pytest

from allotment.client import JITTER, AllotmentClient, ApiError, AsyncAllotmentClient, Retry
from allotment.client import _Attempts as Attempts
from tests.unit.test_client_retry import FAST, WORKLOAD

CONFLICT = {
    "type": "about:blank",
    "title": "Conflict",
    "status": 409,
    "detail": "Workload 7 is already stopping.",
}


class LostFirstAnswer:
    """The first request is done but its answer lost (a reset after it was sent); then
    ``status`` with ``body``; reads of the workload answer ``workload``."""

    def __init__(self, status: int, body: object, workload: dict[str, object]) -> None:
        self.status, self.body, self.workload = status, body, workload
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=self.workload)
        if len([r for r in self.requests if r.method != "GET"]) == 1:
            raise httpx.ReadError("connection reset by peer")
        return httpx.Response(self.status, json=self.body)


CANCELLED = {**WORKLOAD, "status": "running", "target": "stopped", "reason": "cancelled by alice"}
ENDED = {**WORKLOAD, "status": "stopped", "target": "stopped", "reason": "completed"}


def client(service: LostFirstAnswer) -> AllotmentClient:
    return AllotmentClient(
        "http://allotment.test/", "t", transport=httpx.MockTransport(service), retry=FAST
    )


def test_a_retried_cancel_that_finds_it_cancelled_succeeds() -> None:
    service = LostFirstAnswer(409, CONFLICT, CANCELLED)
    with client(service) as c:
        w = c.cancel(7)
    assert w.reason == "cancelled by alice"
    assert [r.method for r in service.requests] == ["POST", "POST", "GET"]


async def test_a_retried_cancel_that_finds_it_cancelled_succeeds_async() -> None:
    service = LostFirstAnswer(409, CONFLICT, CANCELLED)
    async with AsyncAllotmentClient(
        "http://allotment.test/", "t", transport=httpx.MockTransport(service), retry=FAST
    ) as c:
        assert (await c.cancel(7)).reason == "cancelled by alice"


def test_a_retried_cancel_of_a_workload_that_ended_on_its_own_is_still_a_conflict() -> None:
    service = LostFirstAnswer(409, CONFLICT, ENDED)
    with client(service) as c, pytest.raises(ApiError) as e:
        c.cancel(7)
    assert e.value.status == 409
    assert "already stopping" in str(e.value)


def test_a_first_try_conflict_is_not_read_back() -> None:
    service = LostFirstAnswer(409, CONFLICT, CANCELLED)
    service.requests.append(httpx.Request("POST", "http://allotment.test/x"))  # no reset now
    with client(service) as c, pytest.raises(ApiError) as e:
        c.cancel(7)
    assert e.value.status == 409 and not e.value.retried
    assert [r.method for r in service.requests[1:]] == ["POST"]


def test_a_retried_delete_that_finds_nothing_succeeds() -> None:
    service = LostFirstAnswer(404, {"title": "Not Found", "status": 404, "detail": "gone"}, {})
    with client(service) as c:
        r = c._request("DELETE", "accounts/lab-a/members/bob")
    assert r.status_code == 204
    assert [r.method for r in service.requests] == ["DELETE", "DELETE"]


def test_a_delete_that_finds_nothing_at_once_is_not_found() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"title": "Not Found", "status": 404, "detail": "no"})

    with (
        AllotmentClient("http://a.test/", "t", transport=httpx.MockTransport(answer)) as c,
        pytest.raises(ApiError) as e,
    ):
        c._request("DELETE", "accounts/lab-a/members/bob")
    assert e.value.status == 404


def test_waits_between_tries_are_spread() -> None:
    policy = Retry(seconds=3600.0, first=1.0, most=1.0)
    backoffs = [Attempts(policy, lambda _: None).wait("x") for _ in range(200)]
    assert all(b is not None and 1 - JITTER <= b <= 1 + JITTER for b in backoffs)
    assert len(set(backoffs)) > 100
    assert min(backoffs) < 0.9 and max(backoffs) > 1.1  # type: ignore[operator]
    after = [Attempts(policy, lambda _: None).wait("x", 5.0) for _ in range(200)]
    # Never sooner than the service asked.
    assert all(a is not None and 5.0 <= a <= 5.0 * (1 + JITTER) for a in after)
    assert len(set(after)) > 100
