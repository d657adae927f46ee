"""ordered_map: the demo world's renders spread over the cores, results as one process gives."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest

from viva_pipelines import workers
from viva_pipelines.embedded.instructor_corpus import corpus_scene, corpus_scenes
from viva_pipelines.workers import available_cpus, ordered_map


def _square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def test_results_keep_the_items_order_and_come_from_workers() -> None:
    results = list(ordered_map(_square_with_pid, range(40), workers=2, pool_worth_s=0))
    assert [r for r, _ in results] == [x * x for x in range(40)]
    pids = [pid for _, pid in results]
    assert pids[0] == os.getpid()  # the first item is timed here
    assert os.getpid() not in pids[1:]


def test_little_work_one_worker_or_one_item_runs_in_this_process() -> None:
    here = {os.getpid()}
    assert {pid for _, pid in ordered_map(_square_with_pid, range(40), workers=2)} == here
    assert {pid for _, pid in ordered_map(_square_with_pid, range(5), workers=1)} == here
    assert list(ordered_map(_square_with_pid, [3], workers=4, pool_worth_s=0)) == [(9, *here)]
    assert list(ordered_map(_square_with_pid, [], workers=4)) == []


def test_a_failing_item_raises_its_own_error() -> None:
    with pytest.raises(ValueError, match="item 7 is bad"):
        list(ordered_map(partial(_fail_on, bad=7), range(12), workers=2, pool_worth_s=0))


def test_available_cpus_is_positive() -> None:
    assert available_cpus() >= 1


def test_corpus_scenes_rendered_in_workers_equal_one_process(monkeypatch) -> None:
    monkeypatch.setattr(workers, "POOL_WORTH_S", 0.0)
    scenes = list(corpus_scenes(4, frames=1))
    for index, scene in enumerate(scenes):
        alone = corpus_scene(index, frames=1)
        assert scene.scene_id == alone.scene_id and scene.caption == alone.caption
        np.testing.assert_array_equal(scene.frames, alone.frames)
        assert [p.instruction for p in scene.pairs] == [p.instruction for p in alone.pairs]
        for ours, theirs in zip(scene.pairs, alone.pairs, strict=True):
            np.testing.assert_array_equal(ours.target, theirs.target)
            np.testing.assert_array_equal(ours.mask, theirs.mask)
