"""``adagc-lab``: train a small byte-level GPT on real text with each clipping method under the
same faults, and show what each method does with them. ``adagc-lab --help`` for options."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

PRESETS = {
    # name: (n_layer, d_model, n_head, ctx, batch, steps, adagc_warmup, seeds, faults)
    "small": (2, 64, 4, 64, 16, 200, 40, 1, "grad:70:1e3,data:110:random,lr:150:10:5"),
    "medium": (
        4,
        128,
        4,
        128,
        16,
        360,
        40,
        3,
        "grad:100:1e3,data:160:random,lr:120:10:5,lr:200:10:5,lr:280:10:5",
    ),
    "large": (6, 256, 8, 256, 32, 2000, 100, 3, "grad:500:1e3,data:800:random,lr:1200:10:10"),
}


def build_parser() -> argparse.ArgumentParser:
    from .faults import DEFAULT_FAULTS
    from .methods import METHODS

    p = argparse.ArgumentParser(
        prog="adagc-lab",
        description="Compare gradient clipping methods (none, global, AdaGC, ...) on a small GPT "
        "trained on real text, under the same injected faults. Results go to a run folder.",
    )
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="small",
        help="model/steps scale (default small: < 3 min on 2 CPU cores)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma list of: {', '.join(METHODS)} (default: all available)",
    )
    p.add_argument(
        "--faults",
        default=None,
        help=f"fault plan, or 'clean' (default for small: {DEFAULT_FAULTS})",
    )
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: preset's)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: preset's)")
    p.add_argument(
        "--optimizer",
        choices=["adamw", "sgd", "muon", "lion"],
        default="adamw",
        help="adamw (default), sgd (momentum 0.9), muon (torch.optim.Muon for hidden matrices), "
        "lion (pytorch-optimizer's Lion, when installed)",
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument(
        "--sweep-lr",
        action="store_true",
        help="clean runs over a log grid of peak learning rates (--lrs) for each method and "
        "seed (default 2 seeds, no weight decay); writes sweep.json, sweep.png, sweep.txt and "
        "prints each method's LR sensitivity (Wortsman et al. 2023)",
    )
    p.add_argument(
        "--lrs",
        default=None,
        help="comma list of peak learning rates for --sweep-lr "
        "(default 2e-3,5e-3,1e-2,2e-2,5e-2,0.1,0.2,0.5,1)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="AdamW/Lion weight decay (default 0.1; 0 for --sweep-lr)",
    )
    p.add_argument(
        "--adagc-warmup",
        type=int,
        default=None,
        help="AdaGC warmup_steps T_start (default: the preset's, 40 for small)",
    )
    p.add_argument("--lambda-rel", type=float, default=1.04, help="AdaGC lambda_rel (default 1.04)")
    p.add_argument(
        "--corpus",
        nargs="+",
        default=None,
        help="text files/folders (default: this Python's stdlib)",
    )
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="corpus size cap")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-clean", action="store_true", help="skip the clean runs (no paired damage)")
    p.add_argument("--spike-window", type=int, default=50, help="spike score window W")
    p.add_argument("--spike-sigma", type=float, default=5.0, help="spike score threshold sigma")
    p.add_argument("--out", default=None, help="run folder (default: runs/lab-<timestamp>)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: these small models are dominated by "
        "per-op overhead, which more threads only add to on a busy machine)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    from .faults import FaultPlanError, parse_faults
    from .methods import METHODS, available_methods

    n_layer, d_model, n_head, ctx, batch, steps, warm, seeds, preset_faults = PRESETS[ns.preset]
    try:
        faults = parse_faults(ns.faults if ns.faults is not None else preset_faults)
    except FaultPlanError as exc:
        parser.error(str(exc))
    from .sweep import DEFAULT_LRS, SWEEP_METHODS

    if ns.methods is not None:
        methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    elif ns.sweep_lr:
        methods = [m for m in SWEEP_METHODS if m in available_methods()]
    else:
        methods = available_methods()
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m not in available_methods():
            parser.error(f"method {m!r} needs the {m} package: pip install {m}")
    steps = ns.steps if ns.steps is not None else steps
    seeds = ns.seeds if ns.seeds is not None else (max(2, seeds) if ns.sweep_lr else seeds)
    warm = ns.adagc_warmup if ns.adagc_warmup is not None else warm
    if warm < 0 or not ns.lambda_rel > 0:
        parser.error("--adagc-warmup must be >= 0 and --lambda-rel > 0")
    lrs: list[float] = list(DEFAULT_LRS)
    if ns.lrs is not None:
        if not ns.sweep_lr:
            parser.error("--lrs is for --sweep-lr")
        try:
            lrs = [float(x) for x in ns.lrs.split(",") if x.strip()]
        except ValueError:
            parser.error(f"--lrs must be a comma list of numbers, got {ns.lrs!r}")
        if not lrs or not all(0 < x < math.inf for x in lrs):
            parser.error(f"--lrs must be positive finite numbers, got {ns.lrs!r}")
    if ns.sweep_lr:
        if ns.faults not in (None, "clean", "none"):
            parser.error("--sweep-lr runs clean (no injected faults); leave out --faults")
        faults = []  # the sweep is about natural instabilities: clean runs only
    weight_decay = ns.weight_decay if ns.weight_decay is not None else (0.0 if ns.sweep_lr else 0.1)
    if steps < 2 or seeds < 1:
        parser.error("--steps must be >= 2 and --seeds >= 1")
    if any(f.step >= steps for f in faults):
        parser.error(
            f"a fault is scheduled at or after the last step ({steps}); adjust --faults or --steps"
        )
    for c in ns.corpus or []:
        if not Path(c).exists():
            parser.error(f"corpus path {c!r} does not exist")
    if ns.optimizer == "lion" and importlib.util.find_spec("pytorch_optimizer") is None:
        parser.error("--optimizer lion needs pytorch-optimizer: pip install pytorch-optimizer")
    if ns.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA device is available")

    import torch
    from tqdm import tqdm

    from .data import load_corpus
    from .model import GPTConfig
    from .report import format_table, summarize, write_outputs
    from .train import TrainConfig, train

    try:
        corpus = load_corpus(ns.corpus, ns.max_bytes)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    cfg = TrainConfig(
        model=GPTConfig(n_layer, d_model, n_head, ctx),
        steps=steps,
        batch=batch,
        lr=ns.lr,
        optimizer=ns.optimizer,
        adagc_warmup=warm,
        lambda_rel=ns.lambda_rel,
        weight_decay=weight_decay,
        device=ns.device,
    )
    out = Path(ns.out) if ns.out else Path("runs") / time.strftime("lab-%Y%m%d-%H%M%S")
    if ns.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(ns.threads)
    if ns.sweep_lr:
        return _sweep(ns, cfg, corpus, methods, seeds, lrs, out)
    plans = [(True, faults)] if faults else []
    if not ns.no_clean or not faults:
        plans.append((False, []))
    print(
        f"adagc-lab: {ns.preset} preset, {len(corpus.train) + len(corpus.val):,} bytes from "
        f"{len(corpus.sources)} files, {steps} steps x {len(methods)} methods x {seeds} seed(s) "
        f"x {len(plans)} run(s); faults: {', '.join(f.describe() for f in faults) or 'none'}"
    )
    results = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        for method in methods:
            for faulted, plan in plans:
                label = f"{method:<12} seed {seed} {'faulted' if faulted else 'clean  '}"
                with tqdm(
                    total=steps, desc=label, disable=ns.quiet, leave=False, file=sys.stderr
                ) as bar:
                    results.append(train(method, seed, plan, corpus, cfg, bar))
    spike = {
        "window": ns.spike_window,
        "sigma": ns.spike_sigma,
        "min_history": min(20, ns.spike_window),
    }
    rows = summarize(results, faults, spike)
    title = (
        f"adagc-lab {ns.preset}: {n_layer}-layer d{d_model} byte GPT, {ns.optimizer}, "
        f"peak LR {ns.lr:g}, "
        f"AdaGC warmup {warm}, lambda_rel {ns.lambda_rel:g}, wd {weight_decay:g}; "
        "faults dashed (seed 0)"
    )
    meta = {
        "preset": ns.preset,
        "steps": steps,
        "seeds": seeds,
        "methods": methods,
        "optimizer": ns.optimizer,
        "lr": ns.lr,
        "model": [n_layer, d_model, n_head, ctx],
        "batch": batch,
        "adagc_warmup": warm,
        "lambda_rel": ns.lambda_rel,
        "weight_decay": weight_decay,
        "corpus_files": len(corpus.sources),
        "spike": spike,
        "seconds": time.perf_counter() - t0,
    }
    write_outputs(out, results, rows, faults, meta, title)
    print(format_table(rows))
    print(
        "peak/final dmg: faulted minus the same method's clean run (same batches); "
        "spk: spike score % on clean batches; clipped: mean fraction of tensors clipped per step"
    )
    print(
        f"wrote {out}/ (summary.txt, metrics.json, curves.csv, loss.png) "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    return 0


def _sweep(
    ns: argparse.Namespace,
    cfg: Any,
    corpus: Any,
    methods: list[str],
    seeds: int,
    lrs: list[float],
    out: Path,
) -> int:
    """The learning-rate sweep (``--sweep-lr``): clean runs, one per LR, seed and method."""
    import dataclasses

    from tqdm import tqdm

    from .methods import ZCLIP_SETTINGS
    from .sweep import format_sweep_table, sweep_record, sweep_summary, unigram_loss, write_sweep
    from .train import train

    spike = {
        "window": ns.spike_window,
        "sigma": ns.spike_sigma,
        "min_history": min(20, ns.spike_window),
    }
    baseline = unigram_loss(corpus)
    m = cfg.model
    print(
        f"adagc-lab --sweep-lr: {ns.preset} preset ({m.n_layer}-layer d{m.d_model}), "
        f"{cfg.steps} steps x {len(lrs)} LRs x {len(methods)} methods ({', '.join(methods)}) "
        f"x {seeds} seed(s), "
        f"clean, {ns.optimizer} wd {cfg.weight_decay:g}; LRs {', '.join(f'{x:g}' for x in lrs)}"
    )
    records = []
    t0 = time.perf_counter()
    total = len(lrs) * len(methods) * seeds
    with tqdm(total=total, desc="sweep", disable=ns.quiet, file=sys.stderr) as outer:
        for lr in lrs:
            run_cfg = dataclasses.replace(cfg, lr=lr)
            for seed in range(seeds):
                for method in methods:
                    outer.set_postfix_str(f"lr {lr:g} seed {seed} {method}")
                    r = train(method, seed, [], corpus, run_cfg)
                    records.append(sweep_record(r, lr, baseline, spike))
                    outer.update(1)
    rows = sweep_summary(records)
    seconds = time.perf_counter() - t0
    meta = {
        "preset": ns.preset,
        "model": [m.n_layer, m.d_model, m.n_head, m.ctx],
        "steps": cfg.steps,
        "batch": cfg.batch,
        "seeds": seeds,
        "lrs": lrs,
        "methods": methods,
        "optimizer": ns.optimizer,
        "weight_decay": cfg.weight_decay,
        "adagc_warmup": cfg.adagc_warmup,
        "lambda_rel": cfg.lambda_rel,
        "zclip": {k: v for k, v in ZCLIP_SETTINGS.items()} if "zclip" in methods else None,
        "unigram_loss": baseline,
        "spike": spike,
        "seconds": seconds,
        "lr_sensitivity": "Wortsman et al. 2023: mean over the LR grid of min(val loss, "
        "loss at init) minus the minimum over the grid (seed-mean curve per method)",
    }
    title = (
        f"adagc-lab --sweep-lr {ns.preset}: {m.n_layer}-layer d{m.d_model} byte GPT, "
        f"{cfg.steps} steps, {ns.optimizer} wd {cfg.weight_decay:g}, {seeds} seeds, clean"
    )
    write_sweep(out, records, rows, meta, title, baseline)
    print(format_sweep_table(rows))
    print(
        "LR sens: Wortsman et al. 2023 LR sensitivity = mean over the grid of "
        "min(final val loss, loss at init) - its minimum (seed-mean curve); diverged: "
        f"non-finite, or val loss >= the unigram loss {baseline:.3f}; columns after 'clipped': "
        "the seed-mean final val loss at each LR"
    )
    print(f"wrote {out}/ (sweep.json, sweep_summary.json, sweep.txt, sweep.png) in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
