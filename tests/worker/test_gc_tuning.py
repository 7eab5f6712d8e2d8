"""The worker service's garbage collector settings (``tune_gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from orchestrator_worker import tune_gc
from orchestrator_worker.service import GC_YOUNG_THRESHOLD


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_young_collections_are_rare() -> None:
    tune_gc()

    assert gc.get_freeze_count() > 0
    # 10,000 still cost a worker with 1,000 calls in flight ~10% of its CPU.
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 20, 20)
    assert GC_YOUNG_THRESHOLD >= 100_000


@pytest.mark.usefixtures("restored_gc")
def test_cyclic_garbage_is_still_collected() -> None:
    tune_gc()

    class Node:
        def __init__(self) -> None:
            self.me = self

    before = gc.get_stats()[0]["collections"]
    for _ in range(GC_YOUNG_THRESHOLD + 1_000):
        Node()  # each a cycle: freed by a collection only
    assert gc.get_stats()[0]["collections"] > before
