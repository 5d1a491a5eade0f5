"""bench.heap: bulk reads and site builds leave the objects that existed before them out of collection, and
give them back after, nested or on an error, collecting nothing meanwhile."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from bench.heap import frozen


def test_frozen_blocks_nest_and_give_the_heap_back_even_on_an_error() -> None:
    assert gc.get_freeze_count() == 0
    kept = [object() for _ in range(100)]
    with frozen():
        outer = gc.get_freeze_count()
        assert outer >= len(kept)
        with frozen():  # an inner block (results_frame inside compare) leaves the outer one's objects frozen
            assert gc.get_freeze_count() == outer
        assert gc.get_freeze_count() == outer
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), frozen():
        assert not gc.isenabled()  # nothing collected inside the block
        raise RuntimeError("a read that fails")
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.disable()  # a caller that turned collection off keeps it off
    try:
        with frozen():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_comparison_and_a_site_leave_nothing_frozen(tmp_path: Path) -> None:
    from bench.analysis.compare import compare
    from bench.report.dashboard import build_site
    from bench.store.db import open_store
    from benchmarks.dashboard_scale import fill

    db = f"sqlite:///{tmp_path / 's.sqlite'}"
    fill(db, 3, 2, 2)
    with open_store(db) as store:
        with store.session() as session:
            table = compare(session, "build-0", "build-1").table
        assert len(table) and gc.get_freeze_count() == 0
        assert build_site(store, tmp_path / "site").pages > 0
    assert gc.get_freeze_count() == 0
