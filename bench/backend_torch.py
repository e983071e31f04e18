"""Benchmark plug-in for PyTorch (CPU, or CUDA with ``ADAGC_BENCH_DEVICE=cuda``).

Baseline: ``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)``. AdaGC runs through
the adapter a PyTorch user calls (``AdaGC.clip_()``). Peer: AdaGC as a per-tensor Python loop
of torch ops, the way the authors' Megatron-LM patch and pytorch-optimizer implement it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

import adagc
from adagc.adapters.torch import AdaGC


class TorchPlugin:
    name = "torch"
    device = os.environ.get("ADAGC_BENCH_DEVICE", "cpu")
    baseline_name = "torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)"

    def __init__(self) -> None:
        self.params: list[torch.nn.Parameter] = []
        self.clipper: AdaGC | None = None
        self.max_norm = 1.0
        torch.set_num_threads(max(1, torch.get_num_threads()))

    def make_grads(self, shapes: Any, seed: int) -> list[torch.Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.params = []
        for s in shapes:
            p = torch.nn.Parameter(torch.empty(s, device=self.device))
            p.grad = torch.randn(s, generator=gen).to(self.device)
            self.params.append(p)
        grads: list[torch.Tensor] = [p.grad for p in self.params if p.grad is not None]
        total = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
        self.max_norm = 0.99 * total  # the baseline clips by ~1% per call
        self.clipper = AdaGC(self.params, warmup_steps=10)
        return grads  # type: ignore[return-value]

    def copier(self, grads: list[torch.Tensor]) -> Callable[[], None]:
        dst = [torch.empty_like(g) for g in grads]
        return lambda: torch._foreach_copy_(dst, grads)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def baseline(self, grads: list[torch.Tensor]) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)

    def norms(self, grads: list[torch.Tensor]) -> list[float]:
        return [float(n) for n in torch._foreach_norm(grads, 2)]

    def make_state(self, grads: Any, gamma: list[float], step: int) -> adagc.AdaGCState:
        dev = grads[0].device
        return adagc.AdaGCState(
            step=torch.tensor(step, device=dev),
            gamma=torch.tensor(gamma, dtype=torch.float32, device=dev),
            seen=torch.ones(len(gamma), dtype=torch.bool, device=dev),
        )

    def adagc(self, grads: Any, state: adagc.AdaGCState, cfg: adagc.AdaGCConfig) -> Any:
        assert self.clipper is not None
        self.clipper.state = state
        return self.clipper.clip_()

    def peers(self) -> dict[str, Callable[..., Any]]:
        return {"per-tensor loop": per_tensor_loop}


@torch.no_grad()
def per_tensor_loop(
    grads: list[torch.Tensor], state: adagc.AdaGCState, cfg: adagc.AdaGCConfig
) -> torch.Tensor:
    """AdaGC's adaptive phase one tensor at a time (sync-free torch ops, no .item())."""
    gamma = state.gamma.clone()
    for i, g in enumerate(grads):
        n = torch.linalg.vector_norm(g)
        t = cfg.lambda_rel * gamma[i]
        h = torch.where(n > t, t / (n + cfg.eps), torch.ones_like(n))
        g.mul_(h)
        gamma[i] = cfg.beta * gamma[i] + (1 - cfg.beta) * torch.minimum(n, t)
    return gamma


PLUGIN = TorchPlugin()
