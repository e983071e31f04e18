"""The clipping methods the lab compares, each behind one small interface."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple

import torch

from adagc.adapters.torch import AdaGC

__all__ = ["METHODS", "ZCLIP_SETTINGS", "ClipStep", "available_methods", "make_clipper"]

METHODS = {
    "none": "no clipping",
    "warmup-only": "global-norm clipping during the AdaGC warmup only, then none",
    "global": "torch.nn.utils.clip_grad_norm_ (max_norm = lambda_abs)",
    "adagc": "AdaGC, per-tensor (the paper's method)",
    "adagc-global": "AdaGC with granularity='global' (the AdaGC-Global ablation)",
    "adagc-raw": "AdaGC, per-tensor, warmup_gamma='raw' (Paddle's ClipGradByAdaptiveNorm/ERNIE)",
    "zclip": "ZClip (z-score adaptive clipping; the zclip package), no max-norm fallback",
}

# ZClip as its authors present it for spike mitigation (README and paper: z-score mode,
# alpha 0.97, z_thresh 2.5, adaptive scaling, clip_factor 1.0, 25 warmup steps), with the
# package's fixed max-norm fallback (max_grad_norm=1.0 by default) switched off, so that what
# is compared is the z-score part and not a second copy of global clipping.
ZCLIP_SETTINGS: dict[str, object] = {
    "mode": "zscore",
    "alpha": 0.97,
    "z_thresh": 2.5,
    "clip_option": "adaptive_scaling",
    "clip_factor": 1.0,
    "warmup_steps": 25,
    "max_grad_norm": None,
}


class ClipStep(NamedTuple):
    """What one clipping call did to the tensors of the model."""

    frac_clipped: float  # fraction of tensors whose gradient was scaled down
    median_coef: float  # median over tensors of the coefficient h_i (1 = untouched)
    min_coef: float  # smallest h_i


Clip = Callable[[int], ClipStep]
"""clip(step) -> ClipStep (clips the model's .grad in place)."""

UNTOUCHED = ClipStep(0.0, 1.0, 1.0)


def available_methods() -> list[str]:
    methods = [m for m in METHODS if m != "zclip"]
    if importlib.util.find_spec("zclip") is not None:
        methods.append("zclip")
    return methods


def _from_coefs(coefs: torch.Tensor) -> ClipStep:
    return ClipStep(float((coefs < 1.0).float().mean()), float(coefs.median()), float(coefs.min()))


def make_clipper(
    name: str,
    model: torch.nn.Module,
    warmup: int,
    max_norm: float,
    lambda_rel: float = 1.04,
) -> Clip:
    params = [p for p in model.parameters() if p.requires_grad]

    def global_clip() -> ClipStep:
        total = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if total <= max_norm:
            return UNTOUCHED
        coef = max_norm / (total + 1e-6)  # the coefficient clip_grad_norm_ applies
        return ClipStep(1.0, coef, coef)

    if name == "none":
        return lambda step: UNTOUCHED
    if name == "warmup-only":
        return lambda step: global_clip() if step < warmup else UNTOUCHED
    if name == "global":
        return lambda step: global_clip()
    if name in ("adagc", "adagc-global", "adagc-raw"):
        clipper = AdaGC(
            model.named_parameters(),
            warmup_steps=warmup,
            lambda_abs=max_norm,
            lambda_rel=lambda_rel,
            granularity="global" if name == "adagc-global" else "tensor",
            warmup_gamma="raw" if name == "adagc-raw" else "clipped",
        )

        def ada(step: int) -> ClipStep:
            return _from_coefs(clipper.clip_().coefficients.detach().float())

        return ada
    if name == "zclip":
        from zclip import ZClip  # type: ignore[import-not-found]

        zc = ZClip(**ZCLIP_SETTINGS)

        def z(step: int) -> ClipStep:
            # ZClip reports nothing about what it clipped: measure each tensor's norm around it.
            grads = [p.grad for p in params if p.grad is not None]
            before = torch.stack([torch.linalg.vector_norm(g) for g in grads])
            zc.step(model)
            after = torch.stack([torch.linalg.vector_norm(g) for g in grads])
            live = before > 0
            coefs = torch.where(live, after / before.clamp_min(1e-30), torch.ones_like(before))
            # A global scaling by c < 1 shows as after/before = c on every tensor; the 1e-6
            # margin keeps float rounding of an untouched tensor from counting as clipped.
            coefs = torch.where(coefs > 1 - 1e-6, torch.ones_like(coefs), coefs)
            return _from_coefs(coefs)

        return z
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
