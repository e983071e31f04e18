"""The array protocol every backend implements (one module per framework in ``backends/``).

The algorithm in ``_algorithm.py`` is written once against this protocol. It is
multi-tensor: the two heavy operations take the whole list of gradients, so a backend can
fuse them (torch foreach, one XLA computation, CuPy kernels). Everything else works on small
vectors of length T (one entry per tensor) and 0-d scalars.

Backend arrays must have a hashable ``.dtype`` attribute (the Array API standard's; the core
groups gradients by it before asking ``dtype_name``), and Python's arithmetic and comparison
operators (``+ - * /``, ``< <= > >= ==``) with each other and with Python scalars, keeping the
array's floating dtype (NumPy >= 2, torch, JAX and Paddle all do).

Optional members a backend may add:

- ``fused_update(grads, state, cfg, *, inplace, reducer, names)``: a fused implementation of the
  whole step with ``update``'s result, or ``None`` to decline (the generic path then runs and
  stays its oracle in the tests);
- ``quiet()``: a context manager silencing the framework's NaN/Inf warnings during a step;
- ``accepts``: names of other registered frameworks whose arrays this backend takes
  (JAX: ``("numpy",)``), so ``backend=`` with those arrays is not refused;
- ``compiling()``: True while a graph compiler traces the step (``torch.compile``): the core
  then skips the identity-based tie check, whose per-gradient ``id()`` a tracer would guard
  on (a recompile every step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Array", "ArrayBackend", "DType", "Reducer"]

Array = Any
"""A backend array (numpy.ndarray, torch.Tensor, jax.Array, paddle.Tensor, cupy.ndarray)."""

DType = Literal["float16", "bfloat16", "float32", "float64", "bool", "int"]
"""Dtype names used across the protocol.

``"int"`` is the dtype of the step counter ``state.step`` and of ``stats.num_clipped``: a
signed integer of at least 32 bits, the framework's usual one (int64 for NumPy, torch, Paddle
and TensorFlow; int32 for JAX without x64). It must hold ``warmup_steps`` and the number of
tensors, compare with Python ints (``step < warmup_steps``), add them (``step + 1``) and
``sum`` a vector of them; ``asarray(0, "int")`` makes a 0-d one. Checkpoints store the step
as a Python int, so the width does not travel with them."""


@runtime_checkable
class ArrayBackend(Protocol):
    """What a framework must provide for AdaGC. See ``docs/porting.md`` for a worked example."""

    name: str
    """Short name, e.g. ``"numpy"``; used in errors and by the conformance suite."""

    supports_inplace: bool
    """Whether ``scale(..., inplace=True)`` may mutate the input arrays (False for JAX)."""

    # -- host <-> backend --------------------------------------------------------------
    def asarray(self, data: Any, dtype: DType, like: Array | None = None) -> Array:
        """A new array from host data (scalar, nested list or NumPy array), on ``like``'s
        device. It must not share memory with ``data``."""
        ...

    def to_numpy(self, x: Array) -> Any:
        """A NumPy copy of ``x`` (a device-to-host read; never called in a step except for
        ``nonfinite="raise"``)."""
        ...

    def dtype_name(self, x: Array) -> str:
        """The dtype of ``x`` as a name: ``"float32"``, ``"bfloat16"``, ... ."""
        ...

    def size(self, x: Array) -> int:
        """Number of elements of ``x`` (static shape information, no sync)."""
        ...

    def device(self, x: Array) -> Any:
        """An object that compares equal for arrays on the same device."""
        ...

    # -- multi-tensor operations ---------------------------------------------------------
    def sum_squares(self, tensors: Sequence[Array | None], dtype: DType) -> Array:
        """``[T]`` vector of sum(g_i**2) in ``dtype`` (0 for ``None``). Accumulate in float32
        for float16/bfloat16/float32 tensors and float64 for float64 ones, with no rescaling,
        so that an overflow shows up as Inf."""
        ...

    def scale(
        self,
        tensors: Sequence[Array | None],
        coefficients: Array,
        zero: Array | None,
        inplace: bool,
    ) -> list[Array | None]:
        """Return ``g_i * h_i`` in each tensor's own dtype; ``None`` stays ``None``.

        ``zero`` is ``None`` or a bool scalar; where it is true every tensor becomes exactly 0
        (with ``where``, since 0 * Inf is NaN). A tensor whose coefficient is 1 may be returned
        as is (no copy). With ``inplace`` the input arrays are written and returned; every
        array to be written is checked first (``NotWritableError(index, why)``), so a failed
        in-place step writes nothing.
        """
        ...

    # -- small-vector operations ---------------------------------------------------------
    def sqrt(self, x: Array) -> Array: ...
    def minimum(self, a: Array, b: Array | float) -> Array: ...
    def where(self, cond: Array, a: Array | float, b: Array | float) -> Array: ...
    def sum(self, x: Array) -> Array:
        """Sum of a vector as a 0-d array."""
        ...

    def all(self, x: Array) -> Array:
        """Logical AND over a bool vector as a 0-d bool array."""
        ...

    def isfinite(self, x: Array) -> Array: ...
    def logical_and(self, a: Array, b: Array) -> Array: ...
    def logical_or(self, a: Array, b: Array) -> Array: ...
    def logical_not(self, a: Array) -> Array: ...
    def astype(self, x: Array, dtype: DType) -> Array: ...
    def stack(self, xs: Sequence[Array]) -> Array:
        """Stack 0-d arrays into a vector."""
        ...


class Reducer(Protocol):
    """Collectives for sharded gradients, supplied by a framework adapter (spec §2).

    ``sum_squares`` receives the ``[T]`` vector of this rank's partial sums of squares and
    returns the sums of squares of the full tensors, using one collective per distinct process
    group (tensors replicated within a group are counted once). ``sum`` is a plain SUM
    all-reduce over all ranks of a short vector (``shard_mode="local"``).

    A reducer may set ``stages = True`` (pipeline parallelism: this rank's tensors are one
    stage of a model whose other tensors live on other ranks). ``sum`` then also runs in
    ``shard_mode="exact"``, over the stages, on the 2-element ``[G^2, non-finite flag]``, so
    the warmup global norm covers the whole model and every stage takes the same non-finite
    decision (and so keeps the same step counter k).
    """

    sum_squares: Callable[[Array], Array]
    sum: Callable[[Array], Array]
