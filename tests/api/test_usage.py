"""Usage reports (`GET /usage`) on both databases: every grouping's rows and total equal the
ledger's entries plus the open charges, to the micro; periods are whole days in the site's
time zone; bad input is explained.

The ledger is seeded directly, as the meter writes it: one entry per charged hour and the
same charge added to that day's totals (``usage_days``); one workload still runs, its
charge so far in an open charge and the day's totals but in no entry yet.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import func, select

from allotment.db.tables import (
    Account,
    LedgerEntry,
    OpenCharge,
    Pool,
    Profile,
    UsageDay,
    User,
)
from tests.support.service import Service, running_service

GIB = 2**30
ZONE = "Europe/Berlin"

POLICY = f"""
currency: EUR
accounting: {{time_zone: {ZONE}, leaderboard: managers}}
accounts:
  physics: {{managers: [dean]}}
  lab-a: {{parent: physics, managers: [alice], members: [bob, carol]}}
  lab-b: {{parent: physics, managers: [dave], members: [erin]}}
  proj-y: {{parent: lab-a, members: [carol], viewers: [frank]}}
pools:
  box:
    nodes: [{{name: n1, cpus: 64, memory: 512G}}]
    rates: {{cpu: 1.0, memory: 0.1}}
  gpu:
    nodes: [{{name: g1, cpus: 32, memory: 256G, gpus: {{a100: 4}}}}]
    rates: {{cpu: 1.0, gpu: {{a100: 3.0}}}}
profiles:
  small: {{pool: box, size: {{cpus: 2, memory: 4G}}}}
  a100: {{pool: gpu, size: {{cpus: 8, memory: 64G, gpus: {{a100: 1}}}}}}
"""

USERS = ["alice", "bob", "carol", "erin", "dean"]
#: Which accounts each user charges.
CHARGES = {
    "alice": ["physics/lab-a"],
    "bob": ["physics/lab-a"],
    "carol": ["physics/lab-a", "physics/lab-a/proj-y"],
    "erin": ["physics/lab-b"],
    "dean": ["physics"],
}


@dataclass(frozen=True)
class Charge:
    """One charged hour of a workload, as a ledger entry and its day's totals hold it."""

    workload: int
    account: str
    user: str
    pool: str | None
    profile: str | None
    start: datetime
    cpus: int
    memory_gib: int
    gpus: int
    used_cpu_seconds: float
    amount: int
    #: Still open: charged so far, in no entry yet.
    open: bool = False

    def key(self, by: str) -> str:
        day = self.start.astimezone(ZoneInfo(ZONE)).date()
        if by == "day":
            return day.isoformat()
        if by == "week":
            year, week, _ = day.isocalendar()
            return f"{year}-W{week:02d}"
        value = {"user": self.user, "account": self.account}.get(by)
        if value is None:
            value = (self.pool or "(no pool)") if by == "pool" else self.profile or "(no profile)"
        return value


def random_charges(rng: random.Random, n: int, first: datetime, days: int) -> list[Charge]:
    out = []
    for i in range(n):
        user = rng.choice(USERS)
        gpu = rng.random() < 0.3
        hour = first + timedelta(hours=rng.randrange(days * 24))
        out.append(
            Charge(
                workload=i + 1,
                account=rng.choice(CHARGES[user]),
                user=user,
                pool="gpu" if gpu else rng.choice(["box", None]),
                profile=("a100" if gpu else rng.choice(["small", None])),
                start=hour,
                cpus=rng.randint(1, 8),
                memory_gib=rng.randint(1, 64),
                gpus=1 if gpu else 0,
                used_cpu_seconds=rng.uniform(0, 3600),
                # Odd micros, so that a sum rounded anywhere shows.
                amount=rng.randrange(1, 9_000_000),
                open=i == n - 1,
            )
        )
    return out


