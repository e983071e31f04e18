"""The portable checkpoint format ``adagc/1`` (spec §4), the same for every framework:

    {"format": "adagc/1", "config": {...}, "step": int,
     "gamma": {name: float}, "seen": {name: bool}}

``name`` is the parameter name, the index as a string when no names were given, or
``"__global__"`` for the single gamma of ``granularity="global"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._config import AdaGCConfig
from ._dispatch import backend_for
from ._errors import CheckpointMismatchError
from ._protocol import DType
from ._types import AdaGCState

__all__ = ["FORMAT", "GLOBAL_KEY", "from_portable", "to_portable"]

FORMAT = "adagc/1"
GLOBAL_KEY = "__global__"


def _keys(n: int, cfg: AdaGCConfig, names: Sequence[str] | None) -> list[str]:
    if cfg.granularity == "global":
        return [GLOBAL_KEY]
    if names is None:
        return [str(i) for i in range(n)]
    keys = [str(k) for k in names]
    if len(keys) != n:
        raise ValueError(f"got {len(keys)} names for a state of {n} tensors")
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"tensor names must be unique; repeated: {dupes}")
    return keys


def to_portable(
    state: AdaGCState, cfg: AdaGCConfig, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The state as a plain, JSON-ready dict in the ``adagc/1`` format (reads the device)."""
    xp = backend_for([state.gamma])
    gamma = [float(v) for v in xp.to_numpy(state.gamma).reshape(-1).tolist()]
    seen = [bool(v) for v in xp.to_numpy(state.seen).reshape(-1).tolist()]
    keys = _keys(len(gamma) if cfg.granularity == "tensor" else 1, cfg, names)
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "step": int(xp.to_numpy(state.step)),
        "gamma": dict(zip(keys, gamma)),
        "seen": dict(zip(keys, seen)),
    }


def from_portable(
    checkpoint: Mapping[str, Any],
    like: AdaGCState,
    cfg: AdaGCConfig,
    names: Sequence[str] | None = None,
) -> AdaGCState:
    """A state with the checkpoint's values, in the framework, dtype and device of ``like``
    (a state from ``init`` for the live model). The live ``cfg`` wins over the checkpoint's
    config, except that a granularity mismatch is an error. Raises
    ``CheckpointMismatchError`` naming missing/unexpected tensors; nothing is half-loaded.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a dict, got {type(checkpoint).__name__}")
    fmt = checkpoint.get("format")
    if fmt != FORMAT:
        raise CheckpointMismatchError(f"not an {FORMAT} checkpoint (format={fmt!r})")
    for key in ("config", "step", "gamma", "seen"):
        if key not in checkpoint:
            raise CheckpointMismatchError(f"{FORMAT} checkpoint has no {key!r} entry")
    saved_gran = dict(checkpoint["config"]).get("granularity", "tensor")
    if saved_gran != cfg.granularity:
        raise CheckpointMismatchError(
            f"checkpoint was saved with granularity={saved_gran!r} but the live config has "
            f"granularity={cfg.granularity!r}; the gamma entries do not correspond"
        )
    xp = backend_for([like.gamma])
    n = xp.size(like.gamma)
    keys = _keys(n, cfg, names)
    gamma_in = dict(checkpoint["gamma"])
    seen_in = dict(checkpoint["seen"])
    missing = [k for k in keys if k not in gamma_in or k not in seen_in]
    unexpected = sorted(set(gamma_in) - set(keys))
    if missing or unexpected:
        raise CheckpointMismatchError(
            "the checkpoint's tensors differ from the live model's", missing, unexpected
        )
    step = checkpoint["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointMismatchError(f"checkpoint step must be an integer >= 0, got {step!r}")
    dtype: DType = "float64" if xp.dtype_name(like.gamma) == "float64" else "float32"
    return AdaGCState(
        step=xp.asarray(step, "int", like=like.gamma),
        gamma=xp.asarray([float(gamma_in[k]) for k in keys], dtype, like=like.gamma),
        seen=xp.asarray([bool(seen_in[k]) for k in keys], "bool", like=like.gamma),
    )
