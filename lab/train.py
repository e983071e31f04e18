"""One training run: a method, a seed, and (or not) the fault plan."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import Corpus
from .faults import Fault
from .methods import make_clipper
from .model import GPT, GPTConfig

__all__ = ["RunResult", "TrainConfig", "train"]


@dataclass(frozen=True)
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    steps: int = 200
    batch: int = 16
    lr: float = 3e-3
    lr_warmup: int = 20
    optimizer: str = "adamw"
    adagc_warmup: int = 40
    max_norm: float = 1.0
    lambda_rel: float = 1.04
    weight_decay: float = 0.1
    device: str = "cpu"
    val_batches: int = 8


@dataclass
class RunResult:
    method: str
    seed: int
    faulted: bool
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    frac_clipped: list[float] = field(default_factory=list)
    coef_median: list[float] = field(default_factory=list)
    coef_min: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    clip_ms: list[float] = field(default_factory=list)
    injected: list[int] = field(default_factory=list)
    val_loss: float = math.nan
    diverged: bool = False  # the loss became non-finite; training stopped there


def _lr(cfg: TrainConfig, step: int, faults: list[Fault]) -> float:
    if step < cfg.lr_warmup:
        lr = cfg.lr * (step + 1) / cfg.lr_warmup
    else:
        progress = (step - cfg.lr_warmup) / max(1, cfg.steps - cfg.lr_warmup)
        lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    for f in faults:
        if f.kind == "lr" and f.covers(step):
            lr *= f.factor
    return lr


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    params = list(model.parameters())
    if cfg.optimizer == "adamw":
        return [
            torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        ]
    if cfg.optimizer == "sgd":
        return [torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)]
    if cfg.optimizer == "muon":
        mats = [
            p
            for n, p in model.named_parameters()
            if p.ndim == 2 and "wte" not in n and "wpe" not in n and "head" not in n
        ]
        rest = [p for p in params if all(p is not q for q in mats)]
        return [
            torch.optim.Muon([{"params": mats, "lr_scale": 10.0}], lr=cfg.lr * 10),
            torch.optim.AdamW(rest, lr=cfg.lr, betas=(0.9, 0.95)),
        ]
    if cfg.optimizer == "lion":  # a sign optimizer: a tenth of AdamW's lr, as its authors advise
        from pytorch_optimizer import Lion

        groups = [{"params": params, "lr_scale": 0.1}]
        return [Lion(groups, lr=cfg.lr / 10, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)]
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _grad_target(model: torch.nn.Module, fault: Fault) -> torch.nn.Parameter:
    named = dict(model.named_parameters())
    if fault.tensor is None:
        return named["blocks.0.fc.weight"]
    if fault.tensor in named:
        return named[fault.tensor]
    if fault.tensor.isdigit() and int(fault.tensor) < len(named):
        return list(named.values())[int(fault.tensor)]
    raise ValueError(f"grad fault: no parameter {fault.tensor!r}; names: {', '.join(named)}")


def train(
    method: str,
    seed: int,
    faults: list[Fault],
    corpus: Corpus,
    cfg: TrainConfig,
    progress: Any = None,
) -> RunResult:
    """Train once. Data order, initialisation and faults depend only on ``seed``."""
    torch.manual_seed(seed)
    model = GPT(cfg.model).to(cfg.device)
    opts = _optimizer(cfg, model)
    clip = make_clipper(method, model, cfg.adagc_warmup, cfg.max_norm, cfg.lambda_rel)
    data_gen = torch.Generator().manual_seed(seed)
    result = RunResult(method, seed, bool(faults))
    ctx = cfg.model.ctx
    for step in range(cfg.steps):
        x, y = corpus.batch("train", cfg.batch, ctx, data_gen)
        for f in faults:
            if f.kind == "data" and f.step == step:
                g = torch.Generator().manual_seed(10_000 + step)
                if f.mode == "random":
                    x = torch.randint(0, 256, x.shape, generator=g)
                    y = torch.randint(0, 256, y.shape, generator=g)
                else:
                    x, y = torch.full_like(x, 32), torch.full_like(y, 32)
                result.injected.append(step)
        x, y = x.to(cfg.device), y.to(cfg.device)
        lr = _lr(cfg, step, faults)
        for o in opts:
            for group in o.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # the schedule, per optimizer
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        )
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for f in faults:
            if f.kind == "grad" and f.step == step:
                grad = _grad_target(model, f).grad
                if grad is not None:
                    grad.mul_(f.factor)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        result.grad_norms.append(float(torch.nn.utils.get_total_norm(grads)))
        t0 = time.perf_counter()
        clipped = clip(step)
        result.clip_ms.append((time.perf_counter() - t0) * 1e3)
        result.frac_clipped.append(clipped.frac_clipped)
        result.coef_median.append(clipped.median_coef)
        result.coef_min.append(clipped.min_coef)
        for o in opts:
            o.step()
        result.losses.append(float(loss.detach()))
        result.lrs.append(lr)
        if progress is not None:
            progress.update(1)
        if not math.isfinite(result.losses[-1]):
            result.diverged = True  # nothing more to learn from this run
            if progress is not None:
                progress.update(cfg.steps - step - 1)
            return result
    model.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1234)
        vals = []
        for _ in range(cfg.val_batches):
            x, y = corpus.batch("val", cfg.batch, ctx, gen)
            logits = model(x.to(cfg.device))
            vals.append(
                float(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, 256), y.to(cfg.device).reshape(-1)
                    )
                )
            )
    result.val_loss = sum(vals) / len(vals)
    return result
