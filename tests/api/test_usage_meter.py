"""Usage reports of what the real meter charged (controller/meter.py), on both databases: over
three days and nights in Berlin, with passes at odd times and workloads ending between them,
every grouping's rows of `GET /usage` equal the ledger's entries plus the open charges, to the
micro."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update

from allotment.controller.meter import Meter
from allotment.db.tables import Account, LedgerEntry, OpenCharge, Profile, User, Workload
from allotment.domain.workloads import WorkloadState
from tests.api.test_usage import POLICY, ZONE, report
from tests.support.service import running_service

#: (user, account, profile, minutes after the first pass it starts, minutes it runs or None)
WORK = [
    ("bob", "lab-a", "small", 0, None),
    ("carol", "proj-y", "small", 7, 1500),
    ("carol", "lab-a", "a100", 95, 2000),
    ("erin", "lab-b", "small", 301, None),
    ("alice", "lab-a", "a100", 1234, 61),
]


async def test_reports_of_what_the_meter_charged_equal_its_ledger(
    database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, tmp_path, policy_text=POLICY) as svc:
        start = datetime(2026, 11, 29, 20, 13, tzinfo=UTC)  # 21:13 in Berlin
        svc.clock._now = start
        db = svc.app.state.allotment.db
        async with svc.admin() as c:
            ids = []
            for _, account, profile, _, _ in WORK:
                r = await c.post(
                    "workloads", json={"profile": profile, "account": account, "command": ["x"]}
                )
                assert r.status_code == 201, r.text
                ids.append(int(r.json()["id"]))
        async with db.read() as s:
            users = {n: i for n, i in await s.execute(select(User.name, User.id))}
        meter = Meter(db, svc.clock, {})
        ends: dict[int, datetime] = {}
        for minute in range(0, 3 * 24 * 60, 37):  # a pass every 37 minutes, for three days
            now = start + timedelta(minutes=minute)
            svc.clock._now = now
            async with db.write() as s:
                for wid, (user, _, _, at, runs) in zip(ids, WORK, strict=True):
                    began = start + timedelta(minutes=at)
                    if at <= minute and wid not in ends:
                        await s.execute(
                            update(Workload)
                            .where(Workload.id == wid, Workload.started_at.is_(None))
                            .values(
                                status=int(WorkloadState.RUNNING),
                                started_at=began,
                                node="n1",
                                user_id=users[user],
                            )
                        )
                    if runs is not None and at + runs <= minute and wid not in ends:
                        ends[wid] = began + timedelta(minutes=runs)
                        await s.execute(
                            update(Workload)
                            .where(Workload.id == wid)
                            .values(status=int(WorkloadState.STOPPED), ended_at=ends[wid])
                        )
            await meter.pass_once()
        async with db.read() as s:
            paths = {i: p for i, p in await s.execute(select(Account.id, Account.path))}
            names = {i: n for n, i in users.items()}
            profiles = {i: n for i, n in await s.execute(select(Profile.id, Profile.name))}
            rows: list[Any] = [
                (e.user_id, e.account_id, e.profile_id, e.start, e.amount)
                for e in (await s.execute(select(LedgerEntry))).scalars()
            ] + [
                (o.user_id, o.account_id, o.profile_id, o.span_start, o.amount)
                for o in (await s.execute(select(OpenCharge).where(~OpenCharge.closed))).scalars()
            ]
        assert len(rows) > 100  # spans of the clock: an entry an hour per workload
        zone = ZoneInfo(ZONE)
        async with svc.admin() as c:
            for by, key in [
                ("user", lambda r: names[r[0]]),
                ("account", lambda r: paths[r[1]]),
                ("profile", lambda r: profiles[r[2]]),
                ("day", lambda r: r[3].astimezone(zone).date().isoformat()),
            ]:
                expected: dict[str, int] = defaultdict(int)
                for r in rows:
                    expected[key(r)] += r[4]
                got = await report(c, period="2026-Q4", by=by)
                assert {i["key"]: i["cost_micros"] for i in got["items"]} == expected, by
                assert got["total"]["cost_micros"] == sum(r[4] for r in rows)
            # Three days and a bit in Berlin: 29 November to 2 December.
            days = (await report(c, period="2026-Q4", by="day"))["items"]
            assert [d["key"] for d in days] == [
                "2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02",
            ]  # fmt: skip
