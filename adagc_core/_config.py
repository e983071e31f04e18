"""``AdaGCConfig``: the hyper-parameters of AdaGC, validated at construction."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Literal

__all__ = [
    "GRANULARITIES",
    "MAX_STEPS",
    "NONFINITE_POLICIES",
    "SHARD_MODES",
    "WARMUP_GAMMAS",
    "AdaGCConfig",
]

# The largest warmup_steps: JAX keeps the step counter k in int32 without x64.
MAX_STEPS = 2**31 - 1

Granularity = Literal["tensor", "global"]
ShardMode = Literal["exact", "local"]
NonFinite = Literal["propagate", "zero", "raise"]
WarmupGamma = Literal["clipped", "raw"]

GRANULARITIES: tuple[str, ...] = ("tensor", "global")
SHARD_MODES: tuple[str, ...] = ("exact", "local")
NONFINITE_POLICIES: tuple[str, ...] = ("propagate", "zero", "raise")
WARMUP_GAMMAS: tuple[str, ...] = ("clipped", "raw")


@dataclasses.dataclass(frozen=True)
class AdaGCConfig:
    """Hyper-parameters of AdaGC (arXiv 2502.11034, Algorithm 1).

    Attributes:
        lambda_rel: relative threshold lambda_rel; after warmup tensor i is clipped to
            ``lambda_rel * gamma_i`` where gamma_i is the EMA of its past clipped norms. > 0.
        beta: EMA coefficient beta of gamma_i. ``0 <= beta < 1``.
        warmup_steps: T_start, the number of finite steps of global-norm clipping before the
            adaptive phase. Integer >= 0.
        lambda_abs: absolute max norm lambda_abs of the warmup global-norm clipping. > 0.
        eps: epsilon added to norms in the denominators. > 0.
        granularity: ``"tensor"`` (one gamma per tensor, the paper's method) or ``"global"``
            (the AdaGC-Global ablation: one gamma for all tensors).
        shard_mode: ``"exact"`` (norms of full, unsharded tensors) or ``"local"`` (the paper's
            AdaGC-Shard: each rank clips its shard by the shard's own norm).
        nonfinite: what happens to the gradients on a step with a NaN/Inf norm; the state is
            never changed by such a step. ``"propagate"`` leaves them as they are,
            ``"zero"`` zeroes them, ``"raise"`` raises ``NonFiniteGradientError``.
        warmup_gamma: what gamma_i is the running minimum of during warmup (spec §1).
            ``"clipped"`` (default; the paper's Algorithm 1 and the authors' Megatron code):
            the clipped norms h * n_i. ``"raw"`` (PaddlePaddle's ``ClipGradByAdaptiveNorm``
            and ERNIE): the unclipped norms n_i. The two differ only on warmup steps whose
            global norm exceeds lambda_abs.
    """

    lambda_rel: float = 1.04
    beta: float = 0.99
    warmup_steps: int = 100
    lambda_abs: float = 1.0
    eps: float = 1e-6
    granularity: Granularity = "tensor"
    shard_mode: ShardMode = "exact"
    nonfinite: NonFinite = "propagate"
    warmup_gamma: WarmupGamma = "clipped"

    def __post_init__(self) -> None:
        _positive("lambda_rel", self.lambda_rel)
        _real("beta", self.beta)
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must satisfy 0 <= beta < 1, got {self.beta!r}")
        ws = self.warmup_steps
        if isinstance(ws, bool) or not isinstance(ws, numbers.Integral):
            raise ValueError(
                f"warmup_steps must be an integer >= 0, got {_show(ws)} ({type(ws).__name__})"
            )
        if not 0 <= ws <= MAX_STEPS:
            raise ValueError(
                f"warmup_steps must be an integer in [0, {MAX_STEPS}] (the step counter is "
                f"int32 in JAX without x64), got {_show(ws)}"
            )
        object.__setattr__(self, "warmup_steps", int(ws))
        _positive("lambda_abs", self.lambda_abs)
        _positive("eps", self.eps)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("shard_mode", self.shard_mode, SHARD_MODES)
        _choice("nonfinite", self.nonfinite, NONFINITE_POLICIES)
        _choice("warmup_gamma", self.warmup_gamma, WARMUP_GAMMAS)
        if self.granularity == "global" and self.shard_mode == "local":
            raise ValueError(
                "granularity='global' cannot be combined with shard_mode='local': a single "
                "global gamma needs the full norm. Use shard_mode='exact' or granularity='tensor'."
            )
        # Normalise to plain Python floats and strs so configs compare and serialise cleanly.
        for name in ("lambda_rel", "beta", "lambda_abs", "eps"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("granularity", "shard_mode", "nonfinite", "warmup_gamma"):
            object.__setattr__(self, name, str(getattr(self, name)))

    def replace(self, **changes: Any) -> AdaGCConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (used by the ``adagc/1`` checkpoint format)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaGCConfig:
        """Build a config from ``to_dict()`` output; unknown keys are a ``ValueError``.
        Missing keys take their defaults, so a dict saved before a field existed (e.g.
        ``warmup_gamma``) builds the config that was running then."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown AdaGCConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _real(name: str, value: object) -> float:
    """``value`` as a float: any real number (Python or NumPy, not a bool) that is finite
    as a float64 (10**400 is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number, got {_show(value)} ({type(value).__name__})"
        )
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {_show(value)}")
    return f


def _positive(name: str, value: object) -> None:
    if _real(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:  # an array would compare elementwise
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
