"""The AdaGC state and per-step statistics (spec §4). Both are NamedTuples, so they are
pytrees for JAX and plain tuples everywhere else."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["AdaGCState", "AdaGCStats"]


class AdaGCState(NamedTuple):
    """Immutable AdaGC state. Arrays live on the gradients' device, in their framework.

    Attributes:
        step: int scalar ``[]``: k, the number of finite steps completed so far.
        gamma: float ``[T]`` (``[1]`` for ``granularity="global"``): gamma_i, the running
            minimum of clipped norms during warmup, then their EMA with coefficient beta.
            float64 when every gradient at ``init`` was float64, float32 otherwise.
        seen: bool ``[T]`` (``[1]`` for global): whether gamma_i has been initialised.
    """

    step: Any
    gamma: Any
    seen: Any


class AdaGCStats(NamedTuple):
    """What one ``update`` did, as arrays on the gradients' device (reading them syncs).

    Attributes:
        norms: ``[T]`` n_i = ||g_i||_2 before clipping (0 for absent, empty or tied repeats).
        coefficients: ``[T]`` h_i applied to each tensor (1 for absent / zero tensors).
        global_norm: ``[]`` G = sqrt(sum n_i^2) before clipping.
        clipped_global_norm: ``[]`` sqrt(sum (h_i n_i)^2), from the norms (not re-measured).
        num_clipped: int ``[]`` number of tensors with h_i < 1.
        nonfinite: bool ``[]`` the step had a NaN/Inf norm; the state was left unchanged.
        warmup: bool ``[]`` the step was a warmup (global-norm clipping) step.
    """

    norms: Any
    coefficients: Any
    global_norm: Any
    clipped_global_norm: Any
    num_clipped: Any
    nonfinite: Any
    warmup: Any
