"""Benchmark plug-in for the CUDA fast path (``--backend cupy``; needs a CUDA device).

With a CUDA build of torch installed, the gradients are torch CUDA tensors (``.grad`` of
parameters), the way most users meet the kernels:

- baseline: ``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)``;
- ``adagc``: ``AdaGC(params, fast_path=True).clip_()``: the fused CuPy kernels on torch's memory;
- peer ``adagc generic``: the same clipper with ``fast_path=False`` (torch foreach ops).

Without torch, the gradients are CuPy arrays: the baseline is global-norm clipping written with
CuPy (per-tensor dot products, one coefficient, every tensor scaled in place), ``adagc`` is
``adagc.update(grads, state, cfg, inplace=True)`` (the fused path) and the peer the generic CuPy
path (``fused=False``).

After each gradient set, ``notes`` measures in the same process a device-to-device copy of the
gradients' bytes (``cudaMemcpyAsync``; bandwidth counted as bytes read + written per second) and
the norm pass alone (the sum-of-squares kernel over every tensor; bytes read per second), and
prints the norm pass as a fraction of the copy bandwidth.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

import adagc
from adagc import AdaGCConfig, AdaGCState

from .gradsets import GradSet

_REPS = 20


def _torch_cuda() -> Any:
    """torch when it is installed with CUDA and sees a device, else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


