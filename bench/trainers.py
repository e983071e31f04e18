"""``python -m adagc.bench.trainers [--steps 30] [--repeats 3]``: the trainer callbacks' cost.

One training step of a small random-init GPT-2 (4 layers, d=256, CPU) in Hugging Face
``Trainer`` and in Lightning, three ways each, interleaved in the same process:

- ``callback``: ``AdaGCCallback`` (what a user writes);
- ``by hand``: the same ``AdaGC`` with a hand-written ``clip_()`` call in the trainer's own hook
  (HF: a callback's ``on_pre_optimizer_step``; Lightning: ``configure_gradient_clipping``);
- ``own clip``: the trainer's global-norm clipping (``max_grad_norm=1.0`` /
  ``gradient_clip_val=1.0``).

Prints the median step time of each and the ratios callback / by hand (the callback's
overhead; expect 1.0 within noise) and callback / own clip. Needs ``adagc[transformers,lightning]``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from adagc.adapters.torch import AdaGC

SEQ, BATCH = 64, 8


def _model() -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=256, n_positions=SEQ, n_embd=256, n_layer=4, n_head=4, tie_word_embeddings=True
    )
    return transformers.GPT2LMHeadModel(cfg)


def _rows(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 256, (n, SEQ), generator=g)
    return [{"input_ids": t, "labels": t} for t in toks]


def _median_step(stamps: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps[2:]) * 1e3  # ms, past the first steps' warm-up


def hf_step_ms(mode: str, steps: int) -> float:
    import transformers

    from adagc.adapters.transformers import AdaGCCallback

    stamps: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stamps.append(time.perf_counter())

    class ByHand(transformers.TrainerCallback):
        def __init__(self, model: Any) -> None:
            self.clipper = AdaGC(model, warmup_steps=5)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.clipper.clip_()

    model = _model()
    callbacks: list[Any] = [Clock()]
    if mode == "callback":
        callbacks.append(AdaGCCallback(warmup_steps=5))
    elif mode == "by hand":
        callbacks.append(ByHand(model))
    args = transformers.TrainingArguments(
        output_dir="/tmp/adagc-bench-hf",
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        max_grad_norm=1.0 if mode == "own clip" else 0.0,
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_rows(steps * BATCH), callbacks=callbacks
    )
    trainer.remove_callback(transformers.PrinterCallback)  # no log lines in the table
    trainer.train()
    return _median_step(stamps)


def lightning_step_ms(mode: str, steps: int) -> float:
    import lightning.pytorch as pl

    from adagc.adapters.lightning import AdaGCCallback

    stamps: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, *a: Any, **kw: Any) -> None:
            stamps.append(time.perf_counter())

    class LM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _model()
            self.clipper = AdaGC(self.model, warmup_steps=5) if mode == "by hand" else None

        def training_step(self, batch: Any, idx: int) -> Any:
            return self.model(**batch).loss

        def configure_gradient_clipping(self, optimizer: Any, *a: Any, **kw: Any) -> None:
            if self.clipper is not None:
                self.clipper.clip_()
            else:
                super().configure_gradient_clipping(optimizer, *a, **kw)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    callbacks: list[Any] = [Clock()]
    if mode == "callback":
        callbacks.append(AdaGCCallback(warmup_steps=5))
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        gradient_clip_val=1.0 if mode == "own clip" else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader: Any = torch.utils.data.DataLoader(_rows(steps * BATCH), batch_size=BATCH)  # type: ignore[arg-type]
    trainer.fit(LM(), loader)
    return _median_step(stamps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adagc.bench.trainers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode")
    p.add_argument("--trainers", default="hf,lightning", help="hf, lightning")
    ns = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    runners = {"hf": hf_step_ms, "lightning": lightning_step_ms}
    modes = ["callback", "by hand", "own clip"]
    print(
        f"# adagc.bench.trainers torch={torch.__version__} threads={torch.get_num_threads()} "
        f"python={platform.python_version()} steps={ns.steps} repeats={ns.repeats}"
    )
    print(
        f"{'trainer':<10} {'callback ms':>12} {'by hand ms':>11} {'own clip ms':>12} "
        f"{'cb/hand':>8} {'cb/own':>7}"
    )
    for name in [t.strip() for t in ns.trainers.split(",") if t.strip()]:
        times: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(ns.repeats):
            for m in modes:
                print(f"\r  {name} {m} {r + 1}/{ns.repeats}   ", end="", file=sys.stderr)
                times[m].append(runners[name](m, ns.steps))
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(
            f"{name:<10} {med['callback']:>12.1f} {med['by hand']:>11.1f} "
            f"{med['own clip']:>12.1f} {med['callback'] / med['by hand']:>8.3f} "
            f"{med['callback'] / med['own clip']:>7.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
