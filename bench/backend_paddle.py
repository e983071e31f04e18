"""Benchmark plug-in for PaddlePaddle. Baseline: ``paddle.nn.ClipGradByGlobalNorm`` called on
the ``(param, grad)`` pairs the way a Paddle optimizer calls its ``grad_clip`` (per-tensor
``squared_l2_norm``, then every gradient multiplied in place).

Methods: ``adagc`` is ``adagc.update(grads, state, cfg, inplace=True)`` on Paddle tensors;
``ClipGradByAdaGC`` is the ``grad_clip=`` adapter called the same way as the baseline, with the
placed state handed to its (single) parameter group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import paddle

import adagc
from adagc import AdaGCConfig, AdaGCState
from adagc.adapters.paddle import ClipGradByAdaGC
from adagc.backends.paddle import BACKEND

from .harness import per_tensor_copier


class PaddlePlugin:
    name = "paddle"
    baseline_name = "paddle.nn.ClipGradByGlobalNorm (grad_clip call on (param, grad) pairs)"

    def __init__(self) -> None:
        self.device = paddle.get_device()
        self.pairs: list[tuple[Any, Any]] = []
        self.global_clip: Any = None
        self.adapter: ClipGradByAdaGC | None = None

    def make_grads(self, shapes: Any, seed: int) -> list[paddle.Tensor]:
        rng = np.random.default_rng(seed)
        grads = [paddle.to_tensor(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
        params = [
            paddle.create_parameter(
                list(s), "float32", default_initializer=paddle.nn.initializer.Constant(0.0)
            )
            for s in shapes
        ]
        self.pairs = list(zip(params, grads, strict=True))
        total = math.sqrt(sum(n * n for n in self.norms(grads)))
        # The baseline clips by ~1% per call: the values stay normal over the rounds.
        self.global_clip = paddle.nn.ClipGradByGlobalNorm(0.99 * total)
        self.adapter = ClipGradByAdaGC(warmup_steps=10, parameters=params)
        return grads

    def copier(self, grads: list[paddle.Tensor]) -> Callable[[], None]:
        return per_tensor_copier(grads, paddle.empty_like, paddle.assign)

    def sync(self) -> None:
        if not paddle.get_device().startswith("cpu"):
            paddle.device.synchronize()

    def baseline(self, grads: list[paddle.Tensor]) -> None:
        self.global_clip(self.pairs)

    def norms(self, grads: list[paddle.Tensor]) -> list[float]:
        return np.sqrt(BACKEND.to_numpy(BACKEND.sum_squares(grads, "float32"))).tolist()

    def make_state(self, grads: Any, gamma: list[float], step: int) -> AdaGCState:
        return AdaGCState(
            step=paddle.to_tensor(step, dtype="int64"),
            gamma=paddle.to_tensor(np.asarray(gamma, np.float32)),
            seen=paddle.ones([len(gamma)], dtype="bool"),
        )

    def adagc(self, grads: list[paddle.Tensor], state: Any, cfg: AdaGCConfig) -> Any:
        return adagc.update(grads, state, cfg, inplace=True)

    def peers(self) -> dict[str, Any]:
        return {"ClipGradByAdaGC": self._adapter}

    def _adapter(self, grads: list[paddle.Tensor], state: Any, cfg: AdaGCConfig) -> Any:
        assert self.adapter is not None and self.adapter.config == cfg
        self.adapter._groups[0].state = state  # the harness places the state (untimed part)
        return self.adapter(self.pairs)


PLUGIN = PaddlePlugin()