async def seed(service: Service, charges: Iterable[Charge]) -> None:
    """Write the charges as the meter would: entries (or an open charge) and daily totals."""
    zone = ZoneInfo(ZONE)
    async with service.app.state.allotment.db.write() as session:

        async def ids(model: Any, column: Any) -> dict[str, int]:
            return {k: v for k, v in await session.execute(select(column, model.id))}

        accounts = await ids(Account, Account.path)
        users = await ids(User, User.name)
        pools = await ids(Pool, Pool.name)
        profiles = await ids(Profile, Profile.name)
        totals: dict[tuple[date, int, int, int, int], list[float]] = defaultdict(
            lambda: [0, 0.0, 0.0, 0.0, 0.0]
        )
        for c in charges:
            common: dict[str, Any] = dict(
                account_id=accounts[c.account],
                user_id=users[c.user],
                pool_id=pools[c.pool] if c.pool else None,
                profile_id=profiles[c.profile] if c.profile else None,
                source="local",
                millicpus=c.cpus * 1000,
                memory=c.memory_gib * GIB,
                gpus={"a100": c.gpus} if c.gpus else {},
                rate=c.amount,
                amount=c.amount,
                used_cpu_seconds=c.used_cpu_seconds,
            )
            end = c.start + timedelta(hours=1)
            if c.open:
                session.add(
                    OpenCharge(
                        workload_id=c.workload,
                        share=0.1,
                        span_start=c.start,
                        charged_through=end,
                        start_ms=int(c.start.timestamp() * 1000),
                        through_ms=int(end.timestamp() * 1000),
                        gpu_count=c.gpus,
                        closed=False,
                        **common,
                    )
                )
            else:
                session.add(
                    LedgerEntry(
                        key=f"w:{c.workload}:{c.start.isoformat()}",
                        kind="charge",
                        workload_id=c.workload,
                        start=c.start,
                        end=end,
                        created_at=end,
                        note="",
                        **common,
                    )
                )
            t = totals[
                (
                    c.start.astimezone(zone).date(),
                    common["account_id"],
                    common["user_id"],
                    common["pool_id"] or 0,
                    common["profile_id"] or 0,
                )
            ]
            t[0] += c.amount
            t[1] += c.cpus * 3600.0
            t[2] += c.memory_gib * 3600.0
            t[3] += c.gpus * 3600.0
            t[4] += c.used_cpu_seconds
        for (day, account, user, pool, profile), t in totals.items():
            session.add(
                UsageDay(
                    day=day,
                    account_id=account,
                    user_id=user,
                    pool_id=pool,
                    profile_id=profile,
                    amount=int(t[0]),
                    cpu_seconds=t[1],
                    memory_gib_seconds=t[2],
                    gpu_seconds=t[3],
                    share_seconds=0.0,
                    used_cpu_seconds=t[4],
                )
            )


