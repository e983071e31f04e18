"""JAX backend: the array protocol for ``jax.Array`` (and for tracers under ``jax.jit``).

JAX arrays are immutable (``supports_inplace = False``) and every operation here is a pure
``jax.numpy`` call, so the core's generic algorithm traces as is: phase, clip and non-finite
decisions are ``jnp.where`` on arrays, with no Python ``if`` on values.

- Norms: ``sum(g * g)`` per tensor, accumulated in float32 for float16/bfloat16 (cast first)
  and in the tensor's own dtype otherwise, with no rescaling, so an overflowing float32 sum of
  squares is Inf (spec §3). Eight or more small tensors (up to 16,384 elements) of one shape,
  dtype and sharding are stacked and reduced along rows instead, in one kernel (``_stacks``).
- Scaling: every tensor is multiplied by its coefficient on the device (there is nothing to
  skip without a host read); half-precision tensors are multiplied in float32 and rounded once.
- ``fused_update``: outside a trace, ``adagc.update`` on JAX arrays runs the same generic
  algorithm compiled by XLA as one computation (cached per gradient layout and config), instead
  of dispatching a few thousand small ops one by one. ``update(..., fused=False)`` runs the
  generic algorithm op by op: the fused path's oracle in the conformance suite. Under a trace
  (inside the user's ``jax.jit``, or the optax adapter) the generic path is traced into the
  enclosing computation, which is the same thing.

float64 exists only with ``jax.config.update("jax_enable_x64", True)`` (or
``JAX_ENABLE_X64=1``); without it the state's gamma is float32 and its step int32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adagc._algorithm import generic_update
from adagc._config import AdaGCConfig
from adagc._graph import JitStep, jit_step, traced_raise_error
from adagc._protocol import DType, Reducer
from adagc._types import AdaGCState, AdaGCStats

__all__ = [
    "BACKEND",
    "CONFORMANCE_DTYPES",
    "JaxBackend",
    "is_traced",
    "jit_update",
    "make_like",
]

_HALF = frozenset({"float16", "bfloat16"})
_NAMES: dict[Any, str] = {}


def _x64() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


def _jnp_dtype(dtype: DType) -> Any:
    if dtype == "int":
        return jnp.int64 if _x64() else jnp.int32
    if dtype == "bool":
        return jnp.bool_
    return jnp.dtype(dtype)


CONFORMANCE_DTYPES: tuple[str, ...] = ("float32", "float64") if _x64() else ("float32",)
"""float64 is tested where x64 is enabled (the nox row sets ``JAX_ENABLE_X64=1``)."""


def is_traced(x: Any) -> bool:
    """Whether ``x`` is a tracer (inside ``jax.jit``, ``shard_map``, ``grad``, ...)."""
    return isinstance(x, jax.core.Tracer)


def _materialize(v: Any) -> Any:
    """``v`` unchanged, computed once. XLA otherwise fuses the whole [T]-vector computation
    (the sum of T stacked norms, the where-chain of the coefficients) into each of the T
    per-tensor products, so compile time and work grow with T**2 (9100 HLO lines for 50
    tensors, minutes for 1,000). A sort by index is not fusible and costs O(T log T);
    ``optimization_barrier`` does not survive XLA:CPU's pipeline, and ``cond`` would read its
    predicate on the host on GPUs."""
    if v.ndim != 1 or v.shape[0] < 2:
        return v
    index = jax.lax.iota(jnp.int32, v.shape[0])
    return jax.lax.sort((index, v), num_keys=1)[1]


_STACK_MAX = 1 << 14
"""Tensors of at most this many elements (64 KiB of float32) may be reduced in a stack."""
_STACK_MIN = 8
"""Fewest tensors of one shape, dtype and sharding that are stacked."""


def _sharding(g: Any) -> Any:
    """The sharding JAX's type carries (explicit-sharding mode), part of a stack's key: a
    stack of differently sharded operands is an error there. ``None`` where there is none."""
    try:
        return getattr(g.aval, "sharding", None)
    except AttributeError:
        return None


def _stacks(tensors: Sequence[Any]) -> list[list[int]]:
    """Positions of the small tensors to reduce as stacks, one list per (shape, dtype,
    sharding) with at least ``_STACK_MIN`` members. XLA:CPU runs one kernel or more per
    reduction, at ~1.5 us each; a copy of up to 64 KiB costs less than that. On 4,000 tensors
    of 4 sizes: 4.9 ms against 5.5 ms for the norms, and a quarter of the compile time."""
    groups: dict[Any, list[int]] = {}
    for i, g in enumerate(tensors):
        if g is not None and g.size <= _STACK_MAX:
            groups.setdefault((g.shape, g.dtype, _sharding(g)), []).append(i)
    return [idx for idx in groups.values() if len(idx) >= _STACK_MIN]


class JaxBackend:
    """The ``ArrayBackend`` protocol for ``jax.Array``."""

    name = "jax"
    accepts = ("numpy",)  # jnp takes NumPy arrays: backend="jax" on them is fine
    supports_inplace = False

    # -- host <-> backend --------------------------------------------------------------
    def asarray(self, data: Any, dtype: DType, like: Any = None) -> jax.Array:
        out = jnp.asarray(np.array(data), dtype=_jnp_dtype(dtype))  # np.array: a copy
        if isinstance(like, jax.Array) and not is_traced(like):
            devices = like.devices()
            if len(devices) == 1:  # a sharded ``like`` keeps the result on the default device
                out = jax.device_put(out, next(iter(devices)))
        return out

    def to_numpy(self, x: Any) -> np.ndarray:
        if is_traced(x):  # nonfinite="raise" under jax.jit: say so, not a conversion error
            raise traced_raise_error("jax.jit")
        arr = np.asarray(jax.device_get(x))
        if arr.dtype.name == "bfloat16":  # NumPy cannot compute with ml_dtypes' bfloat16
            arr = arr.astype(np.float32)
        return np.array(arr, copy=True)

    def dtype_name(self, x: Any) -> str:
        dt = x.dtype
        name = _NAMES.get(dt)
        if name is None:
            name = _NAMES[dt] = str(jnp.dtype(dt).name)
        return name

    def size(self, x: Any) -> int:
        return int(x.size)  # static shape, also on tracers

    def device(self, x: Any) -> Any:
        if is_traced(x):
            return None  # a tracer has no concrete device
        return frozenset(x.devices())

    # -- multi-tensor operations ---------------------------------------------------------
    def sum_squares(self, tensors: Sequence[Any], dtype: DType) -> jax.Array:
        out_dtype = _jnp_dtype(dtype)
        # Small tensors that share a shape, dtype and sharding are reduced as one stack
        # (_stacks); the rest one reduction each. The vector is put back in order at the end.
        stacks = _stacks(tensors)
        stacked = {i for idx in stacks for i in idx}
        parts, order = [], []
        singles = []
        for i, g in enumerate(tensors):
            if i in stacked:
                continue
            order.append(i)
            if g is None:
                singles.append(jnp.zeros((), out_dtype))
                continue
            if self.dtype_name(g) in _HALF:
                g = g.astype(jnp.float32)  # a float16 sum of squares overflows at 65504
            # A fused square-and-reduce, not vdot: dot products of sharded operands are an
            # error in JAX's explicit-sharding mode, and a reduction needs no reshape.
            singles.append(jnp.sum(g * g).astype(out_dtype))
        if singles:
            parts.append(jnp.stack(singles))
        for idx in stacks:
            x = jnp.stack([tensors[i] for i in idx]).reshape(len(idx), -1)
            if self.dtype_name(x) in _HALF:
                x = x.astype(jnp.float32)
            parts.append(jnp.sum(x * x, axis=1).astype(out_dtype))
            order += idx
        sq = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        if stacks:
            sq = sq[np.argsort(np.asarray(order))]  # a static permutation: one gather
        return _materialize(sq)

    def scale(
        self,
        tensors: Sequence[Any],
        coefficients: Any,
        zero: Any,
        inplace: bool,
    ) -> list[Any]:
        coefficients = _materialize(coefficients)
        out: list[Any] = []
        for i, g in enumerate(tensors):
            if g is None:
                out.append(None)
                continue
            h = coefficients[i]
            if self.dtype_name(g) in _HALF:
                r = (g.astype(jnp.float32) * h.astype(jnp.float32)).astype(g.dtype)
            else:
                r = g * h.astype(g.dtype)
            if zero is not None:  # where, not multiply: 0 * Inf is NaN
                r = jnp.where(zero, jnp.zeros_like(r), r)
            out.append(r)
        return out

    # -- small-vector operations ---------------------------------------------------------
    def sqrt(self, x: Any) -> jax.Array:
        return jnp.sqrt(x)

    def minimum(self, a: Any, b: Any) -> jax.Array:
        return jnp.minimum(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> jax.Array:
        return jnp.where(cond, a, b)

    def sum(self, x: Any) -> jax.Array:
        return jnp.sum(x)

    def all(self, x: Any) -> jax.Array:
        return jnp.all(x)

    def isfinite(self, x: Any) -> jax.Array:
        return jnp.isfinite(x)

    def logical_and(self, a: Any, b: Any) -> jax.Array:
        return jnp.logical_and(a, b)

    def logical_or(self, a: Any, b: Any) -> jax.Array:
        return jnp.logical_or(a, b)

    def logical_not(self, a: Any) -> jax.Array:
        return jnp.logical_not(a)

    def astype(self, x: Any, dtype: DType) -> jax.Array:
        return jnp.asarray(x).astype(_jnp_dtype(dtype))

    def stack(self, xs: Sequence[Any]) -> jax.Array:
        return jnp.stack(list(xs))

    # -- the compiled whole step ---------------------------------------------------------
    def fused_update(
        self,
        grads: Sequence[Any],
        state: AdaGCState,
        cfg: AdaGCConfig,
        *,
        inplace: bool,
        reducer: Reducer | None,
        names: Sequence[str] | None,
    ) -> tuple[list[Any], AdaGCState, AdaGCStats] | None:
        """The generic step compiled by XLA, or ``None`` (generic path) under a trace or with
        a reducer (collectives belong to the caller's ``shard_map``)."""
        if reducer is not None or any(is_traced(x) for x in (*grads, *state) if x is not None):
            return None
        return _jitted_step(grads, state, cfg, names)


BACKEND = JaxBackend()


@lru_cache(maxsize=64)
def _compiled(cfg: AdaGCConfig, through_update: bool = False) -> JitStep:
    """One jitted step per config (XLA caches one executable per gradient layout in it),
    built with ``adagc.jit_step``: ties and ``"raise"`` are handled outside the trace.

    ``through_update`` traces the public ``adagc.update`` (dispatch on tracers included), the
    way a user's own ``jax.jit`` around it does; otherwise ``generic_update`` directly.
    """
    body = None if through_update else _generic_body
    return jit_step(jax.jit, cfg, backend=BACKEND, body=body)


def _generic_body(used: list[Any], state: AdaGCState, cfg: AdaGCConfig) -> Any:
    return generic_update(used, state, cfg, BACKEND)


def _jitted_step(
    grads: Sequence[Any],
    state: AdaGCState,
    cfg: AdaGCConfig,
    names: Sequence[str] | None,
    through_update: bool = False,
) -> tuple[list[Any], AdaGCState, AdaGCStats]:
    return _compiled(cfg, through_update)(grads, state, names)


def jit_update(cfg: AdaGCConfig) -> Callable[[list[Any], AdaGCState], Any]:
    """``fn(grads, state) -> (clipped, state, stats)``: ``adagc.update`` called inside a
    user's ``jax.jit`` (``--jit`` of the conformance suite), through ``adagc.jit_step``: ties
    and ``"raise"`` are handled outside the trace, as a caller of ``jax.jit`` must."""

    def fn(grads: list[Any], state: AdaGCState) -> Any:
        return _jitted_step(grads, state, cfg, None, through_update=True)

    return fn


def make_like(device: str) -> jax.Array:
    """An array on ``device`` (``"cpu"``, ``"gpu"``, ``"cuda:1"``, ``"tpu"``) for ``--device``."""
    kind, _, index = device.partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    try:
        devices = jax.devices(kind)
    except RuntimeError as exc:
        raise ValueError(f"JAX has no {kind!r} devices here ({exc})") from exc
    return jax.device_put(jnp.zeros(0), devices[int(index) if index else 0])
