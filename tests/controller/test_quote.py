"""The quote before a launch, against what the controller really runs on the fake: free
capacity while the node is idle; a place and an expected start from the ends of what runs."""

from __future__ import annotations

from typing import Any

from tests.controller.conftest import Fast


async def quote(fast: Fast) -> dict[str, Any]:
    async with fast.client() as c:
        r = await c.get("quote", params={"account": "lab", "profile": "small"})
    assert r.status_code == 200, r.text
    (small,) = r.json()["profiles"]
    found: dict[str, Any] = small
    return found


async def test_an_idle_node_starts_now(fast: Fast) -> None:
    q = await quote(fast)
    assert q["starts_now"] and (q["position"], q["wait_seconds"]) == (None, 0)
    assert (q["free_cpus"], q["free_memory"]) == (4.0, 16 * 2**30)


async def test_a_full_node_quotes_the_next_end_of_what_runs(fast: Fast) -> None:
    # Four one-hour jobs fill the node, started 30, 20, 10 and 0 minutes ago.
    for i in range(4):
        if i:
            fast.clock.advance(600)
        await fast.until(await fast.submit(max_runtime="1h"), "running")
    q = await quote(fast)
    assert not q["starts_now"] and q["free_cpus"] == 0
    assert q["position"] == 1
    # The oldest ends at its hour, 30 minutes from now.
    assert q["wait_seconds"] == 30 * 60
