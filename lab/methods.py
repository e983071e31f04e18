"""The clipping methods the lab compares, each behind one small interface."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from adagc.adapters.torch import AdaGC

__all__ = ["METHODS", "available_methods", "make_clipper"]

METHODS = {
    "none": "no clipping",
    "warmup-only": "global-norm clipping during the AdaGC warmup only, then none",
    "global": "torch.nn.utils.clip_grad_norm_ (max_norm = lambda_abs)",
    "adagc": "AdaGC, per-tensor (the paper's method)",
    "adagc-global": "AdaGC with granularity='global' (the AdaGC-Global ablation)",
    "zclip": "ZClip (z-score adaptive clipping; the zclip package)",
}

Clip = Callable[[int], float]
"""clip(step) -> fraction of tensors clipped this step (clips the model's .grad in place)."""


def available_methods() -> list[str]:
    methods = [m for m in METHODS if m != "zclip"]
    if importlib.util.find_spec("zclip") is not None:
        methods.append("zclip")
    return methods


def make_clipper(name: str, model: torch.nn.Module, warmup: int, max_norm: float) -> Clip:
    params = [p for p in model.parameters() if p.requires_grad]

    def global_clip() -> float:
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(total > max_norm)

    if name == "none":
        return lambda step: 0.0
    if name == "warmup-only":
        return lambda step: global_clip() if step < warmup else 0.0
    if name == "global":
        return lambda step: global_clip()
    if name in ("adagc", "adagc-global"):
        gran = "tensor" if name == "adagc" else "global"
        clipper = AdaGC(
            model.named_parameters(), warmup_steps=warmup, lambda_abs=max_norm, granularity=gran
        )
        n = len(clipper.names)
        return lambda step: float(clipper.clip_().num_clipped) / n
    if name == "zclip":
        from zclip import ZClip  # type: ignore[import-not-found]

        zc = ZClip()

        def z(step: int) -> float:
            zc.step(model)
            return float("nan")  # ZClip does not report what it clipped

        return z
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