async def report(c: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    """Every page of a report, its items joined."""
    r = await c.get("usage", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    items = list(body["items"])
    while body["next_cursor"]:
        r = await c.get("usage", params={**params, "cursor": body["next_cursor"]})
        assert r.status_code == 200, r.text
        assert r.json()["total"] == body["total"]  # every page carries the whole total
        body = r.json()
        items += body["items"]
    return {**body, "items": items}


def at_noon(service: Service, day: date) -> None:
    service.clock._now = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def test_every_grouping_totals_equal_the_ledger_to_the_cent(
    database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(14)
    charges = random_charges(rng, 400, datetime(2026, 10, 1, tzinfo=UTC), 92)
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        at_noon(service, date(2026, 12, 31))
        await seed(service, charges)
        async with service.app.state.allotment.db.read() as session:
            entries = (await session.execute(select(func.sum(LedgerEntry.amount)))).scalar_one()
            running = (await session.execute(select(func.sum(OpenCharge.amount)))).scalar_one()
        ledger = int(entries) + int(running)
        assert ledger == sum(c.amount for c in charges)
        async with service.admin() as c:
            for by in ("user", "account", "profile", "pool", "day", "week"):
                # Small pages: the pages, joined, are the report.
                got = await report(c, period="2026-Q4", by=by, limit=7)
                assert got["total"]["cost_micros"] == ledger, by
                assert sum(i["cost_micros"] for i in got["items"]) == ledger, by
                # "To the cent": the float in the currency is the micros, exactly divided.
                assert f"{got['total']['cost']:.2f}" == f"{ledger / 1_000_000:.2f}"
                expected: dict[str, int] = defaultdict(int)
                gpu_hours: dict[str, float] = defaultdict(float)
                for ch in charges:
                    expected[ch.key(by)] += ch.amount
                    gpu_hours[ch.key(by)] += ch.gpus
                assert {i["key"]: i["cost_micros"] for i in got["items"]} == expected, by
                assert [i["key"] for i in got["items"]] == sorted(expected), by
                for i in got["items"]:
                    assert abs(i["gpu_hours"] - gpu_hours[i["key"]]) < 1e-9
            got = await report(c, period="2026-Q4", by="account")
            total = got["total"]
            assert abs(total["cpu_hours"] - sum(ch.cpus for ch in charges)) < 1e-6
            assert abs(total["memory_gib_hours"] - sum(ch.memory_gib for ch in charges)) < 1e-6
            used = sum(ch.used_cpu_seconds for ch in charges) / 3600
            assert abs(total["used_cpu_hours"] - used) < 1e-6
            assert abs(total["efficiency"] - used / total["cpu_hours"]) < 1e-9
            # A subtree and a user: the same rule, fewer rows.
            lab_a = await report(c, period="2026", account="lab-a", by="user")
            assert lab_a["account"] == "physics/lab-a"
            assert lab_a["total"]["cost_micros"] == sum(
                ch.amount for ch in charges if ch.account.startswith("physics/lab-a")
            )
            carol = await report(c, period="2026", user="carol", by="account")
            assert {i["key"]: i["cost_micros"] for i in carol["items"]} == {
                a: sum(ch.amount for ch in charges if ch.user == "carol" and ch.account == a)
                for a in CHARGES["carol"]
            }


async def test_periods_are_whole_days_in_the_site_time_zone(
    database_url: str, tmp_path: Path
) -> None:
    # 23:30 UTC on 30 November is 00:30 on 1 December in Berlin: December's.
    late = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    charges = [
        Charge(1, "physics/lab-a", "bob", "box", "small", late, 2, 4, 0, 0.0, 1_000_000),
        Charge(
            2,
            "physics/lab-a",
            "bob",
            "box",
            "small",
            late - timedelta(hours=1),
            2,
            4,
            0,
            0.0,
            2_000_000,
        ),  # fmt: skip
        Charge(
            3,
            "physics/lab-a",
            "bob",
            "box",
            "small",
            datetime(2026, 12, 14, 9, tzinfo=UTC),
            2,
            4,
            0,
            0.0,
            4_000_000,
        ),  # fmt: skip
    ]
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        await seed(service, charges)
        at_noon(service, date(2026, 12, 15))
        async with service.admin() as c:

            async def cost(**params: str) -> int:
                return int((await report(c, **params))["total"]["cost_micros"])

            assert await cost(period="2026-12") == 5_000_000
            assert await cost(period="2026-11") == 2_000_000
            assert await cost(period="2026-12-01") == 1_000_000
            assert await cost(period="2026-Q4") == await cost(period="2026") == 7_000_000
            assert await cost(since="2d") == 4_000_000  # 14 and 15 December
            assert await cost(since="15d") == 5_000_000  # from 1 December
            assert await cost(since="2026-11-30") == 7_000_000
            assert await cost() == 7_000_000  # the last 30 days
            got = await report(c, since="15d", by="week")
            assert [(i["key"], i["cost_micros"]) for i in got["items"]] == [
                ("2026-W49", 1_000_000),  # Tuesday 1 December
                ("2026-W51", 4_000_000),  # Monday 14 December
            ]
            assert (got["first_day"], got["last_day"], got["time_zone"]) == (
                "2026-12-01",
                "2026-12-15",
                ZONE,
            )


async def test_bad_input_is_explained(database_url: str, tmp_path: Path) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as service:
        async with service.admin() as c:
            for params, words in [
                ({"period": "2026-13"}, ["no month 13", "2026-Q4", "2026-12-02"]),
                ({"period": "2026-Q5"}, ["Q1 to Q4"]),
                ({"period": "last month"}, ["is not a period", "2026-12"]),
                ({"period": "2026-02-30"}, ["day is out of range"]),
                ({"since": "yesterday"}, ["is not a start", "30d"]),
                ({"since": "0d"}, ["1d to"]),
                ({"since": "2099-01-01"}, ["after today"]),
                ({"since": "30d", "period": "2026"}, ["not both"]),
                ({"by": "colour"}, ["by"]),
            ]:
                r = await c.get("usage", params=params)
                assert r.status_code == 422, (params, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                for word in words:
                    assert word in r.json()["detail"], (params, r.json()["detail"])
            r = await c.get("usage", params={"account": "lab-c"})
            assert r.status_code == 404
            assert r.json()["detail"] == "There is no account 'lab-c' that you can see."
            # A user nobody knows has used nothing.
            r = await c.get("usage", params={"user": "nobody"})
            assert r.status_code == 200 and r.json()["items"] == []
