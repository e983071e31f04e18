"""The device side of the CUDA fast path: the one ``cupy.RawModule``, per-device kernel facts,
the cache of device plans, and the launches of one AdaGC step on raw pointers.

Everything here works on 64-bit addresses, so the same launches serve CuPy arrays, torch
tensors and Paddle tensors: each framework (``backends/cupy.py``) only supplies pointers,
sizes, dtypes, a stream and its own output buffers. Importing this module touches no device;
the module is compiled (NVRTC, through CuPy's own compile path and disk cache) the first time a
device needs it.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from adagc._config import AdaGCConfig

from ._cupy_plan import (
    BLOCK,
    FINALIZE_BLOCK,
    ITEMSIZE,
    KERNEL_NAMES,
    MAX_CHUNKS_PER_LAUNCH,
    Declined,
    HostPlan,
    blocks_per_sm,
    build_plan,
    compile_defines,
    first_overlap,
    persistent_grid,
)

__all__ = [
    "LAUNCH_CHUNKS",
    "PLANS",
    "DevicePlan",
    "Kernels",
    "StepPointers",
    "kernels",
    "module",
    "nvrtc_options",
    "plan_for",
    "read_device",
    "run_finalize",
    "run_scale",
    "run_sumsq",
    "source",
]

SOURCE = "_cuda/adagc_kernels.cu"


def source() -> str:
    """The CUDA source shipped with the package (``adagc/backends/_cuda/adagc_kernels.cu``)."""
    return importlib.resources.files("adagc.backends").joinpath(SOURCE).read_text()


def nvrtc_options() -> tuple[str, ...]:
    """Our options for ``cupy.RawModule``. CuPy adds its own when it compiles: its include
    paths (CCCL, ``cupy/_core/include`` and the ``nvidia-cuda-runtime-cu12`` headers, where
    ``cuda_fp16.h``/``cuda_bf16.h`` come from), ``--std=c++17``, ``-ftz=true``, the device's
    ``-arch=sm_XX`` and ``--device-as-default-execution-space``."""
    return compile_defines()


@functools.cache
def module() -> Any:
    """The one ``cupy.RawModule`` holding every kernel (compiled lazily, per device, by CuPy)."""
    return cupy.RawModule(code=source(), options=nvrtc_options())


@dataclass(frozen=True)
class Kernels:
    """The kernels on one device and their persistent grid sizes per SM."""

    device: int
    sumsq: Any
    finalize: dict[bool, Any]
    scale: dict[bool, Any]
    sm_count: int
    sumsq_per_sm: int
    scale_per_sm: int


@functools.cache
def kernels(device: int) -> Kernels:
    """Compile/load the module on ``device`` and read the occupancy limits (once per device)."""
    rt = cupy.cuda.runtime
    with cupy.cuda.Device(device):
        mod = module()
        fns = {name: mod.get_function(name) for name in KERNEL_NAMES}

        def attr(a: int) -> int:
            return int(rt.deviceGetAttribute(a, device))

        limits = {
            "max_threads_per_sm": attr(rt.cudaDevAttrMaxThreadsPerMultiProcessor),
            "max_regs_per_sm": attr(rt.cudaDevAttrMaxRegistersPerMultiprocessor),
            "max_smem_per_sm": attr(rt.cudaDevAttrMaxSharedMemoryPerMultiprocessor),
            "max_blocks_per_sm": attr(rt.cudaDevAttrMaxBlocksPerMultiprocessor),
        }

        def per_sm(fn: Any) -> int:
            return blocks_per_sm(BLOCK, int(fn.num_regs), int(fn.shared_size_bytes), **limits)

        return Kernels(
            device=device,
            sumsq=fns["adagc_sumsq"],
            finalize={False: fns["adagc_finalize_f32"], True: fns["adagc_finalize_f64"]},
            scale={False: fns["adagc_scale_f32"], True: fns["adagc_scale_f64"]},
            sm_count=attr(rt.cudaDevAttrMultiProcessorCount),
            sumsq_per_sm=per_sm(fns["adagc_sumsq"]),
            scale_per_sm=per_sm(fns["adagc_scale_f32"]),
        )


@dataclass(frozen=True)
class DevicePlan:
    """A ``HostPlan`` with its metadata and partials buffers on the device (framework arrays
    kept alive here), and the grid sizes of its launches."""

    host: HostPlan
    meta: Any
    meta_ptr: int
    partials: Any
    partials_ptr: int
    sumsq_grid: int
    scale_grid: int
    kernels: Kernels


Alloc = Callable[[int, str], tuple[Any, int]]
"""``alloc(n, dtype_name) -> (array, address)``: a framework's uninitialised device array."""
Upload = Callable[[np.ndarray], tuple[Any, int]]
"""``upload(int64 numpy array) -> (array, address)``: a framework's device copy."""


