"""PyTorch backend: foreach kernels grouped by (device, dtype), the way
``torch.nn.utils.get_total_norm`` / ``clip_grads_with_norm_`` group them.

- Norms: one ``torch._foreach_norm`` per (device, dtype) group, accumulated in float32 for
  float16/bfloat16 (``dtype=torch.float32``) and in the tensor's own dtype otherwise, with no
  rescaling, so an overflowing float32 sum of squares comes out as Inf (spec §3). On the
  CPU, tensors above 32,768 elements are summed in float64 from BLAS dot products of blocks
  (float16/bfloat16: float32 row norms) instead (``_large_sum_squares``): ``_foreach_norm``
  there drifts by ~1e-2 at 1e8 elements. Small CPU tensors that share a shape (64 or more of
  it) are stacked and reduced along rows in one kernel (``_small_norms``).
- Scaling: one ``torch._foreach_mul_`` per group, each tensor times its own 0-d coefficient
  (float16/bfloat16 tensors are multiplied in float32 and rounded once).
  On the CPU the coefficients are first read on the host (nothing to sync) and tensors whose
  coefficient is exactly 1 are skipped; on accelerators nothing is read back and every tensor
  of a group is multiplied on the device.
- Fused fast path (``fused_update``): CUDA tensors with CuPy installed run the CuPy raw kernels
  of ``adagc.backends.cupy`` on torch's memory and current stream (three launches, no copies,
  h_i == 1 tensors untouched); CPU tensors, sharded gradients (a reducer) and layouts the kernels
  do not take decline to the generic code above, which stays the oracle (``fused=False``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from adagc._errors import NotWritableError
from adagc._protocol import DType

from ._cupy_plan import Declined

__all__ = [
    "BACKEND",
    "CONFORMANCE_DTYPES",
    "TorchBackend",
    "fused_clip_",
    "fused_unavailable",
    "make_like",
]

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


_INDEX_CACHE: dict[tuple[Any, tuple[int, ...]], torch.Tensor] = {}


def _index(idx: list[int], device: torch.device) -> torch.Tensor:
    """Index tensors are built once per layout and device (no host-to-device copy per step)."""
    key = (device, tuple(idx))
    t = _INDEX_CACHE.get(key)
    if t is None:
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.clear()
        t = _INDEX_CACHE[key] = torch.tensor(idx, dtype=torch.long, device=device)
    return t


# CPU tensors above this many elements are summed in float64 blocks (_large_sum_squares).
_CHUNK = 1 << 15
_STRIDED = torch.strided
_numel = torch.Tensor.numel


_BLOCK = 1 << 19  # elements per BLAS dot of a large float32/float64 tensor
_SEGMENTS: dict[tuple[int, ...], torch.Tensor] = {}


def _segments(counts: tuple[int, ...]) -> torch.Tensor:
    """Which tensor each block belongs to, built once per layout (``index_add_``'s index)."""
    seg = _SEGMENTS.get(counts)
    if seg is None:
        if len(_SEGMENTS) > 64:
            _SEGMENTS.clear()
        seg = _SEGMENTS[counts] = torch.repeat_interleave(torch.tensor(counts))
    return seg


def _large_sum_squares(group: Sequence[torch.Tensor], acc: torch.dtype | None) -> torch.Tensor:
    """The sums of squares of large CPU tensors as a float64 vector, no rescaling (a block or
    total beyond float32 is Inf once cast back).

    - float32/float64: BLAS dot products (``torch.dot``: one read, no temporary, on torch's
      threads) of blocks of 524,288 elements, added in float64: 1.2e-7 relative at 1.3e8
      float32 elements, at the speed of one read of the tensors (docs/benchmarks.md). Every
      tensor's blocks go through one list, one stack and one ``index_add_``: per-tensor small
      ops cost ~2 ms a step on GPT-2's 50 large tensors.
    - float16/bfloat16: norms of rows of 1,024 elements accumulated in float32 (torch's CPU
      half reductions drift sooner, and ``torch.dot`` would accumulate in the half type),
      squared and added in float64.
    """
    if acc is None:
        blocks: list[torch.Tensor] = []
        counts = []
        for g in group:
            parts = g.reshape(-1).split(_BLOCK)  # views for contiguous tensors
            blocks += parts
            counts.append(len(parts))
        dots = torch.stack([torch.dot(b, b) for b in blocks]).double()
        out = torch.zeros(len(group), dtype=torch.float64)
        return out.index_add_(0, _segments(tuple(counts)), dots)
    return torch.stack([_half_sum_squares(g, acc) for g in group])


def _half_sum_squares(g: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    width = 1024
    flat = g.reshape(-1)
    n = flat.numel()
    m = n - n % width
    total = torch.linalg.vector_norm(flat[:m].view(-1, width), dim=1, dtype=acc).double()
    total = total.square().sum()
    if m < n:
        total = total + torch.linalg.vector_norm(flat[m:], dtype=acc).double().square()
    return total


_STACKED = 64  # on the CPU, at least this many same-shape small tensors are stacked


def _small_norms(small: list[torch.Tensor], acc: torch.dtype | None, cpu: bool) -> torch.Tensor:
    """The norms of tensors of at most ``_CHUNK`` elements (one device and dtype), a vector.

    ``torch._foreach_norm`` on the CPU is one reduction per tensor (~1 us each). With
    thousands of small tensors (biases, LayerNorms, small experts) most share a few shapes:
    each shape with at least ``_STACKED`` tensors is copied into one stack and reduced along
    its rows, in one kernel, accumulated in the same dtype (measured on 4,000 tensors of 4
    sizes: 2.9 ms against 4.4 ms). The copy is of small tensors only (at most 128 KiB each).
    """
    if not cpu or len(small) < _STACKED:
        return torch.stack(torch._foreach_norm(small, 2, dtype=acc))  # type: ignore[arg-type]
    by_shape: dict[Any, list[int]] = defaultdict(list)
    for k, g in enumerate(small):
        by_shape[g.shape if g.layout == _STRIDED else None].append(k)
    stacked = [idx for shape, idx in by_shape.items() if shape is not None and len(idx) >= _STACKED]
    if not stacked:
        return torch.stack(torch._foreach_norm(small, 2, dtype=acc))  # type: ignore[arg-type]
    first = small[0]
    out = torch.empty(len(small), dtype=acc or first.dtype, device=first.device)
    done: set[int] = set()
    for idx in stacked:
        rows = torch.stack([small[k] for k in idx]).reshape(len(idx), -1)
        out[_index(idx, out.device)] = torch.linalg.vector_norm(rows, dim=1, dtype=acc)
        done.update(idx)
    if len(done) < len(small):
        rest = [k for k in range(len(small)) if k not in done]
        norms = torch._foreach_norm([small[k] for k in rest], 2, dtype=acc)  # type: ignore[arg-type]
        out[_index(rest, out.device)] = torch.stack(norms)
    return out


def _reject_layouts(tensors: Sequence[torch.Tensor | None]) -> None:
    """A clear error for the gradients AdaGC does not take (torch's own is raw)."""
    for i, g in enumerate(tensors):
        if g is not None and g.layout != torch.strided:
            raise TypeError(
                f"gradient {i} is a {g.layout} tensor; AdaGC clips dense (strided) gradients. "
                "Convert it with .to_dense(), or leave that parameter out of the clipper"
            )


def _check_writable(tensors: Sequence[torch.Tensor | None]) -> None:
    """Before any in-place write (metadata only, no sync): a tensor whose elements share
    memory (a stride 0 over a dimension of size > 1, as ``expand`` makes) would fail
    half-way through the step."""
    for i, g in enumerate(tensors):
        if (
            g is not None
            and not g.is_contiguous()
            and any(st == 0 and n > 1 for st, n in zip(g.stride(), g.shape))
        ):
            raise NotWritableError(i, "its elements share memory (an expanded or broadcast tensor)")


def _mul_half(
    group: list[torch.Tensor], coefs: list[torch.Tensor], inplace: bool
) -> list[torch.Tensor]:
    """float16/bfloat16 tensors times float32 h_i, computed in float32 and rounded once: a
    half-precision h_i would flush small coefficients to 0 (spec §3, precision). One tensor
    at a time, so the float32 temporary is one tensor's, not the group's."""
    res = []
    for g, c in zip(group, coefs):
        prod = g.float().mul_(c)
        res.append(g.copy_(prod) if inplace else prod.to(g.dtype))
    return res


class TorchBackend:
    """The ``ArrayBackend`` protocol for ``torch.Tensor``."""

    name = "torch"
    supports_inplace = True

    @staticmethod
    def compiling() -> bool:
        """Inside ``torch.compile`` (the core then skips identity checks dynamo would guard
        on per step)."""
        return torch.compiler.is_compiling()

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
        groups = _groups(tensors)
        parts = []
        for (dev, dt), idx in groups.items():
            group: list[Any] = [tensors[i] for i in idx]  # no None: _groups skips them
            acc = torch.float32 if dt in _HALF else None
            # On the CPU, torch's norms of large tensors drift (1.6e-2 relative at 1.3e8
            # float32 elements): those are summed in float64 blocks instead (_large_sum_squares).
            big = (
                [k for k, g in enumerate(group) if g.numel() > _CHUNK and g.layout == _STRIDED]
                if dev.type == "cpu" and max(map(_numel, group)) > _CHUNK
                else []
            )
            skip = set(big)
            small = [g for k, g in enumerate(group) if k not in skip] if big else group
            try:
                norms = _small_norms(small, acc, dev.type == "cpu") if small else None
            except (NotImplementedError, RuntimeError):
                _reject_layouts(tensors)
                raise
            if big:
                sq = torch.empty(len(group), dtype=out_dtype)
                large = _large_sum_squares([group[k] for k in big], acc)
                sq[_index(big, sq.device)] = large.to(out_dtype)
                if norms is not None:
                    rest = [k for k in range(len(group)) if k not in skip]
                    sq[_index(rest, sq.device)] = norms.to(out_dtype).square()
            else:
                assert norms is not None
                sq = norms.to(out_dtype)
                sq = sq * sq  # squares of norms: Inf where the sum overflowed
            parts.append((idx, sq))
        idx0, sq0 = parts[0]
        if len(parts) == 1 and len(idx0) == len(tensors):
            return sq0  # the common case: one group, every tensor present, in order
        out = torch.zeros(len(tensors), dtype=out_dtype, device=sq0.device)
        for idx, sq in parts:
            out[_index(idx, out.device)] = sq.to(out.device)
        return out

    def scale(
        self,
        tensors: Sequence[torch.Tensor | None],
        coefficients: torch.Tensor,
        zero: torch.Tensor | None,
        inplace: bool,
    ) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = list(tensors)
        chosen: Sequence[torch.Tensor | None] = tensors
        if coefficients.device.type == "cpu" and not torch.compiler.is_compiling():
            # The CPU has nothing to sync: read h on the host, decide "zero" there and skip
            # h == 1 tensors (neither read nor written).
            if zero is not None and bool(zero):
                if inplace:
                    _check_writable(tensors)
                for i, g in enumerate(tensors):
                    if g is not None:
                        out[i] = g.zero_() if inplace else torch.zeros_like(g)
                return out
            h = coefficients.tolist()
            chosen = [g if h[i] != 1.0 else None for i, g in enumerate(tensors)]
            zero = None
        if inplace:
            _check_writable(chosen)
        # Each tensor times its own 0-d coefficient, read on the device (no host read there).
        # The TensorList overload: on the CPU it takes half the time of a list of Python
        # floats for 4,000 small tensors (4.7 vs 9.0 ms).
        for (_, dt), idx in _groups(chosen).items():
            group: list[torch.Tensor] = [t for t in (chosen[i] for i in idx) if t is not None]
            picked = coefficients[_index(idx, coefficients.device)]
            coefs = list((picked if dt in _HALF else picked.to(dt)).unbind())
            with torch.no_grad():
                res: list[torch.Tensor]
                if dt in _HALF:
                    res = _mul_half(group, coefs, inplace)
                elif inplace:
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

    def fused_update(
        self,
        grads: Sequence[torch.Tensor | None],
        state: Any,
        cfg: Any,
        *,
        inplace: bool,
        reducer: Any,
        names: Sequence[str] | None,
    ) -> Any:
        """The CuPy kernels on CUDA tensors (torch's memory and current stream, no copies);
        ``None`` (the generic path) on the CPU, without CuPy, with a reducer, or for layouts
        the kernels do not take."""
        if fused_unavailable(grads, state, reducer) is not None:
            return None
        try:
            return _cupy_fast().torch_update(grads, state, cfg, inplace=inplace, names=names)
        except Declined:
            return None


# -- the CUDA fast path, for the adapter ---------------------------------------------------


@functools.cache
def _cupy_fast() -> Any:
    """``adagc.backends.cupy`` when CuPy is installed, else ``None`` (imported on first use)."""
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        return importlib.import_module("adagc.backends.cupy")
    except ImportError:
        return None


def fused_unavailable(grads: Sequence[Any], state: Any, reducer: Any) -> str | None:
    """Why the fused CUDA path cannot run a step, from static facts only (no array values);
    ``None`` when it can be tried (it may still raise ``Declined`` for a layout)."""
    if reducer is not None:
        return (
            "the gradients are sharded (DTensor) or pipeline-staged (pp_mesh): their norms "
            "need a collective between the norm and finalize kernels, which the fused path "
            "does not make"
        )
    g = next((g for g in grads if g is not None), state.gamma)
    if g.device.type != "cuda":
        return f"the gradients are on {g.device}; the fused kernels run on CUDA tensors"
    if _cupy_fast() is None:
        return "CuPy is not installed (pip install 'adagc[cupy]')"
    return None


def fused_clip_(
    grads: Sequence[torch.Tensor | None], state: Any, cfg: Any, *, names: Sequence[str] | None
) -> Any:
    """The adapter's fast step: the gradients AND the state tensors are updated in place (so
    a step captured in a CUDA graph chains when replayed). Raises ``Declined`` (nothing
    modified) when the kernels cannot take the call; check ``fused_unavailable`` first."""
    return _cupy_fast().torch_update(
        grads, state, cfg, inplace=True, state_inplace=True, names=names
    )


BACKEND = TorchBackend()
