"""adagc: AdaGC, adaptive per-tensor gradient clipping (arXiv 2502.11034).

For each parameter tensor i AdaGC keeps gamma_i, an exponential moving average (coefficient
beta) of its past clipped gradient norms, and clips g_i to at most lambda_rel * gamma_i, after
T_start = ``warmup_steps`` steps of global-norm clipping at lambda_abs. This package is the
framework-neutral core::

    import adagc
    cfg = adagc.AdaGCConfig()                      # the paper's defaults
    state = adagc.init(grads, cfg)                 # grads: a list of arrays
    clipped, state, stats = adagc.update(grads, state, cfg)

Framework adapters live in ``adagc.adapters.torch``, ``adagc.adapters.jax`` and
``adagc.adapters.paddle``. Importing ``adagc`` imports no deep-learning framework.
"""

from __future__ import annotations

from ._algorithm import generic_update, init, update
from ._checkpoint import FORMAT as CHECKPOINT_FORMAT
from ._checkpoint import from_portable, to_portable
from ._config import AdaGCConfig
from ._dispatch import get_backend, register_backend, registered_backends
from ._errors import (
    CheckpointMismatchError,
    NonFiniteGradientError,
    NotWritableError,
    StateMismatchError,
)
from ._graph import JitStep, TracedRaiseError, jit_step
from ._protocol import ArrayBackend, Reducer
from ._spike import SpikeReport, spike_score
from ._types import AdaGCState, AdaGCStats

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINT_FORMAT",
    "AdaGCConfig",
    "AdaGCState",
    "AdaGCStats",
    "ArrayBackend",
    "CheckpointMismatchError",
    "JitStep",
    "NonFiniteGradientError",
    "NotWritableError",
    "Reducer",
    "SpikeReport",
    "StateMismatchError",
    "TracedRaiseError",
    "__version__",
    "from_portable",
    "generic_update",
    "get_backend",
    "init",
    "jit_step",
    "register_backend",
    "registered_backends",
    "spike_score",
    "to_portable",
    "update",
]
