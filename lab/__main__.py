"""``adagc-lab``: train a small byte-level GPT on real text with each clipping method under the
same faults, and show what each method does with them. ``adagc-lab --help`` for options."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

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
    methods = (
        available_methods()
        if ns.methods is None
        else [m.strip() for m in ns.methods.split(",") if m.strip()]
    )
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m not in available_methods():
            parser.error(f"method {m!r} needs the {m} package: pip install {m}")
    steps = ns.steps if ns.steps is not None else steps
    seeds = ns.seeds if ns.seeds is not None else seeds
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
        device=ns.device,
    )
    out = Path(ns.out) if ns.out else Path("runs") / time.strftime("lab-%Y%m%d-%H%M%S")
    if ns.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(ns.threads)
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
        f"AdaGC warmup {warm}; faults dashed (seed 0)"
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


if __name__ == "__main__":
    sys.exit(main())
