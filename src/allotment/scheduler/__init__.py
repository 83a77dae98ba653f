"""Pure scheduling: a snapshot in, decisions out. See docs/design/0001-scheduler.md."""

from allotment.scheduler.cycle import order_queue, schedule
from allotment.scheduler.decisions import Admit, Decision, Hold, Preempt, Reject
from allotment.scheduler.snapshot import (
    AccountState,
    Allocation,
    BudgetLimit,
    Limits,
    NodeState,
    Pending,
    Running,
    Snapshot,
    Weights,
)

__all__ = [
    "AccountState",
    "Admit",
    "Allocation",
    "BudgetLimit",
    "Decision",
    "Hold",
    "Limits",
    "NodeState",
    "Pending",
    "Preempt",
    "Reject",
    "Running",
    "Snapshot",
    "Weights",
    "order_queue",
    "schedule",
]
