from __future__ import annotations

import math

import numpy as np
import pytest

from adagc import spike_score


def test_known_spikes_are_found() -> None:
    rng = np.random.default_rng(0)
    series = list(3.0 + 0.01 * rng.standard_normal(300))
    for t in (120, 250):
        series[t] += 1.0  # 100 sigma
    rep = spike_score(series, window=50, sigma=7, min_history=20)
    assert rep.spikes == [120, 250]
    assert rep.evaluated == 280  # steps 20..299
    assert rep.score == pytest.approx(100 * 2 / 280)


def test_small_excursions_are_not_spikes() -> None:
    rng = np.random.default_rng(1)
    series = 2.0 + 0.01 * rng.standard_normal(500)
    assert spike_score(series, window=100, sigma=7, min_history=10).spikes == []


def test_window_is_the_previous_w_values_population_std() -> None:
    # history [1, 3]: mean 2, population std 1; 2 + 7*1 = 9 is a spike (>=), 8.99 is not.
    assert spike_score([1, 3, 9], window=2, sigma=7, min_history=2).spikes == [2]
    assert spike_score([1, 3, 8.99], window=2, sigma=7, min_history=2).spikes == []
    # only the previous W values count: W=2 looks at [1, 3]; W=3 at [6, 1, 3] (std 2.05)
    assert spike_score([4, 6, 1, 3, 9], window=2, sigma=7, min_history=2).spikes == [4]
    assert spike_score([4, 6, 1, 3, 9], window=3, sigma=7, min_history=2).spikes == []


def test_zero_std_history_any_change_is_a_spike() -> None:
    assert spike_score([1, 1, 1, 1.0001], window=10, sigma=7, min_history=3).spikes == [3]
    assert spike_score([1, 1, 1, 1], window=10, sigma=7, min_history=3).spikes == []


def test_excluded_steps_are_neither_evaluated_nor_history() -> None:
    series = [1.0, 2.0, 1.0, 2.0, 100.0, 1.0, 2.0, 1.5]
    rep = spike_score(series, window=4, sigma=3, min_history=4, exclude=[4])
    assert 4 not in rep.spikes and rep.evaluated == 3
    assert spike_score(series, window=4, sigma=3, min_history=4).spikes == [4]


def test_nonfinite_value_is_a_spike_and_kept_out_of_history() -> None:
    rep = spike_score([1, 2, 1, 2, math.nan, 1.5], window=4, sigma=3, min_history=4)
    assert rep.spikes == [4] and rep.evaluated == 2


def test_nothing_evaluated_scores_zero() -> None:
    assert spike_score([1.0, 2.0], min_history=5).score == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": 0}, "window"),
        ({"sigma": 0}, "sigma"),
        ({"min_history": 0}, "min_history"),
        ({"window": 5, "min_history": 6}, "min_history"),
    ],
)
def test_bad_arguments(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        spike_score([1.0, 2.0, 3.0], **kwargs)
