"""The workload lifecycle as data: which moves exist, and the guards derived from them."""

from __future__ import annotations

from allotment.domain.workloads import ACTIVE, TERMINAL, TRANSITIONS, can_move, sources
from allotment.domain.workloads import WorkloadState as S


def test_the_lifecycle_moves_forward_except_a_requeue() -> None:
    backwards = {(s, to) for s, tos in TRANSITIONS.items() for to in tos if to <= s}
    assert backwards == {(S.RUNNING, S.STARTING)}
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert set(TRANSITIONS) == set(S)


def test_every_state_but_an_end_can_end_either_way() -> None:
    for s in (S.PENDING, *ACTIVE):
        assert can_move(s, S.STOPPED) and can_move(s, S.FAILED)
    assert can_move(S.PENDING, S.ADMITTED) and not can_move(S.PENDING, S.RUNNING)
    assert not can_move(S.STOPPED, S.STOPPED)  # staying put is not a move


def test_guards_are_the_states_a_move_comes_from() -> None:
    assert sources(S.ADMITTED) == {S.PENDING}
    assert sources(S.STARTING) == {S.ADMITTED, S.RUNNING}
    assert sources(S.RUNNING) == {S.STARTING}
    assert sources(S.STOPPING) == {S.STARTING, S.RUNNING}
    assert sources(S.PENDING) == set()
    assert sources(S.STOPPED) == sources(S.FAILED) == {S.PENDING, *ACTIVE}
