"""runtime.gc_tuning: what tune_gc and collector_paused change in the process, and nothing else."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from runtime.gc_tuning import YOUNG_THRESHOLD, collector_paused, tune_gc


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


class _Node:
    self: _Node


def test_the_collector_is_paused_for_the_block_and_enabled_again_however_it_ends() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        node = _Node()
        node.self = node
        garbage = weakref.ref(node)
        del node
        kept: list[list[int]] = [[] for _ in range(5 * gc.get_threshold()[0])]  # no pass runs
        assert garbage() is not None and len(kept) > 0
    assert gc.isenabled()
    gc.collect()
    assert garbage() is None
    with pytest.raises(KeyError), collector_paused():
        raise KeyError("the import failed")
    assert gc.isenabled()


def test_a_collector_disabled_by_its_owner_stays_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