class CupyPlugin:
    name = "cupy"
    device = "cuda"

    def __init__(self) -> None:
        self.torch: Any = None
        self.params: list[Any] = []
        self.grads: list[Any] = []
        self.clipper: Any = None
        self.generic: Any = None
        self.max_norm = 1.0

    @property
    def baseline_name(self) -> str:
        if _torch_cuda() is not None:
            return "torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True) on CUDA"
        return "global-norm clipping in CuPy (per-tensor dot, one coefficient, in-place scale)"

    def check(self) -> None:
        """Fail early, with what to do, where there is no CUDA device."""
        from adagc.backends.cupy import device_available

        if not device_available():
            raise RuntimeError(
                "the cupy benchmark needs a CUDA device, and CuPy finds none here "
                "(cupy.cuda.runtime.getDeviceCount() failed or is 0); run it on a machine with "
                "a GPU: python -m adagc.bench --backend cupy --sets gpt2,big"
            )
        self.torch = _torch_cuda()

    # -- gradients -----------------------------------------------------------------------
    def make_grads(self, shapes: Any, seed: int) -> list[Any]:
        self.check()
        self.params, self.grads = [], []
        if self.torch is not None:
            torch = self.torch
            from adagc.adapters.torch import AdaGC

            gen = torch.Generator(device="cuda").manual_seed(seed)
            for s in shapes:
                p = torch.nn.Parameter(torch.empty(s, device="cuda"))
                p.grad = torch.randn(s, generator=gen, device="cuda")
                self.params.append(p)
            self.grads = [p.grad for p in self.params]
            self.clipper = AdaGC(self.params, warmup_steps=10, fast_path=True)
            self.generic = AdaGC(self.params, warmup_steps=10, fast_path=False)
        else:
            import cupy

            rng = cupy.random.default_rng(seed)
            self.grads = [rng.standard_normal(s, dtype=cupy.float32) for s in shapes]
        total = math.sqrt(sum(n * n for n in self.norms(self.grads)))
        self.max_norm = 0.99 * total  # the baseline clips by ~1% per call
        return self.grads

    def sync(self) -> None:
        import cupy

        if self.torch is not None:
            self.torch.cuda.synchronize()
        else:
            cupy.cuda.Device().synchronize()

    def norms(self, grads: list[Any]) -> list[float]:
        if self.torch is not None:
            return [float(n) for n in self.torch._foreach_norm(grads, 2)]
        import cupy

        return [float(cupy.linalg.norm(g)) for g in grads]

    def make_state(self, grads: Any, gamma: list[float], step: int) -> AdaGCState:
        if self.torch is not None:
            torch = self.torch
            return AdaGCState(
                step=torch.tensor(step, device="cuda"),
                gamma=torch.tensor(gamma, dtype=torch.float32, device="cuda"),
                seen=torch.ones(len(gamma), dtype=torch.bool, device="cuda"),
            )
        import cupy

        return AdaGCState(
            step=cupy.asarray(np.int64(step)),
            gamma=cupy.asarray(np.asarray(gamma, np.float32)),
            seen=cupy.ones(len(gamma), dtype=bool),
        )

    # -- the timed methods -----------------------------------------------------------------
    def baseline(self, grads: list[Any]) -> None:
        if self.torch is not None:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
            return
        import cupy

        sq = cupy.stack([cupy.vdot(g.ravel(), g.ravel()) for g in grads])
        total = cupy.sqrt(cupy.sum(sq))
        coef = cupy.minimum(np.float32(self.max_norm) / (total + np.float32(1e-6)), 1)
        for g in grads:
            g *= coef.astype(g.dtype)

    def adagc(self, grads: Any, state: AdaGCState, cfg: AdaGCConfig) -> Any:
        if self.torch is not None:
            self.clipper.state = state
            return self.clipper.clip_()
        return adagc.update(grads, state, cfg, inplace=True, fused=True)

    def peers(self) -> dict[str, Any]:
        return {"adagc generic": self._generic}

    def _generic(self, grads: Any, state: AdaGCState, cfg: AdaGCConfig) -> Any:
        if self.torch is not None:
            self.generic.state = state
            return self.generic.clip_()
        return adagc.update(grads, state, cfg, inplace=True, fused=False)

    # -- bandwidth notes -------------------------------------------------------------------
    def notes(self, gradset: GradSet) -> list[str]:
        """D2D copy bandwidth and the norm pass's bandwidth, measured now on the same data."""
        import cupy

        from adagc.backends import _cupy_engine as engine
        from adagc.backends import cupy as cb
        from adagc.backends._cupy_plan import ITEMSIZE

        frame = cb._frame("torch") if self.torch is not None else cb._CUPY
        layout = cb._inspect(frame, self.grads)
        device = int(layout.device or 0)
        plan = engine.PLANS.get(layout.key)
        if plan is None:
            return [f"# {gradset.name}: no fused plan was built (the fused path declined)"]
        nbytes = sum(n * ITEMSIZE[c] for n, c in zip(layout.numels, layout.codes))
        stream = frame.stream(device)
        rt = cupy.cuda.runtime
        with cupy.cuda.Device(device), stream:
            src, src_p = frame.alloc(device, (nbytes,), "uint8")
            dst, dst_p = frame.alloc(device, (nbytes,), "uint8")

            def copy() -> None:
                rt.memcpyAsync(dst_p, src_p, nbytes, rt.memcpyDeviceToDevice, stream.ptr)

            t_copy = _time_on(stream, copy)
            t_norm = _time_on(stream, lambda: engine.run_sumsq(plan))
            del src, dst
        copy_bw = 2 * nbytes / t_copy
        norm_bw = nbytes / t_norm
        name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return [
            f"# {gradset.name} on {name}: D2D copy of {nbytes / 1e9:.2f} GB: "
            f"{t_copy * 1e3:.3f} ms = {copy_bw / 1e9:.0f} GB/s (read + write); norm pass "
            f"(sum-of-squares kernel, {plan.host.n_chunks} chunks): {t_norm * 1e3:.3f} ms = "
            f"{norm_bw / 1e9:.0f} GB/s (read) = {norm_bw / copy_bw:.2f} of the copy bandwidth"
        ]


def _time_on(stream: Any, fn: Any) -> float:
    """Median seconds of ``fn`` (queued on ``stream``) over ``_REPS`` runs, by CUDA events."""
    import cupy

    fn()  # warm
    times = []
    for _ in range(_REPS):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(times)


PLUGIN = CupyPlugin()
