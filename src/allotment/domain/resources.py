"""A resource vector: CPUs, memory and GPUs by model.

CPUs are counted in millicores so that arithmetic stays exact; memory in bytes; GPUs as whole
devices per model (``a100``, ``h100``). An empty GPU mapping means no GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from allotment.domain.quantities import format_bytes

__all__ = ["Resources"]


@dataclass(frozen=True, slots=True)
class Resources:
    #: Thousandths of a CPU core; 1000 is one core. Never negative.
    millicpus: int = 0
    #: Bytes of memory. Never negative.
    memory: int = 0
    #: GPU model → number of devices; models with zero devices are left out.
    gpus: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls, cpus: float = 0, memory: int = 0, gpus: Mapping[str, int] | None = None
    ) -> Resources:
        return cls(round(cpus * 1000), memory, {k: v for k, v in (gpus or {}).items() if v})

    @property
    def cpus(self) -> float:
        return self.millicpus / 1000

    @property
    def gpu_count(self) -> int:
        return sum(self.gpus.values())

    def __add__(self, other: Resources) -> Resources:
        gpus = dict(self.gpus)
        for model, n in other.gpus.items():
            gpus[model] = gpus.get(model, 0) + n
        return Resources(self.millicpus + other.millicpus, self.memory + other.memory, gpus)

    def describe(self) -> str:
        """For researchers: ``4 CPUs, 16G, 1× a100`` (memory left out when zero)."""
        parts = [f"{self.cpus:g} CPU" + ("" if self.cpus == 1 else "s")]
        if self.memory:
            parts.append(format_bytes(self.memory))
        parts += [f"{n}× {m}" for m, n in self.gpus.items() if n]
        return ", ".join(parts)

    def fits_in(self, capacity: Resources) -> bool:
        """True when every component is at most the capacity's."""
        if self.millicpus > capacity.millicpus or self.memory > capacity.memory:
            return False
        if not self.gpus:  # the common case, and the scheduler's hottest call
            return True
        return all(n <= capacity.gpus.get(model, 0) for model, n in self.gpus.items())
