"""The meter's warnings (``domain/meter.py``), each rule on its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from allotment.domain.meter import WARN_BEFORE, meter_warnings, runtime_end

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


@dataclass(frozen=True)
class Budget:
    account: str = "physics"
    period: str = "month"
    hard_stop: bool = True
    hours_left: float | None = None


def warnings(**given: object) -> list[str]:
    args: dict[str, object] = {
        "running": True,
        "stops_at": None,
        "idle_deadline": None,
        "cull_warning": 10 * MIN,
        "budget": None,
        "blocked": False,
    }
    args.update(given)
    return meter_warnings(NOW, **args)  # type: ignore[arg-type]


def test_nothing_to_say() -> None:
    assert warnings() == []


def test_runtime_end() -> None:
    assert runtime_end(None, 60) is None
    assert runtime_end(NOW, None) is None and runtime_end(NOW, 0) is None
    assert runtime_end(NOW, 90) == NOW + timedelta(seconds=90)


def test_maximum_runtime_warns_within_fifteen_minutes() -> None:
    assert warnings(stops_at=NOW + WARN_BEFORE + MIN) == []
    assert warnings(stops_at=NOW + 12 * MIN) == [
        "Its maximum runtime ends in 12 min: it will be stopped at 09:12 UTC. Save your work."
    ]
    assert warnings(stops_at=NOW + 12 * MIN, running=False) == []


def test_idle_sessions_are_warned_for_cull_warning() -> None:
    assert warnings(idle_deadline=NOW + 11 * MIN) == []
    assert warnings(idle_deadline=NOW + 10 * MIN) == [
        "Unused for a while: it will be stopped at 09:10 UTC unless you use it (run something, "
        "or just open it)."
    ]


def test_budgets() -> None:
    assert warnings(budget=Budget(), blocked=True) == [
        "The budget of physics is spent: new work is held, and running work is stopped "
        "after a grace period unless the budget is raised."
    ]
    assert warnings(budget=Budget(hours_left=0.2)) == [
        "The budget of physics runs out in about 12 min at this rate; then new work is held."
    ]
    assert warnings(budget=Budget(hours_left=1.0)) == []
    assert warnings(budget=Budget(hours_left=None)) == []
    assert warnings(budget=Budget(hard_stop=False), blocked=True) == []
    assert warnings(budget=Budget(), blocked=True, running=False) == []


def test_every_limit_at_once_in_order() -> None:
    said = warnings(
        stops_at=NOW + 5 * MIN, idle_deadline=NOW + 5 * MIN, budget=Budget(), blocked=True
    )
    assert [s.split()[0] for s in said] == ["Its", "Unused", "The"]
