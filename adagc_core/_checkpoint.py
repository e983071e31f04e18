"""The portable checkpoint format ``adagc/1`` (spec §4), the same for every framework:

    {"format": "adagc/1", "config": {...}, "step": int,
     "gamma": {name: float}, "seen": {name: bool}}

``name`` is the parameter name, the index as a string when no names were given, or
``"__global__"`` for the single gamma of ``granularity="global"``. ``config`` is
``AdaGCConfig.to_dict()``; fields added later are absent from older files and mean their
default there (``warmup_gamma``: ``"clipped"``, the only behaviour before it existed), which
is what ``AdaGCConfig.from_dict`` builds from such a dict. On load the live config wins.

Every load path of every adapter validates through this module (``checked_entry`` for one
tensor's record, ``from_portable`` for a whole checkpoint), so the rules are in one place
(spec §4): gamma a finite number >= 0 that the state's dtype can hold, ``seen`` strictly a
boolean, ``step`` a non-negative integer (not a bool) that the state's counter can hold, the
tensor names those of the live model, a known format. A violation is a
``CheckpointMismatchError`` naming the field, the tensor and the value; the caller's state is
left as it was, and a loaded state never shares memory with the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._config import AdaGCConfig
from ._dispatch import backend_for
from ._errors import CheckpointMismatchError
from ._protocol import DType
from ._types import AdaGCState

__all__ = ["FORMAT", "GLOBAL_KEY", "checked_entry", "checked_step", "from_portable", "to_portable"]

FORMAT = "adagc/1"
GLOBAL_KEY = "__global__"

# The largest value each state dtype holds: a gamma or step beyond it would be rounded to Inf
# or wrap around when the state is built.
_FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}
_INT_MAX = {"int32": 2**31 - 1, "int64": 2**63 - 1}


def _plain(value: Any) -> Any:
    """A Python scalar for a NumPy scalar or a 0-d array/tensor of any framework (their
    ``tolist()``); anything else as it is. The Python type then says what the value is:
    bool, int, float, or something else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            return tolist()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def checked_step(value: Any, dtype: str = "int64") -> int:
    """``value`` as the step counter k: a non-negative integer (not a bool, not a float such
    as 2.0 or 2.9) that a ``dtype`` counter holds."""
    v = _plain(value)
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointMismatchError(
            f"checkpoint step must be a non-negative integer, got {value!r} "
            f"({type(value).__name__})"
        )
    limit = _INT_MAX.get(dtype, _INT_MAX["int64"])
    if not 0 <= v <= limit:
        raise CheckpointMismatchError(
            f"checkpoint step {v} is outside [0, {limit}] (the state's {dtype} counter)"
        )
    return v


def checked_entry(name: str, gamma: Any, seen: Any, dtype: str = "float32") -> tuple[float, bool]:
    """One tensor's ``(gamma, seen)`` record: gamma a finite number >= 0 that ``dtype`` holds
    (an int or float, not a bool or a string), ``seen`` strictly a boolean."""
    g = _plain(gamma)
    if isinstance(g, bool) or not isinstance(g, (int, float)):
        raise CheckpointMismatchError(
            f"checkpoint gamma of {name!r} must be a number, got {gamma!r} ({type(gamma).__name__})"
        )
    try:
        f = float(g)
    except OverflowError:  # an int beyond float64
        f = math.inf
    limit = _FLOAT_MAX.get(dtype, _FLOAT_MAX["float64"])
    if not (math.isfinite(f) and 0.0 <= f <= limit):
        raise CheckpointMismatchError(
            f"checkpoint gamma of {name!r} must be finite, >= 0 and at most {limit:.6g} (the "
            f"state's {dtype}), got {g!r}: a negative gamma flips the gradient's sign, an "
            "infinite one never clips"
        )
    b = _plain(seen)
    if not isinstance(b, bool):
        raise CheckpointMismatchError(
            f"checkpoint seen of {name!r} must be True or False, got {seen!r} "
            f"({type(seen).__name__})"
        )
    return f, b


def _mapping(checkpoint: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = checkpoint[key]
    if not isinstance(value, Mapping):
        raise CheckpointMismatchError(
            f"{FORMAT} checkpoint entry {key!r} must be a dict, got {type(value).__name__}"
        )
    return value


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
    ``CheckpointMismatchError`` naming missing/unexpected tensors or the invalid value (see
    the module docstring); nothing is half-loaded and nothing is shared with ``checkpoint``.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a dict, got {type(checkpoint).__name__}")
    fmt = checkpoint.get("format")
    if fmt != FORMAT:
        raise CheckpointMismatchError(f"not an {FORMAT} checkpoint (format={fmt!r})")
    for key in ("config", "step", "gamma", "seen"):
        if key not in checkpoint:
            raise CheckpointMismatchError(f"{FORMAT} checkpoint has no {key!r} entry")
    saved_gran = _mapping(checkpoint, "config").get("granularity", "tensor")
    if saved_gran != cfg.granularity:
        raise CheckpointMismatchError(
            f"checkpoint was saved with granularity={saved_gran!r} but the live config has "
            f"granularity={cfg.granularity!r}; the gamma entries do not correspond"
        )
    xp = backend_for([like.gamma])
    n = xp.size(like.gamma)
    keys = _keys(n, cfg, names)
    gamma_in = _mapping(checkpoint, "gamma")
    seen_in = _mapping(checkpoint, "seen")
    missing = [k for k in keys if k not in gamma_in or k not in seen_in]
    unexpected = sorted(str(k) for k in set(gamma_in) | set(seen_in) if k not in set(keys))
    if missing or unexpected:
        raise CheckpointMismatchError(
            "the checkpoint's tensors differ from the live model's", missing, unexpected
        )
    dtype: DType = "float64" if xp.dtype_name(like.gamma) == "float64" else "float32"
    step = checked_step(checkpoint["step"], xp.dtype_name(like.step))
    entries = [checked_entry(k, gamma_in[k], seen_in[k], dtype) for k in keys]
    # Built from Python values: the new arrays never alias the caller's checkpoint.
    return AdaGCState(
        step=xp.asarray(step, "int", like=like.gamma),
        gamma=xp.asarray([g for g, _ in entries], dtype, like=like.gamma),
        seen=xp.asarray([b for _, b in entries], "bool", like=like.gamma),
    )
