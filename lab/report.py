"""Summaries of lab runs: paired damage, spike scores, the table, metrics.json, curves.csv
and the PNG."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import adagc

from .faults import Fault
from .train import RunResult

__all__ = ["format_table", "summarize", "write_outputs"]

GAP_WINDOW = 30  # steps after a fault in which the peak gap is measured


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _tail(xs: list[float]) -> float:
    n = max(1, len(xs) // 10)
    return _mean(xs[-n:])


def paired_damage(faulted: RunResult, clean: RunResult, faults: list[Fault]) -> dict[str, float]:
    """Faulted run minus the same method's clean run on the same batches."""
    skip = set(faulted.injected)
    gap = [f - c for f, c in zip(faulted.losses, clean.losses)]
    peaks = []
    for fault in faults:
        window = [
            gap[t]
            for t in range(fault.step, min(len(gap), fault.step + GAP_WINDOW))
            if t not in skip
        ]
        if window:
            peaks.append(max(window))
    return {
        "peak_gap": _mean(peaks),
        "final_gap": _tail(faulted.losses) - _tail(clean.losses),
        "val_gap": faulted.val_loss - clean.val_loss,
    }


def _excursion(r: RunResult) -> float:
    skip = set(r.injected)
    best = 0.0
    for t in range(10, len(r.losses)):
        if t in skip:
            continue
        prev = [r.losses[s] for s in range(t - 10, t) if s not in skip]
        if prev:
            best = max(best, r.losses[t] - sum(prev) / len(prev))
    return best


