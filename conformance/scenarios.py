"""Golden scenarios: deterministic multi-step gradient sequences (spec §1-3 edge cases).

Each scenario is a config and a list of steps; a step is a list of NumPy float64 arrays,
``None`` (absent) or the same object as an earlier entry (a tie). ``generate_goldens`` runs
them through the naive reference and stores the trajectories in ``goldens/*.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adagc import AdaGCConfig

__all__ = ["SCENARIOS", "Scenario"]

Step = list[Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    cfg: AdaGCConfig
    build: Callable[[np.random.Generator], list[Step]]
    seed: int = 0


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, size=shape)


SHAPES: list[tuple[int, ...]] = [(3, 4), (5,), (2, 3, 2), (7,)]


def _steady(
    rng: np.random.Generator,
    n_steps: int,
    scales: list[float],
    shapes: Sequence[tuple[int, ...]] = SHAPES,
) -> list[Step]:
    """Gradients whose norms drift slowly (0.6x .. 1.5x per step), like a real run."""
    steps = []
    for _ in range(n_steps):
        steps.append([_normal(rng, s, sc * rng.uniform(0.6, 1.5)) for s, sc in zip(shapes, scales)])
    return steps


def warmup_to_adaptive(rng: np.random.Generator) -> list[Step]:
    # Global norm around 1-3 so warmup clipping at lambda_abs=1 happens on some steps.
    return _steady(rng, 9, [0.3, 0.5, 0.2, 0.4])


def spike_one_tensor(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 10, [0.05, 0.08, 0.03, 0.06])
    steps[5][1] = steps[5][1] * 100.0
    steps[7][2] = steps[7][2] * 1000.0
    steps[8][0] = steps[8][0] * 300.0
    return steps


def scale_spread(rng: np.random.Generator) -> list[Step]:
    return _steady(rng, 8, [1e-4, 1e-1, 1e1, 1e3])


def zero_and_absent(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 9, [0.1, 0.2, 0.15, 0.05])
    steps[0][1] = np.zeros(SHAPES[1])  # zero during warmup: must not pin gamma at 0
    steps[1][2] = None  # absent during warmup
    steps[4][0] = np.zeros(SHAPES[0])  # zero after warmup: gamma must not decay
    steps[5][3] = None  # absent after warmup
    steps[6][1] = None
    steps[6][3] = np.zeros(SHAPES[3])
    return steps


def first_seen_after_warmup(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 8, [0.1, 0.2, 0.15, 0.05])
    for k in range(5):
        steps[k][3] = None  # appears at step 5, after warmup (warmup_steps=3)
    steps[6][3] = steps[6][3] * 50.0  # then spikes against its first gamma
    return steps


def warmup_zero(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 6, [0.1, 0.2, 0.15, 0.05])
    steps[3][0] = steps[3][0] * 20.0
    return steps


def nonfinite(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 9, [0.1, 0.2, 0.15, 0.05])
    steps[1][1] = steps[1][1].copy()
    steps[1][1][0] = np.nan  # during warmup
    steps[4][2] = steps[4][2].copy()
    steps[4][2][1, 0, 1] = np.inf  # after warmup
    steps[6][0] = steps[6][0].copy()
    steps[6][0][0, 0] = -np.inf
    steps[6][3] = None
    return steps


def tied(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 8, [0.2, 0.3, 0.1, 0.25])
    for k, step in enumerate(steps):
        step.append(step[0])  # position 4 is the same object as position 0
        if k == 5:
            step[0] *= 40.0  # in place: the tie sees the spike too
    return steps


def empty(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 7, [0.2, 0.3, 0.1, 0.25])
    for step in steps:
        step.insert(1, np.zeros((0,)))
        step.append(np.zeros((3, 0)))
    return steps


def global_granularity(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 10, [0.3, 0.5, 0.2, 0.4])
    steps[6][1] = steps[6][1] * 30.0
    steps[2] = [np.zeros(s) for s in SHAPES]  # G == 0 during warmup: not observed
    steps[5] = [None, None, None, None]  # every gradient absent after warmup
    return steps


def single_tensor(rng: np.random.Generator) -> list[Step]:
    steps = _steady(rng, 8, [0.7], shapes=[(6, 5)])
    steps[5][0] = steps[5][0] * 10.0
    return steps


def thousand_tensors(rng: np.random.Generator) -> list[Step]:
    shapes = [(2,) if i % 3 else (1,) for i in range(1000)]
    scales = [float(10 ** rng.uniform(-3, 1)) for _ in shapes]
    steps = _steady(rng, 4, scales, shapes)
    steps[3][17] = steps[3][17] * 100.0
    return steps


def warmup_gamma_raw(rng: np.random.Generator) -> list[Step]:
    # Global norm ~2-5 > lambda_abs on every warmup step: the raw minimum n_i and the clipped
    # one h * n_i differ, so this trajectory is not the "clipped" one (tests/core checks).
    steps = _steady(rng, 10, [0.6, 1.0, 0.4, 0.8])
    steps[6][1] = steps[6][1] * 30.0
    steps[1][2] = None  # absent during warmup
    return steps


_BASE = dict(lambda_rel=1.04, beta=0.99, warmup_steps=3, lambda_abs=1.0, eps=1e-6)

SCENARIOS: list[Scenario] = [
    Scenario("warmup_to_adaptive", AdaGCConfig(**_BASE), warmup_to_adaptive),  # type: ignore[arg-type]
    Scenario("spike_one_tensor", AdaGCConfig(**{**_BASE, "beta": 0.9}), spike_one_tensor),  # type: ignore[arg-type]
    Scenario("scale_spread", AdaGCConfig(**{**_BASE, "lambda_abs": 5.0}), scale_spread),  # type: ignore[arg-type]
    Scenario("zero_and_absent", AdaGCConfig(**_BASE), zero_and_absent),  # type: ignore[arg-type]
    Scenario("first_seen_after_warmup", AdaGCConfig(**_BASE), first_seen_after_warmup),  # type: ignore[arg-type]
    Scenario("warmup_zero", AdaGCConfig(**{**_BASE, "warmup_steps": 0}), warmup_zero),  # type: ignore[arg-type]
    *[
        Scenario(f"nonfinite_{p}", AdaGCConfig(**{**_BASE, "nonfinite": p}), nonfinite)  # type: ignore[arg-type]
        for p in ("propagate", "zero", "raise")
    ],
    Scenario("tied", AdaGCConfig(**_BASE), tied),  # type: ignore[arg-type]
    Scenario("empty", AdaGCConfig(**_BASE), empty),  # type: ignore[arg-type]
    Scenario(
        "global_granularity",
        AdaGCConfig(**{**_BASE, "granularity": "global", "lambda_abs": 1.5}),  # type: ignore[arg-type]
        global_granularity,
    ),
    Scenario(
        "warmup_gamma_raw",
        AdaGCConfig(**{**_BASE, "warmup_steps": 4, "warmup_gamma": "raw"}),  # type: ignore[arg-type]
        warmup_gamma_raw,
    ),
    Scenario(
        "warmup_gamma_raw_global",
        AdaGCConfig(**{**_BASE, "warmup_gamma": "raw", "granularity": "global"}),  # type: ignore[arg-type]
        warmup_gamma_raw,
    ),
    Scenario(
        "single_tensor", AdaGCConfig(**{**_BASE, "lambda_rel": 1.05, "beta": 0.98}), single_tensor
    ),  # type: ignore[arg-type]
    Scenario(
        "thousand_tensors",
        AdaGCConfig(**{**_BASE, "warmup_steps": 2, "lambda_abs": 3.0}),
        thousand_tensors,
    ),  # type: ignore[arg-type]
]
