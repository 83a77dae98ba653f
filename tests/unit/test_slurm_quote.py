"""Slurm's side of the quote, on recorded output of the real commands (Slurm 22.05.8, three
nodes: n1 running a 1-CPU 1500M job, n2 drained, n3 down after its slurmd was killed), and the
cache that keeps the launch forms from asking Slurm more than once per few seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from allotment.backends.slurm.quote import (
    Estimate,
    SlurmQuotes,
    estimate_command,
    free_nodes,
    parse_test_only,
)
from allotment.domain.resources import Resources

RECORDED = Path(__file__).with_name("slurm_quote")
G = 2**30
M = 2**20


def _recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def test_free_resources_are_what_a_new_job_could_get_on_each_node() -> None:
    nodes = free_nodes(_recorded("sinfo-mixed-drained-down.json"), "main")
    assert [(n.name, n.state) for n in nodes] == [
        ("n1", "mixed"),
        ("n2", "idle+drain"),
        ("n3", "down+not_responding"),
    ]
    n1, n2, n3 = nodes
    assert n1.free == Resources.of(1, (4096 - 1500) * M)
    assert n1.total == Resources.of(2, 4 * G)
    # Drained and down nodes offer nothing, whatever their idle CPUs, and say why.
    assert n2.free == Resources() and n2.reason == "disk replaced"
    assert n3.free == Resources() and n3.reason == "Not responding"
    # Another partition: only its nodes.
    assert [n.name for n in free_nodes(_recorded("sinfo-mixed-drained-down.json"), "debug")] == [
        "n1"
    ]
    assert len(free_nodes(_recorded("sinfo-mixed-drained-down.json"), None)) == 3


def test_gpus_free_are_the_gres_not_in_use() -> None:
    text = (
        '{"nodes": [{"name": "g1", "state": "mixed", "state_flags": [], "partitions": ["gpu"],'
        ' "cpus": 8, "idle_cpus": 6, "real_memory": 8192, "alloc_memory": 1024,'
        ' "gres": "gpu:a100:4(S:0-1),gpu:h100:1", "gres_used": "gpu:a100:1(IDX:0),gpu:h100:0"}]}'
    )
    (g1,) = free_nodes(text, "gpu")
    assert g1.free == Resources.of(6, 7 * G, {"a100": 3, "h100": 1})
    assert g1.total.gpus == {"a100": 4, "h100": 1}


def test_the_expected_start_is_read_from_sbatch_test_only() -> None:
    later = parse_test_only(0, _recorded("test-only-later.txt"))
    assert later.refused is None and later.nodes == "n1"
    assert later.start is not None
    assert later.start.replace(tzinfo=None) == datetime(2026, 12, 2, 15, 53, 8)
    assert later.start.tzinfo is not None  # made aware: slurmctld's local time
    now = parse_test_only(0, _recorded("test-only-now.txt"))
    assert now.start is not None and now.nodes == "n1"


def test_a_size_no_node_has_is_refused_in_slurms_words() -> None:
    assert parse_test_only(1, _recorded("test-only-refused.txt")) == Estimate(
        refused="requested node configuration is not available"
    )
    assert parse_test_only(1, _recorded("test-only-nopart.txt")) == Estimate(
        refused="invalid partition name specified"
    )
    assert parse_test_only(124, "").refused == "sbatch --test-only exited with 124"


def test_the_test_only_command_splits_the_size_per_node_like_a_submission() -> None:
    argv = estimate_command(
        "/usr/bin/sbatch",
        partition="main",
        qos="short",
        size=Resources.of(3, 3 * G, {"a100": 2}),
        nodes=2,
        walltime=3601,
    )
    assert argv == [
        "/usr/bin/sbatch", "--test-only", "--nodes", "2", "--ntasks-per-node", "1",
        "--cpus-per-task", "2", "--mem", "1536M", "--gres", "gpu:a100:1",
        "--partition", "main", "--qos", "short", "--time", "61",
        "--output", "/dev/null", "--chdir", "/", "--wrap", "true",
    ]  # fmt: skip
    bare = estimate_command("sbatch", partition=None, qos=None, size=Resources.of(0.5))
    assert "--partition" not in bare and "--time" not in bare and "--mem" not in bare
    assert bare[bare.index("--cpus-per-task") + 1] == "1"


def test_answers_are_cached_and_shared_between_concurrent_askers() -> None:
    calls: list[list[str]] = []
    clock = [0.0]

    async def run(argv: Sequence[str]) -> tuple[int, str, str]:
        calls.append(list(argv))
        await asyncio.sleep(0.01)
        if "--test-only" in argv:
            return 0, "", _recorded("test-only-later.txt")
        return 0, _recorded("sinfo-mixed-drained-down.json"), ""

    quotes = SlurmQuotes(run, ttl=5, clock=lambda: clock[0])

    async def main() -> None:
        size = Resources.of(2, G)
        many = await asyncio.gather(
            *[quotes.nodes("main") for _ in range(5)],
            quotes.nodes("debug"),
            *[quotes.estimate(partition="main", qos=None, size=size) for _ in range(5)],
        )
        assert [len(x) for x in many[:6]] == [3, 3, 3, 3, 3, 1]  # type: ignore[arg-type]
        assert len(calls) == 2  # one sinfo for both partitions, one --test-only
        await quotes.estimate(partition="main", qos=None, size=Resources.of(1, G))
        assert len(calls) == 3  # another size: another estimate
        clock[0] = 6  # stale: asked again
        await quotes.nodes("main")
        assert len(calls) == 4

    asyncio.run(main())


def test_a_failed_sinfo_is_raised_and_not_kept() -> None:
    answers = [(1, "", "slurm_load_partitions: Unable to contact slurm controller")]

    async def run(argv: Sequence[str]) -> tuple[int, str, str]:
        return answers.pop(0) if answers else (0, _recorded("sinfo-mixed-drained-down.json"), "")

    quotes = SlurmQuotes(run, ttl=5, clock=lambda: 0.0)

    async def main() -> None:
        try:
            await quotes.nodes("main")
        except RuntimeError as e:
            assert "Unable to contact slurm controller" in str(e)
        else:
            raise AssertionError("a failed sinfo was taken for an answer")
        assert len(await quotes.nodes("main")) == 3

    asyncio.run(main())
