"""Replay each sample trace under fifo, easy and fairshare, side by side.

Traces (../shared/data/) are from the Parallel Workloads Archive (Feitelson, Tsafrir, Krakov,
JPDC 74(10), 2014): NASA Ames iPSC/860 (donated by Bill Nitzberg), a Lublin–Feitelson
synthetic log, and the LHC Computing Grid (donated by Hui Li; partition 40, its largest, on 400
cores so that jobs queue).

    python -m benchmarks.traces [--out benchmarks/results/traces.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from allotment.sim.metrics import measure
from allotment.sim.replay import replay
from allotment.sim.swf import read_swf
from benchmarks.harness import ROOT, commit, machine

DATA = ROOT.parent / "shared" / "data"
TRACES = [
    ("NASA-iPSC-1993-3.1-cln.swf.gz", None, 128),
    ("lublin_256.swf.gz", None, 256),
    ("LCG.swf.gz", 40, 400),
]


def run() -> dict[str, object]:
    results = []
    for name, partition, cores in TRACES:
        jobs = list(read_swf(DATA / name, partition))
        for policy in ("fifo", "easy", "fairshare"):
            t = time.perf_counter()
            m = measure(replay(jobs, cores, policy))  # type: ignore[arg-type]
            wall = time.perf_counter() - t
            row = {
                "trace": name,
                "partition": partition,
                "cores": cores,
                "policy": policy,
                "replay_wall_s": round(wall, 1),
                **asdict(m),
            }
            results.append(row)
            print(
                f"{name:32} {policy:9} {wall:6.1f} s  util {m.utilisation:.3f}  "
                f"wait mean {m.wait_mean:9.0f} s  bsld {m.bounded_slowdown_mean:9.2f}",
                flush=True,
            )
    return {
        "benchmark": "trace replay through the scheduler",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "target": {"replay_wall_s": 30},
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/traces.json"))
    args = ap.parse_args()
    args.out.write_text(json.dumps(run(), indent=2) + "\n")


if __name__ == "__main__":
    main()
