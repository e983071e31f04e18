"""A worked example of porting adagc to a new array library (docs/porting.md).

``array_api_strict`` is the Array API standard with nothing extra, so this backend shows the
protocol can be implemented from the standard alone. It is a third-party backend: it lives
outside the package, registers itself, and is tested by name with the shared suite::

    python -m adagc.conformance --backend tests.porting_example.array_api_strict_backend
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import array_api_strict as xp
import numpy as np

import adagc

_DTYPES = {"float32": xp.float32, "float64": xp.float64, "bool": xp.bool, "int": xp.int64}
CONFORMANCE_DTYPES = ("float32", "float64")  # the standard has no float16


def _scalar(value: Any, like: Any) -> Any:
    """Python scalars become 0-d arrays of ``like``'s dtype (strict mode mixes no types)."""
    if isinstance(value, (bool, int, float)):
        return xp.asarray(value, dtype=like.dtype)
    return value


class ArrayApiStrictBackend:
    name = "array_api_strict"
    supports_inplace = False  # keep the example small: always return new arrays

    def quiet(self) -> Any:
        """Optional: array_api_strict computes with NumPy, whose NaN warnings we silence."""
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def asarray(self, data: Any, dtype: str, like: Any = None) -> Any:
        return xp.asarray(np.asarray(data), dtype=_DTYPES[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(np.asarray(x), copy=True)

    def dtype_name(self, x: Any) -> str:
        for name, dt in _DTYPES.items():
            if x.dtype == dt:
                return name
        return str(x.dtype)

    def size(self, x: Any) -> int:
        return int(x.size)

    def device(self, x: Any) -> Any:
        return x.device

    def sum_squares(self, tensors: Sequence[Any], dtype: str) -> Any:
        out = []
        for g in tensors:
            if g is None:
                out.append(xp.asarray(0.0, dtype=_DTYPES[dtype]))
            else:
                flat = xp.reshape(g, (-1,))
                # Chunks with float64 partial sums: one dot over 1e8 float32 elements drifts
                # by ~3e-3, and the conformance suite asks for 1e-6 (spec, norm accuracy).
                total = xp.asarray(0.0, dtype=xp.float64)
                for i in range(0, flat.shape[0], 1 << 16):
                    c = flat[i : min(i + (1 << 16), flat.shape[0])]
                    total = total + xp.astype(xp.vecdot(c, c), xp.float64)
                out.append(xp.astype(total, _DTYPES[dtype]))
        return xp.stack(out) if out else xp.zeros((0,), dtype=_DTYPES[dtype])

    def scale(
        self, tensors: Sequence[Any], coefficients: Any, zero: Any, inplace: bool
    ) -> list[Any]:
        out: list[Any] = []
        for i, g in enumerate(tensors):
            if g is None:
                out.append(None)
                continue
            h = xp.astype(coefficients[i], g.dtype)
            scaled = g * h
            if zero is not None:
                scaled = xp.where(zero, xp.zeros_like(g), scaled)
            out.append(scaled)
        return out

    def sqrt(self, x: Any) -> Any:
        return xp.sqrt(x)

    def minimum(self, a: Any, b: Any) -> Any:
        return xp.minimum(a, _scalar(b, a))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        like = a if not isinstance(a, (bool, int, float)) else b
        return xp.where(cond, _scalar(a, like), _scalar(b, like))

    def sum(self, x: Any) -> Any:
        return xp.sum(x)

    def all(self, x: Any) -> Any:
        return xp.all(x)

    def isfinite(self, x: Any) -> Any:
        return xp.isfinite(x)

    def logical_and(self, a: Any, b: Any) -> Any:
        return xp.logical_and(a, b)

    def logical_or(self, a: Any, b: Any) -> Any:
        return xp.logical_or(a, b)

    def logical_not(self, a: Any) -> Any:
        return xp.logical_not(a)

    def astype(self, x: Any, dtype: str) -> Any:
        return xp.astype(x, _DTYPES[dtype])

    def stack(self, xs: Sequence[Any]) -> Any:
        return xp.stack(list(xs))


BACKEND = ArrayApiStrictBackend()


def _owns(x: Any) -> bool:
    mod = sys.modules.get("array_api_strict")
    return mod is not None and isinstance(x, mod._array_object.Array)


adagc.register_backend("array_api_strict", __name__, _owns)
