"""PaddlePaddle backend (``paddle.Tensor``, dynamic-graph mode), written directly against the
protocol: array-api-compat does not cover Paddle.

Paddle quirks handled here:

- ``squared_l2_norm`` (the primitive ``paddle.nn.ClipGradByGlobalNorm`` uses) returns a
  1-element ``[1]`` tensor, not a 0-d one, and has no float16/bfloat16 CPU kernel: half
  gradients are cast to float32 first, which is also the precision docs/spec.md asks for (a
  float16 sum of squares overflows at 65504);
- ``paddle.where`` turns a Python scalar into a *float32* tensor (an H2D copy on GPU and a
  type-promotion warning next to float64); scalars are filled in the other operand's dtype;
- ``paddle.minimum`` takes no Python scalar;
- float16 has no ``multiply``/``where`` kernels on the CPU, and bfloat16 ``.numpy()`` returns
  raw ``uint16`` bits: scaling uses ``scale``/``scale_`` there and bfloat16 goes through
  float32 on its way to NumPy.

On the CPU there is nothing to sync, so ``scale`` reads the coefficients h_i on the host and
skips tensors whose coefficient is exactly 1 (spec §3 "skipping is allowed"), using the same
``scale_`` kernel for the rest. On an accelerator it multiplies every tensor by its
coefficient on the device (no ``.item()``, no host read).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import paddle

from adagc._protocol import DType

__all__ = ["BACKEND", "CONFORMANCE_DTYPES", "PaddleBackend", "make_like"]

CONFORMANCE_DTYPES = ("float32", "float64")
"""float16 and bfloat16 are covered by the suite's half-precision test and tests/paddle
(the goldens' rtol of 1e-5 is below half precision)."""

_DTYPES: dict[str, Any] = {
    "float16": paddle.float16,
    "bfloat16": paddle.bfloat16,
    "float32": paddle.float32,
    "float64": paddle.float64,
    "bool": paddle.bool,
    "int": paddle.int64,
}
_NAMES: dict[Any, str] = {
    paddle.float16: "float16",
    paddle.bfloat16: "bfloat16",
    paddle.float32: "float32",
    paddle.float64: "float64",
    paddle.bool: "bool",
    paddle.int32: "int32",
    paddle.int64: "int64",
}
_HALF = (paddle.float16, paddle.bfloat16)
_sq_l2 = getattr(getattr(paddle, "_C_ops", None), "squared_l2_norm", None)


def _sum_squares_one(g: paddle.Tensor) -> paddle.Tensor:
    """sum(g**2) as a ``[1]`` tensor, accumulated in float32 for half gradients, no rescaling."""
    if g.dtype in _HALF:
        g = g.astype(paddle.float32)
    if _sq_l2 is not None:
        return _sq_l2(g)  # [1]; the kernel ClipGradByGlobalNorm uses
    return paddle.sum(g * g).reshape([1])


class PaddleBackend:
    """The ``ArrayBackend`` protocol for ``paddle.Tensor``.

    Args:
        host_skip: on CPU tensors, read the coefficients on the host and skip h_i == 1
            (the default). ``False`` forces the device path everywhere (used in tests to run
            the accelerator code path, which must never read a value on the host).
    """

    name = "paddle"
    supports_inplace = True

    def __init__(self, host_skip: bool = True) -> None:
        self.host_skip = host_skip

    # -- host <-> backend --------------------------------------------------------------
    def asarray(self, data: Any, dtype: DType, like: Any = None) -> paddle.Tensor:
        if dtype == "bfloat16":  # NumPy has no bfloat16: go through float32
            out = paddle.to_tensor(np.asarray(data, dtype=np.float32), place=_place(like))
            return out.astype(paddle.bfloat16)
        np_dtype = {"bool": np.bool_, "int": np.int64}.get(dtype, dtype)
        return paddle.to_tensor(np.asarray(data, dtype=np_dtype), place=_place(like))

    def to_numpy(self, x: paddle.Tensor) -> np.ndarray:
        if x.dtype == paddle.bfloat16:
            x = x.astype(paddle.float32)
        return np.array(x.numpy(), copy=True)

    def dtype_name(self, x: paddle.Tensor) -> str:
        return _NAMES.get(x.dtype) or str(x.dtype).replace("paddle.", "")

    def size(self, x: paddle.Tensor) -> int:
        return math.prod(x.shape)  # static shape: no device read

    def device(self, x: paddle.Tensor) -> str:
        return str(x.place)

    # -- multi-tensor operations ---------------------------------------------------------
    def sum_squares(self, tensors: Sequence[paddle.Tensor | None], dtype: DType) -> paddle.Tensor:
        want = _DTYPES[dtype]
        parts: list[paddle.Tensor | None] = []
        zero: paddle.Tensor | None = None
        for g in tensors:
            if g is None:
                parts.append(None)
                continue
            s = _sum_squares_one(g)
            s = s if s.dtype == want else s.astype(want)
            parts.append(s)
            if zero is None:
                zero = paddle.zeros_like(s)  # on the gradients' device
        if zero is None:
            return paddle.zeros([len(tensors)], dtype=want)
        return paddle.concat([zero if p is None else p for p in parts])

    def scale(
        self,
        tensors: Sequence[paddle.Tensor | None],
        coefficients: paddle.Tensor,
        zero: paddle.Tensor | None,
        inplace: bool,
    ) -> list[paddle.Tensor | None]:
        if self.host_skip and coefficients.place.is_cpu_place():
            return _scale_host(tensors, coefficients, zero, inplace)
        return _scale_device(tensors, coefficients, zero, inplace)

    # -- small-vector operations ---------------------------------------------------------
    def sqrt(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.sqrt(x)

    def minimum(self, a: paddle.Tensor, b: paddle.Tensor | float) -> paddle.Tensor:
        return paddle.minimum(a, _like(b, a))

    def where(self, cond: paddle.Tensor, a: Any, b: Any) -> paddle.Tensor:
        if not isinstance(a, paddle.Tensor):
            if not isinstance(b, paddle.Tensor):
                a = paddle.full_like(cond, a, dtype=paddle.float32)
            a = _like(a, b)
        b = _like(b, a)
        return paddle.where(cond, a, b)

    def sum(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.sum(x)

    def all(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.all(x)

    def isfinite(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.isfinite(x)

    def logical_and(self, a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
        return paddle.logical_and(a, b)

    def logical_or(self, a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
        return paddle.logical_or(a, b)

    def logical_not(self, a: paddle.Tensor) -> paddle.Tensor:
        return paddle.logical_not(a)

    def astype(self, x: paddle.Tensor, dtype: DType) -> paddle.Tensor:
        return x.astype(_DTYPES[dtype])

    def stack(self, xs: Sequence[paddle.Tensor]) -> paddle.Tensor:
        return paddle.stack(list(xs))


def _place(like: Any) -> Any:
    return like.place if isinstance(like, paddle.Tensor) else None


def _like(value: Any, other: paddle.Tensor) -> paddle.Tensor:
    """``value`` as a tensor of ``other``'s dtype, shape and device (a fill, no H2D copy)."""
    if isinstance(value, paddle.Tensor):
        return value
    return paddle.full_like(other, value)


_HALF = (paddle.float16, paddle.bfloat16)


def _scale_host(
    tensors: Sequence[paddle.Tensor | None],
    coefficients: paddle.Tensor,
    zero: paddle.Tensor | None,
    inplace: bool,
) -> list[paddle.Tensor | None]:
    """CPU: read h_i on the host (nothing to sync), skip h_i == 1, ``scale_`` the rest."""
    zero_all = zero is not None and bool(zero.numpy())
    out: list[paddle.Tensor | None] = []
    for g, h in zip(tensors, coefficients.numpy().tolist()):
        if g is None:
            out.append(None)
        elif zero_all:
            out.append(g.zero_() if inplace else paddle.zeros_like(g))
        elif h == 1.0:
            out.append(g)  # nothing to do: not read, not written
        elif g.dtype in _HALF:  # h in float32, rounded once with the product
            r32 = g.astype(paddle.float32).scale_(h)
            out.append(paddle.assign(r32.astype(g.dtype), g) if inplace else r32.astype(g.dtype))
        elif inplace:
            out.append(g.scale_(h))
        else:
            out.append(paddle.scale(g, h))
    return out


def _scale_device(
    tensors: Sequence[paddle.Tensor | None],
    coefficients: paddle.Tensor,
    zero: paddle.Tensor | None,
    inplace: bool,
) -> list[paddle.Tensor | None]:
    """Accelerator: multiply on the device by h_i (float32 for half gradients); no host read.
    Under ``zero`` every tensor is masked to 0 with a fill (0 * Inf would be NaN)."""
    by_dtype: dict[Any, list[paddle.Tensor]] = {}
    out: list[paddle.Tensor | None] = []
    for i, g in enumerate(tensors):
        if g is None:
            out.append(None)
            continue
        if g.dtype in _HALF:
            # h_i in float32, rounded once with the product: rounding h_i to float16 first
            # would flush a small coefficient to 0 (spec §3, precision).
            r32 = paddle.multiply(g.astype(paddle.float32), coefficients[i])
            r = paddle.assign(r32.astype(g.dtype), g) if inplace else r32.astype(g.dtype)
        else:
            if g.dtype not in by_dtype:
                by_dtype[g.dtype] = paddle.unbind(coefficients.astype(g.dtype))
            h = by_dtype[g.dtype][i]
            r = g.multiply_(h) if inplace else paddle.multiply(g, h)
        if zero is not None:
            r = r.masked_fill_(zero, 0.0)
        out.append(r)
    return out


def make_like(device: str) -> paddle.Tensor:
    """A tensor on ``device`` (``"cpu"``, ``"gpu"``, ``"gpu:1"``) for ``--device``."""
    place: Any
    if device == "cpu":
        place = paddle.CPUPlace()
    elif device.startswith(("gpu", "cuda")):
        place = paddle.CUDAPlace(int(device.split(":")[1]) if ":" in device else 0)
    else:
        raise ValueError(f"unknown Paddle device {device!r}; use 'cpu', 'gpu' or 'gpu:N'")
    return paddle.to_tensor(np.zeros(1, np.float32), place=place)


BACKEND = PaddleBackend(host_skip=os.environ.get("ADAGC_PADDLE_HOST_SKIP", "1") != "0")
"""The registered backend. ``ADAGC_PADDLE_HOST_SKIP=0`` makes it take the accelerator code
path on the CPU too (the tests run the conformance suite both ways)."""
