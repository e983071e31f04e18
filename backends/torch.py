"""PyTorch backend: foreach kernels grouped by (device, dtype), the way
``torch.nn.utils.get_total_norm`` / ``clip_grads_with_norm_`` group them.

- Norms: one ``torch._foreach_norm`` per (device, dtype) group, accumulated in float32 for
  float16/bfloat16 (``dtype=torch.float32``) and in the tensor's own dtype otherwise, with no
  rescaling, so an overflowing float32 sum of squares comes out as Inf (SPEC §3).
- Scaling: on the CPU the coefficients are read on the host (nothing to sync) and tensors whose
  coefficient is exactly 1 are skipped; the rest get one ``torch._foreach_mul_`` with Python
  scalars per group. On accelerators nothing is read back: every tensor of a group is multiplied
  by its own 0-d coefficient on the device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from adagc._protocol import DType

__all__ = ["BACKEND", "CONFORMANCE_DTYPES", "TorchBackend", "make_like"]

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "bool": torch.bool,
    "int": torch.int64,
}
_NAMES: dict[torch.dtype, str] = {v: k for k, v in _DTYPES.items() if k != "int"}
_NAMES[torch.int64] = "int64"
_HALF = (torch.float16, torch.bfloat16)

CONFORMANCE_DTYPES = ("float32", "float64")


def make_like(device: str) -> torch.Tensor:
    """An empty tensor on ``device`` (``--device cuda`` in the conformance suite)."""
    return torch.empty(0, device=device)


def _groups(tensors: Sequence[torch.Tensor | None]) -> dict[tuple[Any, Any], list[int]]:
    """Positions of the non-None tensors, grouped by (device, dtype)."""
    groups: dict[tuple[Any, Any], list[int]] = defaultdict(list)
    for i, g in enumerate(tensors):
        if g is not None:
            groups[(g.device, g.dtype)].append(i)
    return groups


class TorchBackend:
    """The ``ArrayBackend`` protocol for ``torch.Tensor``."""

    name = "torch"
    supports_inplace = True

    def asarray(self, data: Any, dtype: DType, like: Any = None) -> torch.Tensor:
        device = like.device if isinstance(like, torch.Tensor) else None
        if isinstance(data, torch.Tensor):
            return data.to(device=device, dtype=_DTYPES[dtype])
        arr = np.array(data)  # a copy: the result must never alias the caller's data
        return torch.as_tensor(arr, device=device).to(_DTYPES[dtype])

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach()
        if x.dtype in _HALF:
            x = x.float()
        return x.cpu().numpy().copy()

    def dtype_name(self, x: torch.Tensor) -> str:
        return _NAMES.get(x.dtype) or str(x.dtype).removeprefix("torch.")

    def size(self, x: torch.Tensor) -> int:
        return x.numel()

    def device(self, x: torch.Tensor) -> torch.device:
        return x.device

    def sum_squares(self, tensors: Sequence[torch.Tensor | None], dtype: DType) -> torch.Tensor:
        out_dtype = _DTYPES[dtype]
        values: list[torch.Tensor | None] = [None] * len(tensors)
        device = None
        for (dev, dt), idx in _groups(tensors).items():
            group = [tensors[i] for i in idx]
            acc = torch.float32 if dt in _HALF else None
            norms = torch._foreach_norm(group, 2, dtype=acc)  # type: ignore[arg-type]
            sq = torch.stack(norms).to(out_dtype)
            sq = sq * sq  # squares of norms: Inf where the sum overflowed
            for i, v in zip(idx, sq.unbind()):
                values[i] = v
            device = dev if device is None else device
        zero = torch.zeros((), dtype=out_dtype, device=device)
        return torch.stack([zero if v is None else v.to(zero.device) for v in values])

    def scale(
        self,
        tensors: Sequence[torch.Tensor | None],
        coefficients: torch.Tensor,
        zero: torch.Tensor | None,
        inplace: bool,
    ) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = list(tensors)
        on_cpu = coefficients.device.type == "cpu"
        if on_cpu:
            # The CPU has nothing to sync: read the coefficients and skip h == 1 tensors.
            if zero is not None and bool(zero):
                for i, g in enumerate(tensors):
                    if g is not None:
                        out[i] = g.zero_() if inplace else torch.zeros_like(g)
                return out
            h = coefficients.tolist()
            groups: dict[Any, list[int]] = defaultdict(list)
            for i, g in enumerate(tensors):
                if g is not None and h[i] != 1.0:
                    groups[(g.device, g.dtype)].append(i)
            for idx in groups.values():
                group = [tensors[i] for i in idx]
                scalars = [h[i] for i in idx]
                with torch.no_grad():
                    if inplace:
                        torch._foreach_mul_(group, scalars)  # type: ignore[arg-type]
                    else:
                        for i, r in zip(idx, torch._foreach_mul(group, scalars)):  # type: ignore[arg-type]
                            out[i] = r
            return out
        # Accelerators: no host read. Each tensor times its own 0-d coefficient on the device.
        for (_, dt), idx in _groups(tensors).items():
            group = [tensors[i] for i in idx]
            coefs = list(coefficients[idx].to(dt).unbind())
            with torch.no_grad():
                if inplace:
                    torch._foreach_mul_(group, coefs)  # type: ignore[arg-type]
                    res = group
                else:
                    res = list(torch._foreach_mul(group, coefs))  # type: ignore[arg-type]
                if zero is not None:  # where, not multiply: 0 * Inf is NaN
                    for r in res:
                        r.masked_fill_(zero, 0)
            for i, r in zip(idx, res):
                out[i] = r
        return out

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    def minimum(self, a: torch.Tensor, b: Any) -> torch.Tensor:
        if isinstance(b, torch.Tensor):
            return torch.minimum(a, b)
        return torch.clamp(a, max=b)

    def where(self, cond: Any, a: Any, b: Any) -> torch.Tensor:
        return torch.where(cond, a, b)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sum(x)

    def all(self, x: torch.Tensor) -> torch.Tensor:
        return torch.all(x)

    def isfinite(self, x: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(x)

    def logical_and(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.logical_and(a, b)

    def logical_or(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.logical_or(a, b)

    def logical_not(self, a: torch.Tensor) -> torch.Tensor:
        return torch.logical_not(a)

    def astype(self, x: torch.Tensor, dtype: DType) -> torch.Tensor:
        return x.to(_DTYPES[dtype])

    def stack(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(xs))


BACKEND = TorchBackend()
