"""Start-time projection against a brute-force reference: the pruning and the integer profiles
must give exactly the start times that trying every node at every breakpoint gives."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.domain.resources import Resources
from allotment.scheduler import NodeState, Pending
from allotment.scheduler.projection import project
from allotment.scheduler.usage import subtract
from tests.support.builders import cpus, pending

G = 2**30


@dataclass(eq=False)
class _Node:
    spec: NodeState
    free: Resources
    releases: list[tuple[float, Resources]] = field(default_factory=list)


def _reference(
    held: list[Pending], nodes: list[_Node], now: float, in_order: bool
) -> list[float | None]:
    """Every node in order, every breakpoint as a candidate start, the whole window checked."""
    placed: list[list[tuple[float, float, Resources]]] = [[] for _ in nodes]
    last = now
    out: list[float | None] = []

    def free_at(k: int, t: float) -> Resources:
        n = nodes[k]
        free = n.free
        for end, res in n.releases:
            if max(end, now) <= t:
                free = free + res
        for start, end, res in placed[k]:
            if start <= t < end:
                free = subtract(free, res)
        return free

    for p in held:
        best: tuple[float, int] | None = None
        after = last if in_order else now
        for k, n in enumerate(nodes):
            points = {after} | {max(e, now) for e, _ in n.releases}
            points |= {e for _, e, _ in placed[k]} | {s for s, _, _ in placed[k]}
            for t in sorted(x for x in points if x >= after):
                inside = [t] + sorted(x for x in points if t < x < t + p.walltime)
                if all(p.resources.fits_in(free_at(k, x)) for x in inside):
                    if best is None or t < best[0]:
                        best = (t, k)
                    break
        if best is None:
            out.append(None)
            continue
        t, k = best
        placed[k].append((t, t + p.walltime, p.resources))
        out.append(t)
        last = max(last, t)
    return out


sizes = st.sampled_from([(1, 1, 0), (2, 4, 0), (4, 8, 1), (8, 16, 0), (8, 32, 2)])


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Pending], list[_Node], bool]:
    nodes = []
    for i in range(draw(st.integers(1, 4))):
        cap = Resources.of(8, 32 * G, {"a100": 2})
        node = _Node(NodeState("p", f"n{i}", cap), cap)
        for _ in range(draw(st.integers(0, 4))):
            c, m, g = draw(sizes)
            r = Resources.of(c, m * G, {"a100": g})
            if r.fits_in(node.free):
                node.free = subtract(node.free, r)
                node.releases.append((draw(st.sampled_from([0, 50, 100, 150, 300])), r))
        nodes.append(node)
    held = []
    for i in range(draw(st.integers(1, 12))):
        c, m, g = draw(sizes)
        wall = draw(st.sampled_from([10, 50, 100, 200]))
        held.append(pending(i, r=cpus(c, m, {"a100": g}), wall=wall))
    return held, nodes, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(cases())
def test_projection_equals_brute_force(case: tuple[list[Pending], list[_Node], bool]) -> None:
    held, nodes, in_order = case
    want = _reference(held, nodes, 10.0, in_order)
    assert project(held, nodes, 10.0, exact=len(held), in_order=in_order) == want


def test_beyond_the_exact_ones_the_estimate_is_fluid() -> None:
    cap = Resources.of(8, 32 * G)
    node = _Node(NodeState("p", "n0", cap), Resources())
    node.releases.append((100.0, cap))
    held = [pending(i, r=cpus(8)) for i in range(3)]
    # The first is placed exactly after the release; the rest each add a node's worth of work.
    assert project(held, [node], 0.0, exact=1) == [100.0, 200.0, 300.0]
