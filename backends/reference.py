"""The deliberately naive reference: spec §1-3 as plain Python loops and ``if`` statements.

It is the test oracle (goldens, property tests) and is never used by the library. Values are
Python floats (float64); gradients are NumPy arrays or ``None``. Keep it obvious rather than
fast: every line should be checkable against docs/spec.md by eye.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adagc._config import AdaGCConfig
from adagc._errors import NonFiniteGradientError

__all__ = ["RefState", "RefStats", "ref_init", "ref_update"]


@dataclass
class RefState:
    step: int
    gamma: list[float]
    seen: list[bool]


@dataclass
class RefStats:
    norms: list[float] = field(default_factory=list)
    coefficients: list[float] = field(default_factory=list)
    global_norm: float = 0.0
    clipped_global_norm: float = 0.0
    num_clipped: int = 0
    nonfinite: bool = False
    warmup: bool = False


def ref_init(num_tensors: int, cfg: AdaGCConfig) -> RefState:
    n = 1 if cfg.granularity == "global" else num_tensors
    return RefState(step=0, gamma=[0.0] * n, seen=[False] * n)


def fsum_sq(values: Sequence[float]) -> float:
    """Sum of squares, correctly rounded (``math.fsum``), so the oracle's last bits do not
    depend on the Python version (3.12 changed the built-in ``sum`` of floats); Inf when it
    overflows, NaN with a NaN."""
    try:
        return math.fsum(v * v for v in values)
    except OverflowError:  # finite squares whose exact sum exceeds float64
        return math.inf


def _norm(g: Any) -> float:
    total = 0.0
    for x in np.asarray(g, dtype=np.float64).ravel().tolist():
        total += x * x
    return math.sqrt(total)


def ref_update(
    grads: Sequence[Any], state: RefState, cfg: AdaGCConfig
) -> tuple[list[Any], RefState, RefStats]:
    T = len(grads)
    # Which positions take part: not absent, not empty, not a repeat of an earlier object.
    first_of: dict[int, int] = {}
    twin: list[int | None] = []
    for j, g in enumerate(grads):
        if g is None:
            twin.append(None)
            continue
        i = first_of.setdefault(id(g), j)
        twin.append(i if i != j else None)
    counted = [grads[j] is not None and twin[j] is None and np.size(grads[j]) > 0 for j in range(T)]

    norms = [_norm(grads[j]) if counted[j] else 0.0 for j in range(T)]
    G = math.sqrt(fsum_sq(norms))
    nonfinite = any(not math.isfinite(n) for n in norms) or not math.isfinite(G)
    warmup = state.step < cfg.warmup_steps
    eps = cfg.eps

    gamma = list(state.gamma)
    seen = list(state.seen)
    coef = [1.0] * T

    if cfg.granularity == "tensor":
        if warmup:
            h = min(cfg.lambda_abs / (G + eps), 1.0)
            for i in range(T):
                if norms[i] > 0:
                    coef[i] = h
                    # warmup_gamma: the minimum of clipped norms h * n_i, or of raw n_i.
                    c = norms[i] if cfg.warmup_gamma == "raw" else h * norms[i]
                    if not seen[i]:
                        gamma[i] = c
                    else:
                        gamma[i] = min(gamma[i], c)
                    seen[i] = True
        else:
            for i in range(T):
                n = norms[i]
                if not n > 0:
                    continue  # zero / absent: not observed, gamma unchanged
                if not seen[i]:
                    gamma[i] = n  # first observation after warmup: no clipping
                    seen[i] = True
                    continue
                t = cfg.lambda_rel * gamma[i]
                if n > t:
                    coef[i] = t / (n + eps)
                gamma[i] = cfg.beta * gamma[i] + (1 - cfg.beta) * min(n, t)
    else:
        h = 1.0
        if G > 0:
            if warmup:
                h = min(cfg.lambda_abs / (G + eps), 1.0)
                m = G if cfg.warmup_gamma == "raw" else min(G, cfg.lambda_abs)
                gamma[0] = m if not seen[0] else min(gamma[0], m)
                seen[0] = True
            elif not seen[0]:
                gamma[0] = G
                seen[0] = True
            else:
                t = cfg.lambda_rel * gamma[0]
                if t < G:
                    h = t / (G + eps)
                gamma[0] = cfg.beta * gamma[0] + (1 - cfg.beta) * min(G, t)
        for i in range(T):
            if norms[i] > 0:
                coef[i] = h

    stats = RefStats(norms=norms, global_norm=G, nonfinite=nonfinite, warmup=warmup)
    if nonfinite:
        if cfg.nonfinite == "raise":
            raise NonFiniteGradientError([str(i) for i in range(T) if not math.isfinite(norms[i])])
        new_state = RefState(state.step, list(state.gamma), list(state.seen))
        fill = 0.0 if cfg.nonfinite == "zero" else 1.0
        coef = [fill] * T
        num_clipped = 0
    else:
        new_state = RefState(state.step + 1, gamma, seen)
        num_clipped = sum(1 for i in range(T) if coef[i] < 1.0)

    out: list[Any] = []
    for j, g in enumerate(grads):
        first = twin[j]
        if g is None:
            out.append(None)
        elif first is not None:
            out.append(out[first])
        elif not counted[j]:
            out.append(np.array(g, dtype=np.float64))  # empty
        elif nonfinite and cfg.nonfinite == "zero":
            out.append(np.zeros(np.shape(g)))
        else:
            out.append(np.asarray(g, dtype=np.float64) * coef[j])
    stats.coefficients = coef
    stats.num_clipped = num_clipped
    stats.clipped_global_norm = math.sqrt(fsum_sq([coef[i] * norms[i] for i in range(T)]))
    return out, new_state, stats
