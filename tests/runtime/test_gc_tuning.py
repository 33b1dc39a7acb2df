"""runtime.gc_tuning: what tune_gc changes in the process, and nothing else."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from runtime.gc_tuning import YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    _, middle, old = gc.get_threshold()
    kept = [object() for _ in range(3)]  # alive now: frozen with the rest
    tune_gc()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > len(kept)
    # Cyclic garbage made afterwards is still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


@pytest.mark.usefixtures("restored_gc")
def test_a_threshold_below_one_is_refused_before_anything_changes() -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match=r"^young_threshold must be at least 1, got 0$"):
        tune_gc(0)
    assert gc.get_threshold() == before
