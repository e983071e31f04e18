"""TensorFlow backend: the array protocol for ``tf.Tensor`` and ``tf.IndexedSlices``, eager
and inside ``tf.function`` (Keras 3 on the TensorFlow backend hands out the same gradients).

``tf.Tensor`` is immutable (``supports_inplace = False``) and every operation here is a plain
TensorFlow op, so the core's generic algorithm runs eagerly and traces as is inside a user's
``tf.function``: decisions are ``tf.where`` on tensors, never a Python ``if`` on values.

- Norms: ``sum(g * g)`` per tensor in float32 for float16/bfloat16/float32 tensors (half
  precision is cast first) and float64 for float64 ones, with no rescaling (an overflowing
  float32 sum is Inf, spec §3). Tensors above 65,536 elements are summed in 65,536-element
  float32 chunks whose partial sums are added in float64 (the suite asks for 1e-6 relative
  accuracy up to 1.3e8 elements).
- Scaling: every tensor is multiplied by its coefficient on its device; half-precision tensors
  are multiplied in float32 and rounded once.
- **Sparse gradients** (``tf.IndexedSlices``, what ``tape.gradient`` returns for an embedding
  lookup or ``tf.gather``): the norm is that of the dense gradient they stand for, so rows at
  duplicate indices are summed first (``tf.unique`` + ``unsorted_segment_sum``, as Keras'
  optimizers deduplicate; XLA compiles it too); the result stays sparse:
  ``tf.IndexedSlices`` with the same indices and dense shape and the values scaled (scaling
  is linear, so duplicates need no merging there).
- Graph mode: :func:`jit_update` compiles the step with ``tf.function`` through
  ``adagc.jit_step``, which handles tied tensors and ``nonfinite="raise"`` outside the trace.
  ``update`` inside a user's own ``tf.function`` works too (ties by object identity still
  work there); ``nonfinite="raise"`` there is refused with ``adagc.TracedRaiseError``.
- XLA (``tf.function(jit_compile=True)``): see :func:`jit_update` for the bound on the number
  of tensors per compiled step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from adagc._graph import JitStep, jit_step, traced_raise_error
from adagc._protocol import DType

__all__ = [
    "BACKEND",
    "CONFORMANCE_DTYPES",
    "TensorFlowBackend",
    "VariableState",
    "is_traced",
    "jit_update",
    "make_like",
]

_DTYPES: dict[str, Any] = {
    "float16": tf.float16,
    "bfloat16": tf.bfloat16,
    "float32": tf.float32,
    "float64": tf.float64,
    "bool": tf.bool,
    "int": tf.int64,  # the step counter and num_clipped: 64-bit, as NumPy and torch
}
_HALF = frozenset({tf.float16, tf.bfloat16})
_NAMES: dict[Any, str] = {}
_CHUNK = 1 << 16

CONFORMANCE_DTYPES: tuple[str, ...] = tuple(
    os.environ.get("ADAGC_TF_DTYPES", "float32,float64,float16,bfloat16").split(",")
)
"""Every float TensorFlow has (the suite compares 16-bit runs with its 16-bit tolerances);
``ADAGC_TF_DTYPES=float32`` narrows a run (the nox row's ``--jit`` pass, to keep CI short)."""


def is_traced(x: Any) -> bool:
    """Whether ``x`` is a symbolic tensor (inside ``tf.function``), not an eager one."""
    if isinstance(x, tf.IndexedSlices):
        x = x.values
    return isinstance(x, tf.Tensor) and not hasattr(x, "numpy")


def _sum_squares_f32(flat: tf.Tensor) -> tf.Tensor:
    """sum(x**2) of a float32 or float64 vector, float32 chunks added in float64 when long."""
    n = flat.shape[0]
    if n is None or n <= _CHUNK:
        return tf.reduce_sum(flat * flat)
    main = (n // _CHUNK) * _CHUNK
    body = tf.reshape(flat[:main], (-1, _CHUNK))
    parts = tf.cast(tf.reduce_sum(body * body, axis=1), tf.float64)
    total = tf.reduce_sum(parts)
    if main < n:
        tail = flat[main:]
        total = total + tf.cast(tf.reduce_sum(tail * tail), tf.float64)
    return total


def _materialize(v: tf.Tensor) -> tf.Tensor:
    """``v`` unchanged, as a buffer XLA cannot fuse into its consumers (graph mode only).

    Without it XLA fuses the whole [T]-vector computation (the T stacked norms, the where
    chain of the coefficients) into each of the T per-tensor products, so compile time
    grows with T**2 (1,000 tensors did not compile in 20 minutes on 2 cores; JAX has the
    same problem, see ``adagc.backends.jax._materialize``). A sort is never fused: the
    float32/64 bits are sorted as integers (a total order, NaN included) with ``top_k`` and
    scattered back to their positions, which restores ``v`` bit for bit in O(T log T)."""
    n = v.shape[0]
    if v.shape.rank != 1 or n is None or n < 2 or not is_traced(v):
        return v
    int_type = tf.int64 if v.dtype == tf.float64 else tf.int32
    bits = tf.bitcast(v, int_type)
    ordered, order = tf.math.top_k(bits, k=n, sorted=True)
    restored = tf.scatter_nd(order[:, None], ordered, [n])
    return tf.bitcast(restored, v.dtype)


def _dense_values(g: tf.IndexedSlices) -> tf.Tensor:
    """The rows of the dense gradient an ``IndexedSlices`` stands for, duplicates summed."""
    unique, position = tf.unique(tf.reshape(g.indices, (-1,)))
    return tf.math.unsorted_segment_sum(g.values, position, tf.shape(unique)[0])


class TensorFlowBackend:
    """The ``ArrayBackend`` protocol for ``tf.Tensor`` (and ``tf.IndexedSlices`` gradients)."""

    name = "tensorflow"
    supports_inplace = False

    # -- host <-> backend --------------------------------------------------------------
    def asarray(self, data: Any, dtype: DType, like: Any = None) -> tf.Tensor:
        host = np.array(data)  # a copy: the result never shares memory with ``data``
        device = getattr(like, "device", "") if like is not None else ""
        if not device:  # no ``like``, or a symbolic one: TensorFlow places it
            return tf.constant(host, dtype=_DTYPES[dtype])
        with tf.device(device):
            return tf.identity(tf.constant(host, dtype=_DTYPES[dtype]))

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, tf.IndexedSlices):
            x = tf.convert_to_tensor(x)  # the dense gradient (duplicates summed)
        if is_traced(x):
            raise traced_raise_error("tf.function")
        arr = np.asarray(x.numpy())
        if x.dtype == tf.bfloat16:  # NumPy cannot compute with ml_dtypes' bfloat16
            arr = arr.astype(np.float32)
        return np.array(arr, copy=True)

    def dtype_name(self, x: Any) -> str:
        dt = x.dtype  # a tf.DType; a string for Keras variables
        name = _NAMES.get(dt)
        if name is None:
            name = _NAMES[dt] = str(tf.as_dtype(dt).name)
        return name

    def size(self, x: Any) -> int:
        shape = x.shape  # a TensorShape; a tuple for Keras variables
        n = (shape if isinstance(shape, tf.TensorShape) else tf.TensorShape(shape)).num_elements()
        if n is None:
            raise ValueError(
                f"adagc needs static shapes, got a tensor of shape {x.shape} (inside "
                "tf.function, do not relax the shapes of the gradients or the state)"
            )
        return int(n)

    def device(self, x: Any) -> Any:
        name = getattr(x, "device", "")
        if not name:
            return None  # a symbolic tensor has no device yet
        spec = tf.DeviceSpec.from_string(name)
        return (spec.device_type, spec.device_index)

    # -- multi-tensor operations ---------------------------------------------------------
    def sum_squares(self, tensors: Sequence[Any], dtype: DType) -> tf.Tensor:
        out_dtype = _DTYPES[dtype]
        sums = []
        for g in tensors:
            if g is None:
                sums.append(tf.zeros((), out_dtype))
                continue
            if isinstance(g, tf.IndexedSlices):
                g = _dense_values(g)
            if g.dtype in _HALF:
                g = tf.cast(g, tf.float32)  # a float16 sum of squares overflows at 65504
            sums.append(tf.cast(_sum_squares_f32(tf.reshape(g, (-1,))), out_dtype))
        return _materialize(tf.stack(sums))

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
            sparse = g if isinstance(g, tf.IndexedSlices) else None
            v = sparse.values if sparse is not None else g
            h = coefficients[i]
            if v.dtype in _HALF:
                r = tf.cast(tf.cast(v, tf.float32) * tf.cast(h, tf.float32), v.dtype)
            else:
                r = v * tf.cast(h, v.dtype)
            if zero is not None:  # where, not multiply: 0 * Inf is NaN
                r = tf.where(zero, tf.zeros_like(r), r)
            if sparse is not None:
                r = tf.IndexedSlices(r, sparse.indices, sparse.dense_shape)
            out.append(r)
        return out

    # -- small-vector operations ---------------------------------------------------------
    def sqrt(self, x: Any) -> tf.Tensor:
        return tf.sqrt(x)

    def minimum(self, a: Any, b: Any) -> tf.Tensor:
        return tf.minimum(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> tf.Tensor:
        # A Python float takes the other branch's dtype (a graph op will not mix them).
        if isinstance(a, (int, float)) and isinstance(b, tf.Tensor):
            a = tf.constant(a, b.dtype)
        elif isinstance(b, (int, float)) and isinstance(a, tf.Tensor):
            b = tf.constant(b, a.dtype)
        return tf.where(cond, a, b)

    def sum(self, x: Any) -> tf.Tensor:
        return tf.reduce_sum(x)

    def all(self, x: Any) -> tf.Tensor:
        return tf.reduce_all(x)

    def isfinite(self, x: Any) -> tf.Tensor:
        return tf.math.is_finite(x)

    def logical_and(self, a: Any, b: Any) -> tf.Tensor:
        return tf.logical_and(a, b)

    def logical_or(self, a: Any, b: Any) -> tf.Tensor:
        return tf.logical_or(a, b)

    def logical_not(self, a: Any) -> tf.Tensor:
        return tf.logical_not(a)

    def astype(self, x: Any, dtype: DType) -> tf.Tensor:
        return tf.cast(x, _DTYPES[dtype])

    def stack(self, xs: Sequence[Any]) -> tf.Tensor:
        return tf.stack(list(xs))


BACKEND = TensorFlowBackend()


def _xla_default() -> bool:
    return os.environ.get("ADAGC_TF_JIT_COMPILE") == "1"


def jit_update(cfg: Any, *, jit_compile: bool | None = None) -> JitStep:
    """``fn(grads, state, names=None) -> (clipped, state, stats)``: ``adagc.update`` inside a
    ``tf.function`` (``--jit`` of the conformance suite), built with ``adagc.jit_step``, so
    ties and ``nonfinite="raise"`` are handled outside the trace.

    ``jit_compile=True`` compiles with XLA (default: ``ADAGC_TF_JIT_COMPILE=1``).
    """
    xla = _xla_default() if jit_compile is None else jit_compile
    compile: Callable[..., Any] = functools.partial(tf.function, jit_compile=xla)
    return jit_step(compile, cfg, backend=BACKEND)


class VariableState(tf.Module):
    """The AdaGC state in ``tf.Variable``s, for steps compiled by ``tf.function`` (a Keras
    ``train_step`` under ``model.fit``): a compiled step cannot hand a new Python state to the
    next call, but it can assign variables. A ``tf.Module``, so ``tf.train.Checkpoint`` saves
    it; ``adagc.to_portable(vs.state, vs.cfg, names)`` gives the portable checkpoint.

    ``variables``: the model's trainable variables (or gradients): only their number and
    dtypes are read. Safe to build inside a ``tf.function`` (the variables are created
    outside the trace, once). ``nonfinite="raise"`` cannot work inside a compiled step
    (``adagc.TracedRaiseError``); use ``"propagate"`` or ``"zero"`` there.
    """

    def __init__(
        self,
        variables: Sequence[Any],
        cfg: Any = None,
        *,
        names: Sequence[str] | None = None,
        name: str = "adagc",
    ) -> None:
        from adagc import AdaGCConfig, init

        super().__init__(name=name)
        self.cfg = AdaGCConfig() if cfg is None else cfg
        self.names = list(names) if names is not None else None
        with tf.init_scope():  # outside any trace: the variables exist once
            dtypes = [tf.as_dtype(getattr(v, "dtype", tf.float32)) for v in variables]
            state = init([tf.zeros((0,), d) for d in dtypes], self.cfg, backend=BACKEND)
            self.step = tf.Variable(state.step, trainable=False, name="step")
            self.gamma = tf.Variable(state.gamma, trainable=False, name="gamma")
            self.seen = tf.Variable(state.seen, trainable=False, name="seen")

    @property
    def state(self) -> Any:
        """The current ``AdaGCState`` (tensors read from the variables)."""
        from adagc import AdaGCState

        return AdaGCState(
            tf.convert_to_tensor(self.step),
            tf.convert_to_tensor(self.gamma),
            tf.convert_to_tensor(self.seen),
        )

    def assign(self, state: Any) -> None:
        """Write an ``AdaGCState`` (e.g. from ``adagc.from_portable``) into the variables."""
        self.step.assign(state.step)
        self.gamma.assign(state.gamma)
        self.seen.assign(state.seen)

    def clip(self, grads: Sequence[Any]) -> tuple[list[Any], Any]:
        """One AdaGC step on ``grads``: returns ``(clipped, stats)`` and keeps the new state."""
        from adagc import update

        clipped, new, stats = update(
            list(grads), self.state, self.cfg, backend=BACKEND, names=self.names
        )
        self.assign(new)
        return clipped, stats


def make_like(device: str) -> tf.Tensor:
    """A tensor on ``device`` (``"cpu"``, ``"gpu"``, ``"cuda:1"``) for ``--device``."""
    kind, _, index = device.partition(":")
    kind = {"cuda": "gpu"}.get(kind.lower(), kind.lower())
    found = tf.config.list_logical_devices(kind.upper())
    if not found:
        raise ValueError(f"TensorFlow has no {kind!r} devices here")
    with tf.device(found[int(index) if index else 0].name):
        return tf.identity(tf.zeros((0,)))
