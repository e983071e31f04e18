"""Benchmark plug-in for NumPy. NumPy has no clipping of its own, so the baseline is
``torch.nn.utils.clip_grad_norm_``'s formula written in NumPy with the same primitives
(per-tensor BLAS dot, then every tensor multiplied in place)."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import adagc
from adagc.backends import numpy as numpy_backend
from adagc.backends.numpy import BACKEND

from .harness import per_tensor_copier


class NumpyPlugin:
    name = "numpy"
    device = "cpu"
    baseline_name = "NumPy clip_grad_norm_ formula (dot norms, in-place multiply of every tensor)"
    max_norm = 1.0

    def make_grads(self, shapes: Any, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        grads = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
        self.max_norm = 0.99 * total  # the baseline clips by ~1% per call: values stay normal
        return grads

    def copier(self, grads: list[np.ndarray]) -> Callable[[], None]:
        """The memory-bandwidth yardstick: every gradient copied once, large ones in chunks
        on the backend's threads (as AdaGC's own passes run), so the limit row is the
        machine's bandwidth, not one core's."""
        pool = numpy_backend._pool()
        if pool is None:
            return per_tensor_copier(grads, np.empty_like, lambda g, d: np.copyto(d, g))
        dst = [np.empty_like(g) for g in grads]
        pairs = [
            (a, b)
            for g, d in zip(grads, dst)
            for a, b in zip(numpy_backend._chunks(g), numpy_backend._chunks(d))
        ]

        def run() -> None:
            numpy_backend._in_threads(pool, lambda ab: np.copyto(ab[1], ab[0]), pairs)

        return run

    def sync(self) -> None:
        pass

    def baseline(self, grads: list[np.ndarray]) -> None:
        norms = [math.sqrt(float(np.dot(g.ravel(), g.ravel()))) for g in grads]
        coef = min(self.max_norm / (math.sqrt(sum(n * n for n in norms)) + 1e-6), 1.0)
        for g in grads:
            g *= coef  # a Python float: NumPy's fastest in-place scale, dtype kept

    def norms(self, grads: list[np.ndarray]) -> list[float]:
        return np.sqrt(BACKEND.sum_squares(grads, "float32")).tolist()

    def make_state(self, grads: Any, gamma: list[float], step: int) -> adagc.AdaGCState:
        n = len(gamma)
        return adagc.AdaGCState(
            step=np.array(step), gamma=np.array(gamma, np.float32), seen=np.ones(n, bool)
        )

    def adagc(self, grads: list[np.ndarray], state: Any, cfg: adagc.AdaGCConfig) -> Any:
        return adagc.update(grads, state, cfg, inplace=True)

    def memory(self, fn: Callable[[], Any]) -> int:
        tracemalloc.start()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak


PLUGIN = NumpyPlugin()