class _PlanCache:
    """Device plans by (framework, device, storage key), least recently used out first."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._plans: OrderedDict[Hashable, DevicePlan] = OrderedDict()

    def get(self, key: Hashable) -> DevicePlan | None:
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        return plan

    def put(self, key: Hashable, plan: DevicePlan) -> None:
        self._plans[key] = plan
        self._plans.move_to_end(key)
        while len(self._plans) > self.size:
            self._plans.popitem(last=False)

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


PLANS = _PlanCache()
LAUNCH_CHUNKS = MAX_CHUNKS_PER_LAUNCH
"""Chunks per launch of the streaming kernels for new plans (tests lower it to exercise
split launches on a device)."""


def plan_for(
    key: Hashable,
    device: int,
    ptrs: list[int],
    numels: list[int],
    codes: list[int],
    *,
    alloc: Alloc,
    upload: Upload,
    capturing: Callable[[], bool],
) -> DevicePlan:
    """The cached device plan for ``key`` (the gradients' storage), built on a miss: the
    plan's metadata is copied to the device once and its partials buffer allocated once, so a
    step with a cache hit allocates and copies nothing."""
    plan = PLANS.get(key)
    if plan is not None:
        return plan
    spans = [(p, n * ITEMSIZE[c]) for p, n, c in zip(ptrs, numels, codes)]
    clash = first_overlap(spans)
    if clash is not None:
        raise Declined(
            f"gradients {clash[0]} and {clash[1]} are different arrays over the same memory; "
            "they cannot be scaled in place independently"
        )
    if capturing():
        raise RuntimeError(
            "the CuPy fast path builds its device metadata on the first step with a set of "
            "gradients, and that step is being captured in a CUDA graph: run one step with "
            "these gradients before capturing (as torch.cuda.graphs recommends anyway)"
        )
    host = build_plan(ptrs, numels, codes, max_chunks_per_launch=LAUNCH_CHUNKS)
    k = kernels(device)
    meta, meta_ptr = upload(host.meta)
    partials, partials_ptr = alloc(host.norm_partials, "float64")
    plan = DevicePlan(
        host=host,
        meta=meta,
        meta_ptr=meta_ptr,
        partials=partials,
        partials_ptr=partials_ptr,
        sumsq_grid=persistent_grid(host.n_chunks, k.sm_count, k.sumsq_per_sm),
        scale_grid=persistent_grid(host.n_chunks, k.sm_count, k.scale_per_sm),
        kernels=k,
    )
    PLANS.put(key, plan)
    return plan


@dataclass(frozen=True)
class StepPointers:
    """Addresses of one step's state and statistics (``*_out`` may equal ``*_in``: the
    finalize kernel is safe in place)."""

    step_in: int
    gamma_in: int
    seen_in: int
    step_out: int
    gamma_out: int
    seen_out: int
    norms: int
    coefficients: int
    global_norm: int
    clipped_global_norm: int
    num_clipped: int
    nonfinite: int
    warmup: int


_u64 = np.uint64
_i64 = np.int64
_i32 = np.int32


def run_sumsq(plan: DevicePlan) -> None:
    """Launch the sum of squares over every chunk (on CuPy's current stream and device)."""
    h = plan.host
    for begin, end in h.launches:
        plan.kernels.sumsq(
            (plan.sumsq_grid,),
            (BLOCK,),
            (_u64(plan.meta_ptr), _i32(h.T), _i64(begin), _i64(end), _u64(plan.partials_ptr)),
        )


def run_finalize(plan: DevicePlan, p: StepPointers, cfg: AdaGCConfig, norm64: bool) -> None:
    """Launch the one-block finalize kernel (norms, phase, coefficients, state, stats)."""
    f = np.float64 if norm64 else np.float32
    plan.kernels.finalize[norm64](
        (1,),
        (FINALIZE_BLOCK,),
        (
            _u64(plan.meta_ptr),
            _i32(plan.host.T),
            _u64(plan.partials_ptr),
            _u64(p.step_in),
            _u64(p.gamma_in),
            _u64(p.seen_in),
            _u64(p.step_out),
            _u64(p.gamma_out),
            _u64(p.seen_out),
            _u64(p.norms),
            _u64(p.coefficients),
            _u64(p.global_norm),
            _u64(p.clipped_global_norm),
            _u64(p.num_clipped),
            _u64(p.nonfinite),
            _u64(p.warmup),
            # Python scalars meet the norm dtype the way NumPy's NEP 50 has them meet it in
            # the generic path: each rounded to N once (1 - beta computed in float64 first).
            f(cfg.lambda_rel),
            f(cfg.beta),
            f(1.0 - cfg.beta),
            f(cfg.lambda_abs),
            f(cfg.eps),
            _i64(cfg.warmup_steps),
            _i32(cfg.granularity == "global"),
            _i32(cfg.nonfinite == "zero"),
            _i32(cfg.warmup_gamma == "raw"),
        ),
    )


def run_scale(
    plan: DevicePlan, p: StepPointers, cfg: AdaGCConfig, norm64: bool, dst_base: int
) -> None:
    """Launch the scaling (``dst_base == 0``: in place, h_i == 1 chunks untouched)."""
    h = plan.host
    for begin, end in h.launches:
        plan.kernels.scale[norm64](
            (plan.scale_grid,),
            (BLOCK,),
            (
                _u64(plan.meta_ptr),
                _i32(h.T),
                _i64(begin),
                _i64(end),
                _u64(p.coefficients),
                _u64(p.nonfinite),
                _i32(cfg.nonfinite == "zero"),
                _u64(dst_base),
            ),
        )


def read_device(ptr: int, nbytes: int, stream_ptr: int) -> np.ndarray:
    """Copy ``nbytes`` at ``ptr`` to the host after the work queued on the stream (a sync:
    only ``nonfinite="raise"`` calls it)."""
    host = np.empty(max(nbytes, 1), dtype=np.uint8)
    if nbytes:
        rt = cupy.cuda.runtime
        rt.memcpyAsync(host.ctypes.data, ptr, nbytes, rt.memcpyDeviceToHost, stream_ptr)
        rt.streamSynchronize(stream_ptr)
    return host[:nbytes]
