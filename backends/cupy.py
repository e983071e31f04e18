"""CuPy backend: the array protocol for ``cupy.ndarray`` and the fused CUDA fast path.

Two implementations live here, as docs/spec.md asks of a backend with a fast path:

- the **generic protocol** (``CupyBackend``'s small-vector and multi-tensor methods), which
  ``adagc.update(..., fused=False)`` runs and which is the fast path's oracle in the tests;
- the **fused fast path**: three raw kernels (``_cuda/adagc_kernels.cu``, one
  ``cupy.RawModule``) per step: a multi-tensor sum of squares, a one-block finalize that decides
  the warmup/adaptive phase from k on the device and computes h_i, gamma_i, k+1 and the stats,
  and a scale that skips tensors whose h_i is 1. ``adagc.update`` on CuPy arrays uses it.

The fast path works on raw device pointers, so the same planner (``_cupy_plan``) and launches
(``_cupy_engine``) also run on torch and Paddle memory: ``torch_update`` and ``paddle_update``
below are the entry points of the PyTorch backend and the Paddle adapter. Each framework supplies
only pointers, sizes, dtypes, its current stream and its own output buffers (a ``_Frame``); no
data is copied between frameworks.

Where buffers come from, and what a CUDA graph may capture:

- ``adagc.update`` (functional, ``fused_update``): new state, stats and, unless ``inplace``,
  outputs are allocated from the framework's allocator each call. Not capturable as a chain of
  steps (a replay reads the state the capture read).
- ``InplaceStep`` (CuPy) and the torch/Paddle adapters: the state is updated in place in buffers
  the caller owns. ``InplaceStep`` also preallocates the stats, so a step allocates nothing: it
  can be captured in a CUDA graph and replayed. The torch adapter allocates its stats from
  torch's caching allocator, which ``torch.cuda.graph`` capture supports.

In every path the device metadata is built once per parameter set (cached under the gradients'
pointers, sizes and dtypes) and a step makes no host sync, except ``nonfinite="raise"``, which
reads one flag. Importing this module makes no device call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from adagc._algorithm import check_state
from adagc._config import AdaGCConfig
from adagc._errors import NonFiniteGradientError
from adagc._protocol import DType
from adagc._types import AdaGCState, AdaGCStats

from . import _cupy_engine as engine
from ._cupy_plan import DTYPE_CODES, ITEMSIZE, Declined, dense_offset

__all__ = [
    "BACKEND",
    "CONFORMANCE_DTYPES",
    "CupyBackend",
    "Declined",
    "InplaceStep",
    "device_available",
    "make_like",
    "paddle_update",
    "torch_update",
]

CONFORMANCE_DTYPES = ("float32", "float64")
"""float16 is covered by the suite's half-precision test; CuPy has no bfloat16 arrays (the
kernels handle bfloat16 torch and Paddle tensors)."""

_NP: dict[str, Any] = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
    "int": np.int64,
}
_NAMES: dict[Any, str] = {}
_HALF = frozenset({np.dtype(np.float16)})


def device_available() -> bool:
    """Whether CuPy sees at least one CUDA device (``False`` on a machine without a GPU or
    driver, instead of an exception)."""
    try:
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def _device_of(like: Any) -> Any:
    if isinstance(like, cupy.ndarray):
        return cupy.cuda.Device(like.device.id)
    return contextlib.nullcontext()


class CupyBackend:
    """The ``ArrayBackend`` protocol for ``cupy.ndarray``, plus ``fused_update``."""

    name = "cupy"
    supports_inplace = True

    # -- host <-> backend --------------------------------------------------------------
    def asarray(self, data: Any, dtype: DType, like: Any = None) -> Any:
        if dtype == "bfloat16":
            raise TypeError(
                "CuPy has no bfloat16 arrays; use float16/float32, or torch/Paddle tensors "
                "(their bfloat16 gradients run through the same CUDA kernels)"
            )
        host = np.array(data, dtype=_NP[dtype])  # a copy: never aliases the caller's data
        with _device_of(like):
            return cupy.array(host)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(cupy.asnumpy(x), copy=True)

    def dtype_name(self, x: Any) -> str:
        dt = x.dtype
        name = _NAMES.get(dt)
        if name is None:
            name = _NAMES[dt] = str(dt.name)
        return name

    def size(self, x: Any) -> int:
        return int(x.size)

    def device(self, x: Any) -> Any:
        return x.device

    # -- multi-tensor operations (the generic path) -----------------------------------------
    def sum_squares(self, tensors: Sequence[Any], dtype: DType) -> Any:
        like = next(g for g in tensors if g is not None)
        with cupy.cuda.Device(like.device.id):
            parts = []
            for g in tensors:
                if g is None:
                    parts.append(cupy.zeros((), dtype=_NP[dtype]))
                    continue
                flat = g.ravel()
                if flat.dtype in _HALF:  # float16 accumulates in float32, no rescaling
                    flat = flat.astype(np.float32)
                parts.append(cupy.vdot(flat, flat))  # cuBLAS dot: no temporary, no scaling
            return cupy.stack([p.astype(_NP[dtype]) for p in parts])

    def scale(
        self, tensors: Sequence[Any], coefficients: Any, zero: Any | None, inplace: bool
    ) -> list[Any]:
        out: list[Any] = []
        for i, g in enumerate(tensors):
            if g is None:
                out.append(None)
                continue
            h = coefficients[i].astype(g.dtype)  # a 0-d device array: no host read
            if inplace:
                g *= h
                r = g
            else:
                r = g * h
            if zero is not None:  # where, not multiply: 0 * Inf is NaN
                cupy.copyto(r, 0, where=zero)
            out.append(r)
        return out

    # -- small-vector operations ---------------------------------------------------------
    def sqrt(self, x: Any) -> Any:
        return cupy.sqrt(x)

    def minimum(self, a: Any, b: Any) -> Any:
        if not isinstance(b, cupy.ndarray):
            b = a.dtype.type(b)  # a typed scalar keeps a's dtype under any promotion rules
        return cupy.minimum(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if not isinstance(a, cupy.ndarray):
            a = b.dtype.type(a)
        if not isinstance(b, cupy.ndarray):
            b = a.dtype.type(b)
        return cupy.where(cond, a, b)

    def sum(self, x: Any) -> Any:
        return cupy.sum(x)

    def all(self, x: Any) -> Any:
        return cupy.all(x)

    def isfinite(self, x: Any) -> Any:
        return cupy.isfinite(x)

    def logical_and(self, a: Any, b: Any) -> Any:
        return cupy.logical_and(a, b)

    def logical_or(self, a: Any, b: Any) -> Any:
        return cupy.logical_or(a, b)

    def logical_not(self, a: Any) -> Any:
        return cupy.logical_not(a)

    def astype(self, x: Any, dtype: DType) -> Any:
        return x.astype(_NP[dtype])

    def stack(self, xs: Sequence[Any]) -> Any:
        return cupy.stack(list(xs))

    # -- the fused fast path -------------------------------------------------------------
    def fused_update(
        self,
        grads: Sequence[Any],
        state: AdaGCState,
        cfg: AdaGCConfig,
        *,
        inplace: bool,
        reducer: Any,
        names: Sequence[str] | None,
    ) -> tuple[list[Any], AdaGCState, AdaGCStats] | None:
        """The raw-kernel step; ``None`` (the generic path runs) for a ``reducer`` (sharded
        norms need a collective between the norm and finalize kernels) and for layouts the
        kernels do not take (see ``Declined`` reasons: non-dense views, aliasing arrays)."""
        if reducer is not None:
            return None
        try:
            return _fused_step(
                _CUPY, grads, state, cfg, inplace=inplace, state_inplace=False, names=names
            )
        except Declined:
            return None


# -- what each framework supplies ----------------------------------------------------------


class _Frame:
    """Pointers, sizes, dtypes, stream and buffers of one framework (see the subclasses)."""

    name = ""
    out_of_place = True
    """Whether ``out_view`` exists (the Paddle entry point is in place only)."""

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}

    def describe(self, g: Any, j: int) -> tuple[int, int, int, int]:
        """``(lowest address, numel, dtype code, device id)`` of gradient ``j``, or
        ``Declined`` when the kernels cannot take it."""
        raise NotImplementedError

    def device_of(self, x: Any) -> int:
        raise NotImplementedError

    def stream(self, device: int) -> Any:
        """CuPy's view of the framework's current stream on ``device``."""
        raise NotImplementedError

    def capturing(self) -> bool:
        raise NotImplementedError

    def alloc(self, device: int, shape: tuple[int, ...], dtype: str) -> tuple[Any, int]:
        raise NotImplementedError

    def upload(self, device: int, host: np.ndarray) -> tuple[Any, int]:
        raise NotImplementedError

    def ptr(self, x: Any) -> int:
        raise NotImplementedError

    def dtype_code(self, x: Any) -> int | None:
        return self.codes.get(x.dtype)

    def is_contiguous(self, x: Any) -> bool:
        raise NotImplementedError

    def numel(self, x: Any) -> int:
        raise NotImplementedError

    def bool_code(self, x: Any) -> bool:
        """Whether ``x`` is a bool array (1 byte per element)."""
        raise NotImplementedError

    def int64_code(self, x: Any) -> bool:
        raise NotImplementedError

    def out_view(self, buf: Any, offset: int, g: Any, low: int) -> Any:
        """The output array of gradient ``g`` at byte ``offset`` of the flat buffer ``buf``
        (same shape and strides as ``g``)."""
        raise NotImplementedError

    def mark_written(self, tensors: list[Any]) -> None:
        """Tell the framework that these arrays were written through their pointers."""


_STREAMS: dict[int, Any] = {}


class _RawStream:
    """A raw ``cudaStream_t`` in the CUDA stream protocol (``__cuda_stream__``)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


