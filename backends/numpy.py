"""NumPy backend (float16, float32, float64; bfloat16 through ml_dtypes when installed).

On the CPU there is nothing to sync, so ``scale`` reads the coefficients on the host and
skips tensors whose coefficient is exactly 1 (spec §3 "skipping is allowed"). Norms: one BLAS
dot per tensor, in 262,144-element chunks added in float64 for large tensors (relative error
about 1e-7 at 1.3e8 float32 elements, against 1e-6 required).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adagc._errors import NotWritableError
from adagc._protocol import DType

__all__ = ["BACKEND", "NumpyBackend"]

_DTYPES: dict[str, Any] = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
    "int": np.int64,
}


_NAMES: dict[Any, str] = {}
_BLAS_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})


# Large tensors are summed in chunks of this many elements, each a BLAS dot in the tensor's
# precision, the partial sums added in float64: one BLAS dot over 1.3e8 float32 elements is
# off by ~4e-3 (relative), 262,144-element chunks by ~1e-7 (65,536: 1.6e-8, with 4x the
# Python calls: ~2 ms more per GPT-2 step; 2**20: 9e-7, too close to the 1e-6 bound).
_CHUNK = 1 << 18


def _chunked_sum_squares(g: np.ndarray) -> float:
    """Sum of squares of a large tensor: float32 (or float64) chunk dots, float64 total.
    Half-precision chunks are converted to float32 one at a time (no full-size temporary).
    Overflow is not rescaled: a chunk or the total beyond float32 comes out as Inf."""
    flat = g.reshape(-1)
    half = flat.dtype not in _BLAS_DTYPES
    total = 0.0
    for i in range(0, flat.size, _CHUNK):
        c = flat[i : i + _CHUNK]
        if half:
            c = c.astype(np.float32)
        total += float(np.vdot(c, c))
    return total


class NumpyBackend:
    """The ``ArrayBackend`` protocol for ``numpy.ndarray``."""

    name = "numpy"
    supports_inplace = True

    def quiet(self) -> Any:
        """Silence NumPy's NaN/Inf warnings during a step (non-finite steps are expected)."""
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def asarray(self, data: Any, dtype: DType, like: Any = None) -> np.ndarray:
        return np.array(data, dtype=_DTYPES[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def dtype_name(self, x: np.ndarray) -> str:
        dt = x.dtype
        name = _NAMES.get(dt)
        if name is None:  # ``dtype.name`` is slow; cache it per dtype
            name = _NAMES[dt] = str(dt.name)
        return name

    def size(self, x: np.ndarray) -> int:
        return int(x.size)

    def device(self, x: np.ndarray) -> str:
        return "cpu"

    def sum_squares(self, tensors: Sequence[np.ndarray | None], dtype: DType) -> np.ndarray:
        sums: list[Any] = []
        vdot, native, chunk = np.vdot, _BLAS_DTYPES, _CHUNK
        with np.errstate(over="ignore", invalid="ignore"):
            for g in tensors:
                if g is None:
                    sums.append(0.0)
                elif g.size > chunk:
                    sums.append(_chunked_sum_squares(g))
                elif g.dtype in native:
                    sums.append(vdot(g, g))  # BLAS dot: no temporary, no rescaling
                else:  # float16 / bfloat16 accumulate in float32
                    flat = g.astype(np.float32)
                    sums.append(vdot(flat, flat))
            return np.array(sums, dtype=_DTYPES[dtype])

    def scale(
        self,
        tensors: Sequence[np.ndarray | None],
        coefficients: np.ndarray,
        zero: np.ndarray | None,
        inplace: bool,
    ) -> list[np.ndarray | None]:
        zero_all = zero is not None and bool(zero)
        blas, f32 = _BLAS_DTYPES, np.float32
        h_list = coefficients.tolist()
        if inplace:  # check every array to be written before writing any
            for i, (g, h) in enumerate(zip(tensors, h_list)):
                if g is not None and (zero_all or h != 1.0) and not g.flags.writeable:
                    raise NotWritableError(i, "the NumPy array is read-only (a broadcast view?)")
        out: list[np.ndarray | None] = []
        with np.errstate(over="ignore", invalid="ignore"):
            for g, h in zip(tensors, h_list):
                if g is None:
                    out.append(None)
                elif zero_all:
                    if inplace:
                        g[...] = 0
                        out.append(g)
                    else:
                        out.append(np.zeros_like(g))
                elif h == 1.0:
                    out.append(g)  # nothing to do: not read, not written
                elif g.dtype not in blas:
                    # float16/bfloat16: h in float32, rounded once with the product (a
                    # float16 h flushes small coefficients to 0); buffered, no full temporary.
                    out.append(
                        np.multiply(
                            g, f32(h), out=g if inplace else np.empty_like(g), casting="unsafe"
                        )
                    )
                elif inplace:
                    g *= h  # a Python float keeps g's dtype (NEP 50) and is the fastest form
                    out.append(g)
                else:
                    out.append(g * h)
        return out

    def sqrt(self, x: Any) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.asarray(np.sqrt(x))

    def minimum(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(np.minimum(a, b))

    def where(self, cond: Any, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    def sum(self, x: Any) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(np.sum(x))

    def all(self, x: Any) -> np.ndarray:
        return np.asarray(np.all(x))

    def isfinite(self, x: Any) -> np.ndarray:
        return np.asarray(np.isfinite(x))

    def logical_and(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(np.logical_and(a, b))

    def logical_or(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(np.logical_or(a, b))

    def logical_not(self, a: Any) -> np.ndarray:
        return np.asarray(np.logical_not(a))

    def astype(self, x: Any, dtype: DType) -> np.ndarray:
        return np.asarray(x).astype(_DTYPES[dtype])

    def stack(self, xs: Sequence[Any]) -> np.ndarray:
        return np.stack([np.asarray(x) for x in xs])


BACKEND = NumpyBackend()
