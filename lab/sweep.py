"""``adagc-lab --sweep-lr``: clean runs over a log grid of peak learning rates, per method and
seed; final loss against learning rate and Wortsman et al.'s LR sensitivity.

LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322, §3.2):

    sensitivity = E_{lr in grid} [ min(loss(lr), loss_0) ] - min_{lr in grid} loss(lr)

with loss(lr) the final loss of a run at peak learning rate lr, loss_0 the loss at
initialisation (here: the training loss of step 0, before any update), and the expectation a
plain mean over the log-spaced grid. A run whose loss became non-finite counts as loss_0. We
use the final *validation* loss, averaged over seeds at each lr, and the method's own minimum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import adagc

from .data import Corpus
from .report import aligned
from .train import RunResult

__all__ = [
    "DEFAULT_LRS",
    "SWEEP_METHODS",
    "format_sweep_table",
    "lr_sensitivity",
    "plot_sweep",
    "sweep_record",
    "sweep_summary",
    "unigram_loss",
    "write_sweep",
]

# A 1-2-5 log grid, 2e-3 .. 1 (9 points): the small model trains slowly at the bottom, best
# near 1e-2, and at the top no method learns more than byte frequencies (a probe on the
# 1-3 grid 1e-3 .. 1 found the break between 0.3 and 1, so the top is sampled finer).
DEFAULT_LRS = (2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)
SWEEP_METHODS = ("none", "global", "adagc", "adagc-global", "adagc-raw", "zclip")

RECORD_FIELDS = (
    "method",
    "lr",
    "seed",
    "init_loss",
    "final_train_loss",
    "val_loss",
    "max_loss",
    "spike_count",
    "spike_score",
    "frac_clipped",
    "median_coef",
    "min_coef",
    "diverged",
    "nonfinite",
    "steps_run",
)


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def unigram_loss(corpus: Corpus) -> float:
    """Cross-entropy (nats/byte) on the validation split of the training split's byte
    frequencies (add-one smoothed): the loss of a model that learned nothing but unigrams."""
    counts = torch.bincount(corpus.train, minlength=256).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[corpus.val].mean())


def sweep_record(r: RunResult, lr: float, baseline: float, spike: dict[str, Any]) -> dict[str, Any]:
    """One record of sweep.json. ``diverged``: the loss became non-finite, or the final
    validation loss is no better than ``baseline`` (the unigram loss: nothing learned)."""
    finite = [x for x in r.losses if math.isfinite(x)]
    n = max(1, len(r.losses) // 10)
    final_train = _mean(r.losses[-n:]) if not r.diverged else math.nan
    rep = adagc.spike_score(r.losses, **spike)
    val = r.val_loss if math.isfinite(r.val_loss) else math.nan
    return {
        "method": r.method,
        "lr": lr,
        "seed": r.seed,
        "init_loss": r.losses[0],
        "final_train_loss": final_train,
        "val_loss": val,
        "max_loss": max(finite) if finite else math.nan,
        "spike_count": len(rep.spikes),
        "spike_score": rep.score,
        "frac_clipped": _mean(r.frac_clipped),
        "median_coef": _mean(r.coef_median),
        "min_coef": min(r.coef_min) if r.coef_min else math.nan,
        "diverged": bool(r.diverged or not val < baseline),
        "nonfinite": r.diverged,
        "steps_run": len(r.losses),
    }


def lr_sensitivity(lrs: Sequence[float], losses: Sequence[float], loss0: float) -> float:
    """Wortsman et al.'s LR sensitivity of one curve: mean over the grid of
    min(loss, loss0) minus the curve's minimum. A NaN loss (a run that died) counts as loss0."""
    if len(lrs) != len(losses) or not losses:
        raise ValueError("lr_sensitivity needs one loss per learning rate")
    capped = [loss0 if math.isnan(x) else min(x, loss0) for x in losses]
    return sum(capped) / len(capped) - min(capped)


