"""Pause Python's cyclic garbage collector around a scheduling computation.

A cycle allocates a few objects per workload and builds no reference cycles, so reference
counting frees all of it. Left on, the cyclic collector re-walks every live object of the
process many times over a large queue: 45% of a 100k-workload cycle, measured.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