def summarize(
    results: list[RunResult], faults: list[Fault], spike: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per method, averaged over seeds (faulted runs, with paired damage)."""
    rows = []
    methods = list(dict.fromkeys(r.method for r in results))
    for m in methods:
        faulted = [r for r in results if r.method == m and r.faulted]
        clean = {r.seed: r for r in results if r.method == m and not r.faulted}
        main = faulted or list(clean.values())
        row: dict[str, Any] = {"method": m, "seeds": len(main)}
        row["final_train_loss"] = _mean([_tail(r.losses) for r in main])
        row["val_loss"] = _mean([r.val_loss for r in main])
        row["val_ppl"] = math.exp(row["val_loss"])
        row["spike_score_loss"] = _mean(
            [adagc.spike_score(r.losses, exclude=r.injected, **spike).score for r in main]
        )
        row["spike_score_gradnorm"] = _mean(
            [adagc.spike_score(r.grad_norms, exclude=r.injected, **spike).score for r in main]
        )
        row["frac_clipped"] = _mean([_mean(r.frac_clipped) for r in main])
        clean_runs = list(clean.values()) or main
        row["clean_frac_clipped"] = _mean([_mean(r.frac_clipped) for r in clean_runs])
        row["clean_median_coef"] = _mean([_mean(r.coef_median) for r in clean_runs])
        row["clean_min_coef"] = min(min(r.coef_min, default=1.0) for r in clean_runs)
        row["max_excursion"] = _mean([_excursion(r) for r in main])
        row["clip_ms"] = statistics.median([t for r in main for t in r.clip_ms])
        if faulted and clean:
            dmg = [paired_damage(r, clean[r.seed], faults) for r in faulted if r.seed in clean]
            for key in ("peak_gap", "final_gap", "val_gap"):
                row[key] = _mean([d[key] for d in dmg])
            if clean:
                row["clean_val_loss"] = _mean([c.val_loss for c in clean.values()])
        rows.append(row)
    return rows


COLUMNS = [
    ("method", "method", "{}"),
    ("final_train_loss", "train", "{:.3f}"),
    ("val_loss", "val", "{:.3f}"),
    ("val_ppl", "val ppl", "{:.2f}"),
    ("clean_val_loss", "clean val", "{:.3f}"),
    ("peak_gap", "peak dmg", "{:+.3f}"),
    ("final_gap", "final dmg", "{:+.3f}"),
    ("spike_score_loss", "spk loss%", "{:.2f}"),
    ("spike_score_gradnorm", "spk |g|%", "{:.2f}"),
    ("frac_clipped", "clipped", "{:.2f}"),
    ("clean_frac_clipped", "clean clip", "{:.2f}"),
    ("clean_median_coef", "med h", "{:.3f}"),
    ("max_excursion", "max exc", "{:.3f}"),
    ("clip_ms", "clip ms", "{:.2f}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append(
            [
                c[2].format(r[c[0]])
                if c[0] in r and not (isinstance(r[c[0]], float) and math.isnan(r[c[0]]))
                else "-"
                for c in cols
            ]
        )
    return aligned(cells)


def aligned(cells: list[list[str]]) -> str:
    """Rows of cells as text columns: the first left-aligned, the rest right-aligned, a rule
    under the header row."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _smooth(xs: list[float], k: int = 5) -> list[float]:
    """Trailing k-step mean; NaN (an injected batch) is left out and drawn as a gap."""
    out: list[float] = []
    acc: list[float] = []
    for x in xs:
        if math.isnan(x):
            out.append(math.nan)
            continue
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot(results: list[RunResult], faults: list[Fault], path: Path, title: str) -> None:
    """Loss (faulted run of seed 0), paired damage, and the over-clipping panels: per step,
    the fraction of tensors clipped and the median / minimum clipping coefficient of each
    method (seed 0's clean run where there is one: clipping with nothing injected)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = min(r.seed for r in results)
    methods = list(dict.fromkeys(r.method for r in results))
    has_clean = any(not r.faulted for r in results) and any(r.faulted for r in results)
    n_panels = 4 if has_clean else 3
    fig, axes = plt.subplots(
        n_panels, 1, figsize=(10, 2.6 * n_panels + 1), sharex=True, squeeze=False
    )
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    # adagc-raw often coincides with adagc: dashed, so both stay visible
    styles = {m: "--" if m.endswith("-raw") else "-" for m in methods}
    ax = axes[0][0]
    for m in methods:
        run = next(
            (r for r in results if r.method == m and r.seed == seed and r.faulted),
            next(r for r in results if r.method == m and r.seed == seed),
        )
        shown = [math.nan if t in set(run.injected) else v for t, v in enumerate(run.losses)]
        ax.plot(_smooth(shown), label=m, lw=1.4, color=colors[m], ls=styles[m])
    ax.set_ylabel("training loss (5-step mean;\ninjected batch left out)")
    ax.set_title(title.replace("; ", ";\n", 1), fontsize=9)
    if has_clean:
        bx = axes[1][0]
        for m in methods:
            f = next(r for r in results if r.method == m and r.seed == seed and r.faulted)
            c = next(r for r in results if r.method == m and r.seed == seed and not r.faulted)
            gap = [a - b for a, b in zip(f.losses, c.losses)]
            for t in f.injected:
                gap[t] = math.nan  # the outlier batch's own loss is the data's, not damage
            bx.plot(_smooth(gap), label=m, lw=1.4, color=colors[m], ls=styles[m])
        bx.axhline(0, color="grey", lw=0.8)
        bx.set_ylabel("damage: faulted - clean loss")
    cx, dx = axes[-2][0], axes[-1][0]
    for m in methods:
        run = next(
            (r for r in results if r.method == m and r.seed == seed and not r.faulted),
            next(r for r in results if r.method == m and r.seed == seed),
        )
        cx.plot(_smooth(run.frac_clipped), lw=1.2, color=colors[m], ls=styles[m], label=m)
        dx.plot(run.coef_median, lw=1.2, color=colors[m], ls=styles[m])
        dx.plot(run.coef_min, lw=0.8, ls=":", color=colors[m])
    which = "clean run" if has_clean else "run"
    cx.set_ylabel(f"fraction of tensors clipped\n(5-step mean, {which})")
    cx.set_ylim(-0.03, 1.03)
    dx.set_ylabel(f"coefficient h ({which}):\nmedian solid, min dotted")
    dx.set_yscale("log")
    dx.axhline(1.0, color="grey", lw=0.8)
    for i, row in enumerate(axes):
        a = row[0]
        for fault in faults:
            a.axvline(fault.step, color="red", ls="--", lw=0.8)
            if i == 0:  # named once, on the top panel
                a.text(
                    fault.step,
                    a.get_ylim()[1],
                    " " + fault.describe(),
                    color="red",
                    fontsize=7,
                    va="top",
                    rotation=90,
                )
    axes[-1][0].set_xlabel("step")
    axes[0][0].legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(
    out: Path,
    results: list[RunResult],
    rows: list[dict[str, Any]],
    faults: list[Fault],
    meta: dict[str, Any],
    title: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "faults": [f.describe() for f in faults],
                "summary": rows,
                "runs": [
                    {
                        "method": r.method,
                        "seed": r.seed,
                        "faulted": r.faulted,
                        "val_loss": r.val_loss,
                        "injected_steps": r.injected,
                        "frac_clipped": _mean(r.frac_clipped),
                        "median_coef": _mean(r.coef_median),
                        "min_coef": min(r.coef_min, default=1.0),
                    }
                    for r in results
                ],
            },
            indent=2,
            default=float,
        )
    )
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "method",
                "seed",
                "run",
                "step",
                "loss",
                "grad_norm",
                "frac_clipped",
                "coef_median",
                "coef_min",
                "lr",
                "injected",
            ]
        )
        for r in results:
            inj = set(r.injected)
            for t, (loss, gn, fc, cm, cn, lr) in enumerate(
                zip(r.losses, r.grad_norms, r.frac_clipped, r.coef_median, r.coef_min, r.lrs)
            ):
                w.writerow(
                    [
                        r.method,
                        r.seed,
                        "faulted" if r.faulted else "clean",
                        t,
                        f"{loss:.6f}",
                        f"{gn:.6g}",
                        f"{fc:.4f}",
                        f"{cm:.6g}",
                        f"{cn:.6g}",
                        f"{lr:.6g}",
                        int(t in inj),
                    ]
                )
    plot(results, faults, out / "loss.png", title)
    (out / "summary.txt").write_text(format_table(rows) + "\n")
