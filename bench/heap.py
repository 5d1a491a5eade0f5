"""Bulk work beside a large heap: the objects that exist when it starts are left out of garbage collection.

A command imports pandas, SQLAlchemy and numpy (half a million objects) before it reads 100,000 rows or writes a
thousand pages. Each full collection the new objects set off scans every old one again: a fifth of a pooled
comparison and up to a tenth of a dashboard build went there. `gc.freeze()` moves the old objects aside for the
block (and a forked worker inherits them there, so collecting never writes to the pages it shares with its
parent); `gc.unfreeze()` gives them back, so nothing made before the block is kept alive after it.

Collection is off inside the block too: rows read are lists, tuples and numbers that form no cycles, and each
collection their growing number sets off walks them all again (a tenth of a pooled comparison); what a cycle
left is collected once the block ends. A dashboard build's peak memory is the same either way (342 MB on
100,000 results).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0


@contextmanager
def frozen() -> Iterator[None]:
    """Leave the objects that exist now out of collection, and collect nothing, until the outermost such block
    ends."""
    global _depth
    enabled = gc.isenabled()
    if _depth == 0:
        gc.freeze()
        gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
            if enabled:
                gc.enable()