def sweep_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: the seed-mean curve, its best LR, its LR sensitivity."""
    rows = []
    for m in dict.fromkeys(r["method"] for r in records):
        recs = [r for r in records if r["method"] == m]
        lrs = sorted({r["lr"] for r in recs})
        loss0 = _mean([r["init_loss"] for r in recs])
        curve = []
        for lr in lrs:
            at = [r for r in recs if r["lr"] == lr]
            curve.append(
                _mean(
                    [
                        min(r["val_loss"], loss0) if not math.isnan(r["val_loss"]) else loss0
                        for r in at
                    ]
                )
            )
        best = min(range(len(lrs)), key=lambda i: curve[i])
        stable = [lr for lr in lrs if not any(r["diverged"] for r in recs if r["lr"] == lr)]
        rows.append(
            {
                "method": m,
                "seeds": len({r["seed"] for r in recs}),
                "lrs": lrs,
                "curve": curve,
                "loss0": loss0,
                "best_lr": lrs[best],
                "best_val_loss": curve[best],
                "lr_sensitivity": lr_sensitivity(lrs, curve, loss0),
                "diverged": sum(r["diverged"] for r in recs),
                "runs": len(recs),
                "max_stable_lr": max(stable) if stable else math.nan,
                "spikes": sum(r["spike_count"] for r in recs),
                "frac_clipped": _mean([r["frac_clipped"] for r in recs]),
            }
        )
    return rows


def format_sweep_table(rows: list[dict[str, Any]]) -> str:
    lrs = rows[0]["lrs"] if rows else []
    head = [
        "method",
        "LR sens",
        "best lr",
        "best val",
        "max stable",
        "diverged",
        "spikes",
        "clipped",
    ] + [f"{lr:g}" for lr in lrs]
    cells = [head]
    for r in rows:
        cells.append(
            [
                r["method"],
                f"{r['lr_sensitivity']:.3f}",
                f"{r['best_lr']:g}",
                f"{r['best_val_loss']:.3f}",
                "-" if math.isnan(r["max_stable_lr"]) else f"{r['max_stable_lr']:g}",
                f"{r['diverged']}/{r['runs']}",
                str(r["spikes"]),
                f"{r['frac_clipped']:.2f}",
            ]
            + [f"{x:.3f}" for x in r["curve"]]
        )
    return aligned(cells)


def plot_sweep(records: list[dict[str, Any]], path: Path, title: str, baseline: float) -> None:
    """Final validation loss against peak LR, one line per method (mean over seeds, band
    min-max); left the whole range (capped at the loss at init), right zoomed on the runs
    that learned (below the unigram loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    loss0 = _mean([r["init_loss"] for r in records])
    lowest = loss0
    for m in dict.fromkeys(r["method"] for r in records):
        recs = [r for r in records if r["method"] == m]
        lrs = sorted({r["lr"] for r in recs})
        per = [[_nan(r["val_loss"]) for r in recs if r["lr"] == lr] for lr in lrs]
        shown = [[loss0 if math.isnan(v) else min(v, loss0) for v in vs] for vs in per]
        mean = [sum(v) / len(v) for v in shown]
        lowest = min(lowest, *(min(v) for v in shown))
        div = [
            (lr, mu)
            for lr, mu in zip(lrs, mean)
            if any(r["diverged"] for r in recs if r["lr"] == lr)
        ]
        for ax in axes:
            (line,) = ax.plot(lrs, mean, marker="o", ms=3, lw=1.4, label=m)
            lo, hi = [min(v) for v in shown], [max(v) for v in shown]
            ax.fill_between(lrs, lo, hi, color=line.get_color(), alpha=0.15)
            if div:
                xs, ys = zip(*div)
                ax.scatter(xs, ys, marker="x", color=line.get_color(), s=40, zorder=3)
    for ax in axes:
        ax.set_xscale("log")
        ax.axhline(baseline, color="grey", ls=":", lw=0.9, label="unigram (byte-frequency) loss")
        ax.set_xlabel("peak learning rate")
    axes[0].set_ylabel(f"final validation loss (capped at the loss at init, {loss0:.2f})")
    axes[1].set_ylim(lowest - 0.02, baseline + 0.08)
    axes[1].set_title("zoomed: runs that learned more than byte frequencies", fontsize=9)
    axes[0].set_title(
        title + "\nline: mean over seeds, band: min-max; x: a diverged run", fontsize=9
    )
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def _json_safe(x: Any) -> Any:
    """NaN/Inf as null, so sweep.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_sweep(
    out: Path,
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    title: str,
    baseline: float,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(_json_safe(records), indent=2))
    (out / "sweep_summary.json").write_text(
        json.dumps(_json_safe({"meta": meta, "summary": rows}), indent=2)
    )
    plot_sweep(records, out / "sweep.png", title, baseline)
    (out / "sweep.txt").write_text(format_sweep_table(rows) + "\n")
