# mypy: disable-error-code="no-untyped-call"
"""Dask clusters: Allotment's `AllotmentCluster` against `distributed.LocalCluster` and
dask-gateway, side by side in one invocation on the same machine.

    PYTHONPATH=. python -m benchmarks.dask_clusters [--runs 3] [--workers 4] [--threads 1]
        [--tasks 20000] [--array-gib 2] [--sides local,local-tls,gateway,allotment]
        [--out benchmarks/results/dask_clusters.json]

Sides (each a fresh cluster per measurement):

- ``local``: `LocalCluster` with worker processes (nannies), no TLS: start only.
- ``local-tls``: the same with `Security.temporary()` (every comm over TLS): the reference
  the issue's targets are stated against.
- ``gateway``: a real dask-gateway-server 2026.3 (its Go proxy, the UnsafeLocalBackend,
  never `LocalBackend` as root: it has changed the owner of ``/``) started by the benchmark on
  free loopback ports, clusters made with `dask_gateway.Gateway` (always TLS).
- ``allotment``: a real `allot serve` (root, SQLite) with a real JupyterHub for the user's
  token, `AllotmentCluster` as a researcher calls it; the scheduler and workers run as the
  user's own POSIX account in cgroups, from the session environment. Needs root; skipped
  (and said so in the JSON) where `allotment.dask.AllotmentCluster` cannot run here.

Measures, each a median of ``--runs``:

1. start: from the constructor to ``--workers`` workers connected to the scheduler
   (`Client.wait_for_workers`).
2. throughput, TLS on (all sides but ``local``), the same workers × threads: ``--tasks`` tiny
   tasks (`client.map` of an increment, waited for), and a ``--array-gib`` GiB
   `dask.array` of random numbers reduced to its standard deviation (64 MiB chunks).
3. adaptive: `adapt(minimum=0, maximum=workers)`, then load (200 one-second tasks): seconds
   from submitting to the first and to the last worker connected.

Ratios (against ``local-tls``) are computed from the medians of this invocation only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import cloudpickle  # type: ignore[import-untyped]
import dask
import dask.array as da
from distributed import Client, LocalCluster, wait
from distributed.security import Security
from tests.support.hub import free_port
from tests.support.process import wait_healthy

from benchmarks.harness import commit, machine

ROOT = Path(__file__).resolve().parents[1]
#: Tasks run on the workers by value, whatever interpreter and packages the workers have
#: (the Allotment side's workers do not have this checkout on their path).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIDES = ("local", "local-tls", "gateway", "allotment")
#: Every side's workers get this much memory.
WORKER_MEMORY = "2GiB"
ADAPT_TASKS = 200


def _inc(x: int) -> int:
    return x + 1


def _busy(x: int) -> int:
    time.sleep(1)
    return x


class Side(Protocol):
    """One system under test: makes clusters that a `distributed.Client` connects to."""

    name: str

    def cluster(self, workers: int, threads: int) -> Any:
        """A new cluster, asked for ``workers`` workers of ``threads`` threads (0: adaptive
        later); returns once the constructor returns."""

    def adapt(self, cluster: Any, maximum: int) -> None: ...

    def client(self, cluster: Any) -> Client: ...

    def close(self, cluster: Any) -> None: ...


class Local:
    """`distributed.LocalCluster` with worker processes, optionally all over TLS."""

    def __init__(self, tls: bool) -> None:
        self.name = "local-tls" if tls else "local"
        self.tls = tls

    def cluster(self, workers: int, threads: int) -> Any:
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            memory_limit=WORKER_MEMORY,
            dashboard_address=":0",
            security=Security.temporary() if self.tls else None,
            protocol="tls://" if self.tls else None,
        )

    def adapt(self, cluster: Any, maximum: int) -> None:
        cluster.adapt(minimum=0, maximum=maximum)

    def client(self, cluster: Any) -> Client:
        return Client(cluster)

    def close(self, cluster: Any) -> None:
        cluster.close()


GATEWAY_CONFIG = """\
c.DaskGateway.address = "127.0.0.1:{api}"
c.Proxy.address = "127.0.0.1:{web}"
c.Proxy.tcp_address = "127.0.0.1:{tcp}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.LocalBackend.clusters_directory = {clusters!r}
c.ClusterConfig.worker_cores = {threads}
c.ClusterConfig.worker_threads = {threads}
c.ClusterConfig.worker_memory = "2 G"
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.idle_timeout = 0
# distributed 2026 has `dask scheduler` and `dask worker`, no `dask-scheduler` any more.
c.ClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{dask!r}, "worker"]
"""


class Gateway:
    """A real dask-gateway-server (UnsafeLocalBackend) for the whole invocation."""

    name = "gateway"

    def __init__(self, root: Path, threads: int) -> None:
        from dask_gateway import BasicAuth  # type: ignore[import-untyped]
        from dask_gateway import Gateway as GatewayClient

        self.root = root
        api, web, tcp = free_port(), free_port(), free_port()
        (root / "clusters").mkdir(parents=True)
        config = root / "dask_gateway_config.py"
        config.write_text(
            GATEWAY_CONFIG.format(
                api=api,
                web=web,
                tcp=tcp,
                clusters=str(root / "clusters"),
                threads=threads,
                dask=str(Path(sys.executable).parent / "dask"),
            )
        )
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
        self.log = open(root / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dask-gateway-server"), "-f", str(config)],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_healthy(f"http://127.0.0.1:{web}/api/health", 60):
            self.stop()
            raise RuntimeError("dask-gateway-server did not start: see " + str(root))
        self.gateway = GatewayClient(
            f"http://127.0.0.1:{web}",
            proxy_address=f"tls://127.0.0.1:{tcp}",
            auth=BasicAuth("bench", "bench"),
        )

    def cluster(self, workers: int, threads: int) -> Any:
        c = self.gateway.new_cluster()
        if workers:
            c.scale(workers)
        return c

    def adapt(self, cluster: Any, maximum: int) -> None:
        cluster.adapt(minimum=0, maximum=maximum)

    def client(self, cluster: Any) -> Client:
        return cluster.get_client(set_as_default=False)  # type: ignore[no-any-return]

    def close(self, cluster: Any) -> None:
        cluster.shutdown()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.gateway.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)  # schedulers and workers it left
        self.log.close()


class Allotment:
    """`AllotmentCluster` against a real `allot serve` (tests/support/dask.py's service).

    The hook for the Allotment side: the service, the user's token and the interpreter the
    workers run come from ``tests.support.dask.DaskService``; everything else is the public
    client API a researcher calls."""

    name = "allotment"

    def __init__(self, root: Path) -> None:
        from tests.support.dask import dask_stack

        self._stack = contextlib.ExitStack()
        try:
            self.svc = self._stack.enter_context(dask_stack(root, bench=True))
        except BaseException:
            self._stack.close()
            raise
        self.token = self.svc.token("alice")

    def cluster(self, workers: int, threads: int) -> Any:
        from allotment.dask import AllotmentCluster

        c = AllotmentCluster(
            profile="dask",
            account="lab",
            cpus=threads,
            threads=threads,
            memory=WORKER_MEMORY.replace("GiB", "G"),
            workers=workers,
            python=str(self.svc.python),
            url=self.svc.url,
            token=self.token,
        )
        return c

    def adapt(self, cluster: Any, maximum: int) -> None:
        cluster.adapt(minimum=0, maximum=maximum)

    def client(self, cluster: Any) -> Client:
        return Client(cluster, set_as_default=False)

    def close(self, cluster: Any) -> None:
        cluster.close()

    def stop(self) -> None:
        self._stack.close()


def _closed(side: Side, cluster: Any) -> None:
    """Close ``cluster`` and collect it here, in the main thread: a dask-gateway cluster
    collected later on the event loop's thread deadlocks there (its ``Gateway.__del__``
    waits on that same loop)."""
    side.close(cluster)
    del cluster
    gc.collect()


def start(side: Side, workers: int, threads: int) -> float:
    """Seconds from the constructor to ``workers`` workers connected."""
    t0 = time.perf_counter()
    cluster = side.cluster(workers, threads)
    try:
        with side.client(cluster) as client:
            client.wait_for_workers(workers, timeout=120)
            return time.perf_counter() - t0
    finally:
        _closed(side, cluster)


def throughput(
    side: Side, workers: int, threads: int, tasks: int, array_gib: float
) -> dict[str, float]:
    cluster = side.cluster(workers, threads)
    try:
        with side.client(cluster) as client:
            client.wait_for_workers(workers, timeout=120)
            futures = client.map(_inc, range(tasks), pure=False)
            t0 = time.perf_counter()
            with client.as_current():
                wait(futures)
            tasks_s = time.perf_counter() - t0
            assert client.submit(sum, futures).result() == tasks * (tasks + 1) // 2
            del futures
            # A square of float64 of about array_gib GiB, in chunks of 64 MiB.
            n = max(4096, round((array_gib * 2**30 / 8) ** 0.5 / 4096) * 4096)
            x = da.random.default_rng(0).random((n, n), chunks=(4096, 2048))
            t0 = time.perf_counter()
            std = float(client.compute(x.std()).result())
            array_s = time.perf_counter() - t0
            assert abs(std - (1 / 12) ** 0.5) < 1e-3, std
            return {
                "tasks_per_s": tasks / tasks_s,
                "tasks_s": tasks_s,
                "array_s": array_s,
                "array_gib": x.nbytes / 2**30,
            }
    finally:
        _closed(side, cluster)


def adaptive(side: Side, maximum: int, threads: int) -> dict[str, float]:
    """Seconds from load submitted to the first and the last of ``maximum`` workers."""
    cluster = side.cluster(0, threads)
    try:
        side.adapt(cluster, maximum)
        with side.client(cluster) as client:
            t0 = time.perf_counter()
            futures = client.map(_busy, range(ADAPT_TASKS), pure=False)
            client.wait_for_workers(1, timeout=120)
            first = time.perf_counter() - t0
            client.wait_for_workers(maximum, timeout=120)
            last = time.perf_counter() - t0
            client.cancel(futures)
            return {"first_s": first, "last_s": last}
    finally:
        _closed(side, cluster)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure_once(side: Side, args: argparse.Namespace, into: dict[str, list[Any]]) -> None:
    """One run of each measurement of ``side``, appended to ``into``."""
    into["start_s"].append(start(side, args.workers, args.threads))
    print(f"{side.name}: start {into['start_s'][-1]:.2f} s", flush=True)
    if side.name == "local":
        return  # without TLS: the start only (the targets are against TLS)
    into["throughput"].append(
        throughput(side, args.workers, args.threads, args.tasks, args.array_gib)
    )
    into["adaptive"].append(adaptive(side, args.workers, args.threads))
    print(f"  {into['throughput'][-1]} {into['adaptive'][-1]}", flush=True)


def medians(r: dict[str, Any]) -> dict[str, float]:
    out = {"start_s": statistics.median(r["start_s"])}
    for k in ("throughput", "adaptive"):
        if r[k]:
            out.update(_median(r[k]))
    return out


@contextlib.contextmanager
def sides(names: list[str], root: Path, threads: int) -> Iterator[dict[str, Side | str]]:
    """The sides asked for; a side that cannot run here is its reason (a string)."""
    made: dict[str, Side | str] = {}
    stops: list[Callable[[], None]] = []
    try:
        for name in names:
            if name in ("local", "local-tls"):
                made[name] = Local(tls=name == "local-tls")
            elif name == "gateway":
                g = Gateway(root / "gateway", threads)
                stops.append(g.stop)
                made[name] = g
            elif name == "allotment":
                try:
                    a = Allotment(root / "allotment")
                except (ImportError, AttributeError, RuntimeError, OSError) as e:
                    made[name] = f"not measured: {type(e).__name__}: {e}"
                    print(f"allotment: {made[name]}", flush=True)
                    continue
                stops.append(a.stop)
                made[name] = a
        yield made
    finally:
        for stop in reversed(stops):
            stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--array-gib", type=float, default=2.0)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--out", default="benchmarks/results/dask_clusters.json")
    args = p.parse_args(argv)
    names = [s for s in args.sides.split(",") if s]
    unknown = set(names) - set(SIDES)
    if unknown:
        p.error(f"unknown sides: {sorted(unknown)}")
    dask.config.set({"distributed.scheduler.work-stealing": True})
    root = Path(tempfile.mkdtemp(prefix="allotment-bench-dask."))
    results: dict[str, Any] = {}
    try:
        with sides(names, root, args.threads) as made:
            # Alternate the sides run by run, so that a noisy neighbour hits all alike.
            for name, side in made.items():
                if isinstance(side, str):
                    results[name] = {"skipped": side}
                else:
                    results[name] = {"start_s": [], "throughput": [], "adaptive": []}
            for _ in range(args.runs):
                for name, side in made.items():
                    if not isinstance(side, str):
                        measure_once(side, args, results[name])
            for r in results.values():
                if "skipped" not in r:
                    r["median"] = medians(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "dask_clusters",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "config": {
            "runs": args.runs,
            "workers": args.workers,
            "threads": args.threads,
            "worker_memory": WORKER_MEMORY,
            "tasks": args.tasks,
            "array_gib": args.array_gib,
            "adapt_tasks": ADAPT_TASKS,
        },
        "sides": results,
        "ratios": _ratios(results),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(textwrap.indent(json.dumps(report["ratios"], indent=2), "  "))


def _ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each side's medians against ``local-tls``'s (start: time ratio, lower is better;
    throughput: rate ratio, higher is better)."""
    ref = results.get("local-tls", {}).get("median")
    if not ref:
        return {}
    out: dict[str, Any] = {}
    for name, r in results.items():
        m = r.get("median")
        if not m or name == "local-tls":
            continue
        ratios = {"start_vs_local_tls": m["start_s"] / ref["start_s"]}
        if "tasks_per_s" in m:
            ratios["tasks_per_s_vs_local_tls"] = m["tasks_per_s"] / ref["tasks_per_s"]
            ratios["array_speed_vs_local_tls"] = ref["array_s"] / m["array_s"]
        out[name] = ratios
    if "gateway" in results and "allotment" in results:
        g, a = results["gateway"].get("median"), results["allotment"].get("median")
        if g and a:
            out["allotment_start_vs_gateway"] = a["start_s"] / g["start_s"]
    return out


if __name__ == "__main__":
    main()
