"""What one scheduling cycle decides. Every pending workload gets exactly one decision."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Admit", "Decision", "Hold", "Preempt", "Reject"]


@dataclass(frozen=True, slots=True)
class Admit:
    workload: int
    node: str


@dataclass(frozen=True, slots=True)
class Hold:
    workload: int
    #: Why it waits, for the researcher ("waiting for 2 GPUs (a100) to free up").
    reason: str
    #: 1-based place among the held workloads of its pool.
    position: int
    #: Estimated start, in snapshot time; None when nothing running will ever make room, or
    #: when a budget holds it (money, not capacity, decides).
    eta: float | None


@dataclass(frozen=True, slots=True)
class Preempt:
    #: A running workload that must stop, after ``grace`` seconds' warning.
    victim: int
    #: The workload it makes room for.
    for_workload: int
    grace: float
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    workload: int
    #: Why it can never run, and what would.
    reason: str


Decision = Admit | Hold | Preempt | Reject
