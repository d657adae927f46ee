import itertools

import pytest

from viva_pipelines.train.schedule import warmup_cosine


def test_warmup_rises_linearly_to_the_peak():
    assert [warmup_cosine(s, 4, 100, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decays_to_the_floor_and_stays_there():
    assert warmup_cosine(4, 4, 104, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(54, 4, 104, 0.1) == pytest.approx(0.55)  # halfway: the mid-point
    assert warmup_cosine(104, 4, 104, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 4, 104, 0.1) == pytest.approx(0.1)  # a run extended past total


def test_decay_is_monotone():
    factors = [warmup_cosine(s, 10, 200, 0.0) for s in range(10, 220)]
    assert all(a >= b for a, b in itertools.pairwise(factors))
