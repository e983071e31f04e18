"""Spike score (spec §6), the instability measure of the AdaGC paper and OLMo 2.

v_t is a spike when |v_t - mean(H)| >= sigma * std(H), H the previous min(window, t-1)
evaluated values (population std, ddof 0; where std(H) == 0 any v_t != mean(H) is a spike),
once H holds at least ``min_history`` values. score = 100 * spikes / steps evaluated.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["SpikeReport", "spike_score"]


class SpikeReport(NamedTuple):
    """Result of :func:`spike_score`.

    Attributes:
        score: 100 * spikes / evaluated, in percent (0.0 when nothing was evaluated).
        spikes: indices (0-based positions in the input series) of the spikes.
        evaluated: number of steps that were tested.
    """

    score: float
    spikes: list[int]
    evaluated: int


def spike_score(
    values: Iterable[float],
    window: int = 1000,
    sigma: float = 7.0,
    min_history: int = 10,
    exclude: Iterable[int] = (),
) -> SpikeReport:
    """Spike score of a series (training loss or gradient norm), spec §6.

    Args:
        values: the series v_1..v_N.
        window: W, how many previous values form the reference window (OLMo 2: 1000).
        sigma: the threshold in standard deviations (OLMo 2: 7).
        min_history: a step is evaluated only once this many previous values exist.
        exclude: 0-based indices of steps measured on deliberately injected data: they are
            neither evaluated nor used as history (their loss belongs to the data).

    A non-finite value counts as a spike and is kept out of later windows.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if isinstance(min_history, bool) or not isinstance(min_history, int) or min_history < 1:
        raise ValueError(f"min_history must be an integer >= 1, got {min_history!r}")
    if min_history > window:
        raise ValueError(f"min_history ({min_history}) cannot exceed window ({window})")
    skip = set(exclude)
    history: deque[float] = deque(maxlen=window)
    spikes: list[int] = []
    evaluated = 0
    for t, raw in enumerate(values):
        if t in skip:
            continue
        v = float(raw)
        if len(history) >= min_history:
            evaluated += 1
            if not math.isfinite(v):
                spikes.append(t)
                continue
            mean = math.fsum(history) / len(history)
            std = math.sqrt(math.fsum((x - mean) ** 2 for x in history) / len(history))
            if (std == 0.0 and v != mean) or (std > 0.0 and abs(v - mean) >= sigma * std):
                spikes.append(t)
        if math.isfinite(v):
            history.append(v)
    score = 100.0 * len(spikes) / evaluated if evaluated else 0.0
    return SpikeReport(score, spikes, evaluated)
