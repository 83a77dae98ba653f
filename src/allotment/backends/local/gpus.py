"""GPUs of this machine, as the policy declares them; ``discover`` reads what ``nvidia-smi``
reports, which nothing pins from yet (the declaration is the inventory; ``LocalBackend.capacity``
says why).

An inventory maps each GPU model to its device indices (``{"a100": ["0", "1"]}``). A workload
is pinned to the devices it is given through ``CUDA_VISIBLE_DEVICES`` and, on cgroup v1, the
devices controller, which denies it the others (NVIDIA device nodes are character devices of
major 195, minor = index; ``nvidiactl``, 195:255, stays open to all).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Mapping, Sequence

from allotment.backends.local.process import ROOT_ENVIRONMENT, program

__all__ = ["Inventory", "assign", "declared", "device_numbers", "discover", "model_of"]

Inventory = Mapping[str, Sequence[str]]


def model_of(name: str) -> str:
    """A policy-style model name from an ``nvidia-smi`` product name: "NVIDIA A100-SXM4-80GB"
    → "a100", "NVIDIA H100 80GB HBM3" → "h100"."""
    words = re.sub(r"^(nvidia|tesla|geforce|quadro)\s+", "", name.strip(), flags=re.I).lower()
    words = re.sub(r"^(nvidia|tesla|geforce|quadro)\s+", "", words)
    return re.split(r"[\s-]+", words)[0] or "gpu"


async def discover() -> dict[str, list[str]]:
    """The GPUs ``nvidia-smi`` reports, by model; empty where there is none or no driver."""
    try:  # run as root: by absolute path, never found through PATH
        exe = program("nvidia-smi", ("/usr/bin", "/usr/local/bin", "/bin"))
    except FileNotFoundError:
        return {}
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--query-gpu=index,name",
        "--format=csv,noheader",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=ROOT_ENVIRONMENT,
        cwd="/",
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return {}
    return parse_query(out.decode())


def parse_query(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            found.setdefault(model_of(name), []).append(index.strip())
    return found


def declared(counts: Mapping[str, int]) -> dict[str, list[str]]:
    """Indices for GPUs the policy declares but nothing discovered: numbered in model order."""
    out: dict[str, list[str]] = {}
    i = 0
    for model in sorted(counts):
        out[model] = [str(i + k) for k in range(counts[model])]
        i += counts[model]
    return out


def assign(
    inventory: Inventory, wanted: Mapping[str, int], in_use: Collection[str]
) -> list[str] | None:
    """Devices for a request: the lowest free indices of each model, or None when too few
    are free."""
    chosen: list[str] = []
    for model, n in sorted(wanted.items()):
        free = [d for d in inventory.get(model, ()) if d not in in_use]
        if len(free) < n:
            return None
        chosen += free[:n]
    return chosen


def device_numbers(inventory: Inventory, given: Sequence[str]) -> tuple[str, ...]:
    """``major:minor`` of the GPU device nodes a workload given ``given`` must not open."""
    return tuple(f"195:{d}" for devices in inventory.values() for d in devices if d not in given)