def _external_stream(obj: Any, ptr: int) -> Any:
    """CuPy's wrapper of a foreign stream (cached by its handle; it keeps ``obj`` alive)."""
    s = _STREAMS.get(ptr)
    if s is None:
        if len(_STREAMS) > 64:
            _STREAMS.clear()
        source = obj if hasattr(obj, "__cuda_stream__") else _RawStream(ptr)
        s = _STREAMS[ptr] = cupy.cuda.Stream.from_external(source)
    return s


class _CupyFrame(_Frame):
    name = "cupy"

    def __init__(self) -> None:
        self.codes = {np.dtype(k): v for k, v in DTYPE_CODES.items() if k != "bfloat16"}

    def describe(self, g: Any, j: int) -> tuple[int, int, int, int]:
        code = self.codes.get(g.dtype)
        if code is None:
            raise Declined(f"gradient {j} has dtype {g.dtype}")
        n = int(g.size)
        ptr = int(g.data.ptr)
        if n and not g.flags.c_contiguous:
            size = ITEMSIZE[code]
            off = dense_offset(g.shape, [s // size for s in g.strides])
            if off is None or any(s % size for s in g.strides):
                raise Declined(f"gradient {j} is not dense (strides {g.strides})")
            ptr += off * size
        return ptr, n, code, int(g.device.id)

    def device_of(self, x: Any) -> int:
        return int(x.device.id)

    def stream(self, device: int) -> Any:
        return cupy.cuda.get_current_stream()

    def capturing(self) -> bool:
        return bool(cupy.cuda.get_current_stream().is_capturing())

    def alloc(self, device: int, shape: tuple[int, ...], dtype: str) -> tuple[Any, int]:
        with cupy.cuda.Device(device):
            a = cupy.empty(shape, dtype=dtype)
        return a, int(a.data.ptr)

    def upload(self, device: int, host: np.ndarray) -> tuple[Any, int]:
        with cupy.cuda.Device(device):
            a = cupy.asarray(host)
        return a, int(a.data.ptr)

    def ptr(self, x: Any) -> int:
        return int(x.data.ptr)

    def is_contiguous(self, x: Any) -> bool:
        return bool(x.flags.c_contiguous)

    def numel(self, x: Any) -> int:
        return int(x.size)

    def bool_code(self, x: Any) -> bool:
        return bool(x.dtype == np.bool_)

    def int64_code(self, x: Any) -> bool:
        return bool(x.dtype == np.int64)

    def out_view(self, buf: Any, offset: int, g: Any, low: int) -> Any:
        memptr = buf.data + (offset + int(g.data.ptr) - low)
        return cupy.ndarray(g.shape, g.dtype, memptr=memptr, strides=g.strides)


class _TorchFrame(_Frame):
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch: Any = torch
        self.codes = {
            torch.float32: 0,
            torch.float16: 1,
            torch.bfloat16: 2,
            torch.float64: 3,
        }
        self.dtypes = {
            "float32": torch.float32,
            "float64": torch.float64,
            "int64": torch.int64,
            "bool": torch.bool,
            "uint8": torch.uint8,
        }
        self.devices: dict[int, Any] = {}
        self.plain = (torch.Tensor, torch.nn.Parameter)
        self.strided = torch.strided

    def describe(self, g: Any, j: int) -> tuple[int, int, int, int]:
        # This runs for every tensor of every step: cheap checks first, messages only on the
        # way out (``device.type`` alone costs more than the rest together).
        code = self.codes.get(g.dtype)
        if code is None or type(g) not in self.plain or g.layout != self.strided or not g.is_cuda:
            raise Declined(self._refusal(g, j, code))
        if not g.is_contiguous() and dense_offset(g.shape, g.stride()) is None:
            raise Declined(f"gradient {j} is not dense (strides {g.stride()})")
        return g.data_ptr(), g.numel(), code, g.get_device()  # strides >= 0: data is lowest

    def _refusal(self, g: Any, j: int, code: int | None) -> str:
        if code is None:
            return f"gradient {j} has dtype {g.dtype}"
        if type(g) not in self.plain or g.layout != self.strided:
            # sparse tensors and subclasses (DTensor, ...) have no plain dense memory to read
            return f"gradient {j} is a {type(g).__name__} with layout {g.layout}"
        return f"gradient {j} is on {g.device}, not on a CUDA device"

    def device_of(self, x: Any) -> int:
        if x.device.type != "cuda":
            raise Declined(f"the AdaGC state is on {x.device}, not on a CUDA device")
        return int(x.device.index)

    def _device(self, device: int) -> Any:
        d = self.devices.get(device)
        if d is None:
            d = self.devices[device] = self.torch.device("cuda", device)
        return d

    def stream(self, device: int) -> Any:
        s = self.torch.cuda.current_stream(self._device(device))
        return _external_stream(s, int(s.cuda_stream))

    def capturing(self) -> bool:
        return bool(self.torch.cuda.is_current_stream_capturing())

    def alloc(self, device: int, shape: tuple[int, ...], dtype: str) -> tuple[Any, int]:
        t = self.torch.empty(shape, dtype=self.dtypes[dtype], device=self._device(device))
        return t, int(t.data_ptr())

    def upload(self, device: int, host: np.ndarray) -> tuple[Any, int]:
        t = self.torch.from_numpy(host).to(self._device(device))
        return t, int(t.data_ptr())

    def ptr(self, x: Any) -> int:
        return int(x.data_ptr())

    def is_contiguous(self, x: Any) -> bool:
        return bool(x.is_contiguous())

    def numel(self, x: Any) -> int:
        return int(x.numel())

    def bool_code(self, x: Any) -> bool:
        return bool(x.dtype == self.torch.bool)

    def int64_code(self, x: Any) -> bool:
        return bool(x.dtype == self.torch.int64)

    def out_view(self, buf: Any, offset: int, g: Any, low: int) -> Any:
        seg = buf[offset : offset + g.numel() * g.element_size()].view(g.dtype)
        return seg.view(g.shape) if g.is_contiguous() else seg.as_strided(g.shape, g.stride())

    def mark_written(self, tensors: list[Any]) -> None:
        # Writes through data_ptr are invisible to autograd's version counters.
        self.torch.autograd.graph.increment_version(tensors)


class _PaddleFrame(_Frame):
    name = "paddle"
    out_of_place = False

    def __init__(self) -> None:
        import paddle

        self.paddle: Any = paddle
        self.codes = {
            paddle.float32: 0,
            paddle.float16: 1,
            paddle.bfloat16: 2,
            paddle.float64: 3,
        }
        self.places: dict[int, Any] = {}

    def describe(self, g: Any, j: int) -> tuple[int, int, int, int]:
        code = self.codes.get(g.dtype)
        if code is None:
            raise Declined(f"gradient {j} has dtype {g.dtype}")
        place = g.place
        if not place.is_gpu_place():
            raise Declined(f"gradient {j} is on {place}, not on a GPU")
        if not g.is_contiguous():
            raise Declined(f"gradient {j} is not contiguous")
        return int(g.data_ptr()), math.prod(g.shape), code, int(place.gpu_device_id())

    def device_of(self, x: Any) -> int:
        if not x.place.is_gpu_place():
            raise Declined(f"the AdaGC state is on {x.place}, not on a GPU")
        return int(x.place.gpu_device_id())

    def _place(self, device: int) -> Any:
        p = self.places.get(device)
        if p is None:
            p = self.places[device] = self.paddle.CUDAPlace(device)
        return p

    def stream(self, device: int) -> Any:
        s = self.paddle.device.current_stream(self._place(device))
        _, ptr = s.__cuda_stream__()
        return _external_stream(s, int(ptr))

    def capturing(self) -> bool:
        return bool(self.paddle.device.is_current_stream_capturing())

    def alloc(self, device: int, shape: tuple[int, ...], dtype: str) -> tuple[Any, int]:
        t = self.paddle.empty(list(shape), dtype=dtype, device=self._place(device))
        return t, int(t.data_ptr())

    def upload(self, device: int, host: np.ndarray) -> tuple[Any, int]:
        t = self.paddle.to_tensor(host, place=self._place(device))
        return t, int(t.data_ptr())

    def ptr(self, x: Any) -> int:
        return int(x.data_ptr())

    def is_contiguous(self, x: Any) -> bool:
        return bool(x.is_contiguous())

    def numel(self, x: Any) -> int:
        return math.prod(x.shape)

    def bool_code(self, x: Any) -> bool:
        return bool(x.dtype == self.paddle.bool)

    def int64_code(self, x: Any) -> bool:
        return bool(x.dtype == self.paddle.int64)

    def out_view(self, buf: Any, offset: int, g: Any, low: int) -> Any:
        raise NotImplementedError("the Paddle entry point scales in place")


_CUPY = _CupyFrame()
_FRAMES: dict[str, _Frame] = {"cupy": _CUPY}


def _frame(name: str) -> _Frame:
    fw = _FRAMES.get(name)
    if fw is None:
        fw = _FRAMES[name] = _TorchFrame() if name == "torch" else _PaddleFrame()
    return fw


# -- one fused step ------------------------------------------------------------------------


@dataclass
class _Layout:
    """The static facts of one gradient list (no values read)."""

    key: tuple[Any, ...]
    device: int | None
    ptrs: list[int]
    numels: list[int]
    codes: list[int]
    ties: list[tuple[int, int]]


def _inspect(fw: _Frame, grads: Sequence[Any]) -> _Layout:
    """Pointers, sizes and dtype codes of the gradients; ``None``, empty and repeated (tied)
    ones take no part (0 elements). Raises ``Declined`` for what the kernels cannot take."""
    ptrs: list[int] = []
    numels: list[int] = []
    codes: list[int] = []
    parts: list[Any] = []
    ties: list[tuple[int, int]] = []
    first: dict[int, int] = {}
    device: int | None = None
    describe = fw.describe
    for j, g in enumerate(grads):
        if g is None:
            ptrs.append(0)
            numels.append(0)
            codes.append(0)
            parts.append(None)
            continue
        i = first.setdefault(id(g), j)
        if i != j:
            ties.append((j, i))
            ptrs.append(0)
            numels.append(0)
            codes.append(0)
            parts.append(-1 - i)
            continue
        ptr, n, code, dev = describe(g, j)
        if device is None:
            device = dev
        elif dev != device:
            raise Declined(f"gradients on several devices ({device} and {dev})")
        if n == 0:
            ptr = 0
        ptrs.append(ptr)
        numels.append(n)
        codes.append(code)
        parts.append((ptr, n, code))
    return _Layout((fw.name, device, tuple(parts)), device, ptrs, numels, codes, ties)


def _state_pointers(
    fw: _Frame, state: AdaGCState, cfg: AdaGCConfig, T: int, device: int
) -> tuple[bool, int, int, int]:
    """``(norm64, step, gamma, seen)``: the state's norm dtype and addresses, or ``Declined``
    when the state is not what the kernels read (dtypes, devices, layout)."""
    step, gamma, seen = state
    for what, x in (("step", step), ("gamma", gamma), ("seen", seen)):
        if fw.device_of(x) != device:
            raise Declined(f"the state's {what} is on another device than the gradients")
        if not fw.is_contiguous(x):
            raise Declined(f"the state's {what} is not contiguous")
    code = fw.dtype_code(gamma)
    if code not in (DTYPE_CODES["float32"], DTYPE_CODES["float64"]):
        raise Declined(f"gamma has dtype {gamma.dtype}; the kernels keep float32 or float64")
    if not fw.bool_code(seen) or not fw.int64_code(step) or fw.numel(step) != 1:
        raise Declined("the state's seen must be bool and its step one int64")
    n = 1 if cfg.granularity == "global" else T
    if fw.numel(gamma) != n or fw.numel(seen) != n:
        raise Declined("the state does not match the gradients")  # callers check this first
    return code == DTYPE_CODES["float64"], fw.ptr(step), fw.ptr(gamma), fw.ptr(seen)


_Stats = tuple[tuple[Any, int], ...]
"""The seven stats arrays with their addresses, in ``AdaGCStats`` order."""


def _alloc_stats(fw: _Frame, device: int, T: int, norm64: bool) -> _Stats:
    f = "float64" if norm64 else "float32"
    return (
        fw.alloc(device, (T,), f),
        fw.alloc(device, (T,), f),
        fw.alloc(device, (), f),
        fw.alloc(device, (), f),
        fw.alloc(device, (), "int64"),
        fw.alloc(device, (), "bool"),
        fw.alloc(device, (), "bool"),
    )


def _fused_step(
    fw: _Frame,
    grads: Sequence[Any],
    state: AdaGCState,
    cfg: AdaGCConfig,
    *,
    inplace: bool,
    state_inplace: bool,
    names: Sequence[str] | None,
    stats: _Stats | None = None,
) -> tuple[list[Any], AdaGCState, AdaGCStats]:
    """One AdaGC step with the three kernels on ``fw``'s memory and current stream.

    Raises ``Declined`` (before anything is launched or written) when the kernels cannot take
    the call. ``state_inplace`` writes the new state into ``state``'s own buffers; ``stats``
    preallocated stats buffers (else new ones are allocated).
    """
    grads = list(grads)
    T = len(grads)
    if T == 0:
        raise Declined("no gradients")
    if not inplace and not fw.out_of_place:
        raise Declined(f"{fw.name} gradients are scaled in place only")
    layout = _inspect(fw, grads)
    device = layout.device if layout.device is not None else fw.device_of(state.gamma)
    norm64, step_p, gamma_p, seen_p = _state_pointers(fw, state, cfg, T, device)
    stream = fw.stream(device)
    with cupy.cuda.Device(device), stream:
        plan = engine.plan_for(
            layout.key,
            device,
            layout.ptrs,
            layout.numels,
            layout.codes,
            alloc=lambda n, dt: fw.alloc(device, (n,), dt),
            upload=lambda host: fw.upload(device, host),
            capturing=fw.capturing,
        )
        if state_inplace:
            new_state = state
            out_p = (step_p, gamma_p, seen_p)
        else:
            n = 1 if cfg.granularity == "global" else T
            (s, sp), (gm, gp), (sn, snp) = (
                fw.alloc(device, (), "int64"),
                fw.alloc(device, (n,), "float64" if norm64 else "float32"),
                fw.alloc(device, (n,), "bool"),
            )
            new_state = AdaGCState(step=s, gamma=gm, seen=sn)
            out_p = (sp, gp, snp)
        st = stats if stats is not None else _alloc_stats(fw, device, T, norm64)
        p = engine.StepPointers(step_p, gamma_p, seen_p, *out_p, *(a[1] for a in st))
        engine.run_sumsq(plan)
        engine.run_finalize(plan, p, cfg, norm64)
        if cfg.nonfinite == "raise":
            _raise_if_nonfinite(p, T, norm64, int(stream.ptr), names)
        buf: Any = None
        dst_base = 0
        if not inplace and plan.host.n_chunks:
            buf, dst_base = fw.alloc(device, (plan.host.dst_bytes,), "uint8")
        engine.run_scale(plan, p, cfg, norm64, dst_base)
    out: list[Any] = list(grads)
    written: list[Any] = []
    for j, g in enumerate(grads):
        if g is None or layout.numels[j] == 0:
            continue  # absent, empty or a tie (filled below): returned as they are
        if inplace:
            written.append(g)
        else:
            out[j] = fw.out_view(buf, int(plan.host.dst_offsets[j]), g, layout.ptrs[j])
    for j, i in layout.ties:
        out[j] = out[i]
    if state_inplace:
        written += list(state)
    if written:
        fw.mark_written(written)
    arrays = [a[0] for a in st]
    return out, new_state, AdaGCStats(*arrays)


def _raise_if_nonfinite(
    p: engine.StepPointers, T: int, norm64: bool, stream_ptr: int, names: Sequence[str] | None
) -> None:
    """``nonfinite="raise"``: the one host read (after finalize, before anything is scaled)."""
    if not engine.read_device(p.nonfinite, 1, stream_ptr)[0]:
        return
    dt = np.float64 if norm64 else np.float32
    norms = engine.read_device(p.norms, T * np.dtype(dt).itemsize, stream_ptr).view(dt)
    raise NonFiniteGradientError.from_finite(np.isfinite(norms).tolist(), names)


# -- entry points for other frameworks -----------------------------------------------------


def torch_update(
    grads: Sequence[Any],
    state: AdaGCState,
    cfg: AdaGCConfig,
    *,
    inplace: bool = True,
    state_inplace: bool = False,
    names: Sequence[str] | None = None,
) -> tuple[list[Any], AdaGCState, AdaGCStats]:
    """The fused step on torch CUDA tensors (their memory, torch's current stream; no copies).

    ``state_inplace`` writes the new state into ``state``'s tensors (the torch adapter does,
    so a captured CUDA graph chains its steps). Raises ``Declined`` when the kernels cannot
    take the call (CPU tensors, non-dense views, ...); nothing is modified then.
    """
    from adagc.backends.torch import BACKEND as TORCH

    check_state(TORCH, state, len(grads), cfg)
    return _fused_step(
        _frame("torch"),
        grads,
        state,
        cfg,
        inplace=inplace,
        state_inplace=state_inplace,
        names=names,
    )


def paddle_update(
    grads: list[Any],
    state: AdaGCState,
    cfg: AdaGCConfig,
    *,
    reducer: Any = None,
    names: Sequence[str] | None = None,
    required: bool = False,
) -> tuple[list[Any], AdaGCState, AdaGCStats]:
    """The Paddle adapter's fast step (``ClipGradByAdaGC(fast_path=None|True)`` on GPU): in
    place on the gradients and on the state's tensors, on Paddle's current stream, zero-copy
    (the kernels read the tensors' device pointers). Where the fused path declines (a reducer
    for sharded norms, non-contiguous gradients) this runs the generic Paddle path instead,
    or, with ``required`` (``fast_path=True``), raises ``ValueError`` saying why, before
    anything is modified."""
    import adagc
    from adagc.backends.paddle import BACKEND as PADDLE

    reason = "the gradients are sharded (a reducer): the fused path makes no collective"
    if reducer is None:
        check_state(PADDLE, state, len(grads), cfg)
        try:
            return _fused_step(
                _frame("paddle"),
                grads,
                state,
                cfg,
                inplace=True,
                state_inplace=True,
                names=names,
            )
        except Declined as exc:
            reason = str(exc)
    if required:
        raise ValueError(
            f"fast_path=True but the CuPy fast path cannot run: {reason}. Use fast_path=None "
            "to fall back to the generic Paddle path, or fast_path=False to always use it."
        )
    return adagc.update(
        grads,
        state,
        cfg,
        backend="paddle",
        inplace=True,
        reducer=reducer,
        names=names,
        fused=False,
    )


class InplaceStep:
    """AdaGC in place over a fixed list of CuPy gradients, with buffers it owns: ``state``
    (updated in place every step) and ``stats`` (overwritten every step). A call after the
    first allocates nothing and reads nothing back, so it can be captured in a CUDA graph::

        step = InplaceStep(grads, cfg)
        step(grads)                                   # builds the plan (not capturable)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            step(grads)
            graph = stream.end_capture()
        graph.launch(stream)                          # one more step, same arrays

    ``nonfinite="raise"`` reads a flag from the device every step (not capturable).
    Args:
        grads: the CuPy gradients (their shapes, dtypes and device; ``None`` for absent).
        cfg: the configuration (``AdaGCConfig()`` when omitted).
        state: a state to start from (copied), e.g. from a checkpoint; default ``init``.
        names: tensor names for ``NonFiniteGradientError``.
    """

    def __init__(
        self,
        grads: Sequence[Any],
        cfg: AdaGCConfig | None = None,
        state: AdaGCState | None = None,
        *,
        names: Sequence[str] | None = None,
    ) -> None:
        import adagc

        self.cfg = AdaGCConfig() if cfg is None else cfg
        if not isinstance(self.cfg, AdaGCConfig):
            raise TypeError(f"cfg must be an adagc.AdaGCConfig, got {type(self.cfg).__name__}")
        grads = list(grads)
        start = adagc.init(grads, self.cfg, backend=BACKEND) if state is None else state
        check_state(BACKEND, start, len(grads), self.cfg)
        self.state = AdaGCState(*(cupy.array(x, copy=True) for x in start))
        self.names = list(names) if names is not None else None
        device = _CUPY.device_of(self.state.gamma)
        norm64 = self.state.gamma.dtype == np.float64
        self._stats = _alloc_stats(_CUPY, device, len(grads), norm64)
        self.stats = AdaGCStats(*(a[0] for a in self._stats))

    def __call__(self, grads: Sequence[Any]) -> AdaGCStats:
        """Clip ``grads`` in place and update ``self.state``; returns ``self.stats``."""
        try:
            _fused_step(
                _CUPY,
                grads,
                self.state,
                self.cfg,
                inplace=True,
                state_inplace=True,
                names=self.names,
                stats=self._stats,
            )
        except Declined as exc:
            raise ValueError(
                f"InplaceStep needs the fused CUDA path, which declined: {exc}"
            ) from exc
        return self.stats


def make_like(device: str) -> Any:
    """An empty array on ``device`` (``"cuda"``, ``"cuda:1"``, ``"gpu"``) for ``--device``."""
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "gpu"):
        raise ValueError(f"unknown CuPy device {device!r}; use 'cuda' or 'cuda:N'")
    with cupy.cuda.Device(int(index) if index else 0):
        return cupy.empty(0, dtype=np.float32)


BACKEND = CupyBackend()
