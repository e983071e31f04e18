"""PaddleFormers ``Trainer``: ``AdaGCCallback``, AdaGC as one line in ``callbacks=[...]``.

    from adagc.adapters.paddleformers import AdaGCCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[AdaGCCallback(warmup_steps=100)])

The Trainer builds its optimizer (with its learning-rate schedule) as usual; when training
begins the callback makes a ``ClipGradByAdaGC`` that optimizer's ``grad_clip`` in place of the
global-norm clip. ``TrainingArguments.max_grad_norm`` (1.0 by default) would make the Trainer
build that global clip, and on the multi-process path wrap its ``_global_norm``: the callback
sets it to 0 with a warning, so neither happens. An optimizer that already clips (passed in
``optimizers=``) is refused rather than clipped twice.

Checkpoints: the Trainer's checkpoint formats (flex checkpoint, its default, and unified
checkpoint) map every entry of the optimizer's ``state_dict()`` to a parameter and fail on any
other, so here the AdaGC state does not ride in the optimizer state (as it does for a plain
``ClipGradByAdaGC``): the callback writes it to ``adagc_state_{rank}.pdparams`` in each
``checkpoint-N`` folder and reads it back when training resumes from one; a resume without
that file warns (AdaGC would restart in warmup).

Trainer puts the reporting callbacks (VisualDL, W&B, ...) before the user's; the callback
moves itself to the front so that its ``on_log`` adds ``adagc/clipped_fraction``,
``adagc/min_coefficient`` and ``adagc/global_norm`` before any reporter reads the entry.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import paddle
from paddleformers.trainer import TrainerCallback
from paddleformers.trainer.trainer_callback import CallbackHandler

from adagc.adapters._callbacks import disable_global_clipping, move_to_front
from adagc.adapters.paddle import ClipGradByAdaGC

__all__ = ["STATE_FILE", "AdaGCCallback"]

STATE_FILE = "adagc_state_{rank}.pdparams"
"""The callback's copy of each rank's AdaGC state in a ``checkpoint-N`` folder (per rank, as
the Trainer's ``rng_state_{rank}.pth``: under ``shard_mode="local"`` the states differ)."""


def _inner(optimizer: Any) -> Any:
    """The Paddle optimizer inside fleet's wrappers (``HybridParallelOptimizer`` & co.)."""
    while hasattr(optimizer, "_inner_opt"):
        optimizer = optimizer._inner_opt
    return optimizer


def _state_file() -> str:
    return STATE_FILE.format(rank=paddle.distributed.get_rank())


class AdaGCCallback(TrainerCallback):
    """Adaptive per-tensor gradient clipping (AdaGC) for ``paddleformers.trainer.Trainer``.

    Args:
        **kwargs: ``ClipGradByAdaGC`` arguments (``lambda_rel``, ``beta``, ``warmup_steps`` =
            T_start, ``lambda_abs``, ``eps``, ``granularity``, ``shard_mode``, ``nonfinite``,
            ``shard_groups``, ``sum_groups``, ...), validated here.
        log_metrics: add the last step's AdaGC metrics to every Trainer log entry with a
            loss (read only when the Trainer logs).

    Attributes:
        clip: the ``ClipGradByAdaGC`` the optimizer runs.
    """

    def __init__(self, *, log_metrics: bool = True, **kwargs: Any) -> None:
        self.clip = ClipGradByAdaGC(**kwargs)
        self.log_metrics = log_metrics

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        disable_global_clipping(args, "as well as AdaGC")
        move_to_front(self, CallbackHandler)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = _inner(kwargs.get("optimizer"))
        if optimizer is None:
            raise RuntimeError("AdaGCCallback: the Trainer passed no optimizer to on_train_begin")
        current = optimizer._grad_clip
        if current is not None and current is not self.clip:
            kind = type(current).__name__
            raise ValueError(
                f"AdaGCCallback: the optimizer already clips gradients ({kind}); AdaGC "
                "replaces that clip. Build the optimizer without grad_clip= (or leave it "
                "to the Trainer with max_grad_norm=0)"
            )
        optimizer._grad_clip = self.clip  # Paddle optimizers call it inside step()
        # The Trainer's checkpoint formats map every optimizer entry to a parameter's slot:
        # the AdaGC state stays out of the optimizer's state_dict and goes in a file instead.
        self.clip._bind(optimizer, carry=False)
        if state.global_step > 0:
            self._load_file(args, state)

    def _load_file(self, args: Any, state: Any) -> None:
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", _state_file())
        if os.path.isfile(path):
            self.clip.set_state_dict(paddle.load(path))
            return
        warnings.warn(
            f"AdaGCCallback: resuming at step {state.global_step}, but {path} does not exist: "
            "AdaGC restarts in warmup (was the checkpoint saved without this callback?)",
            stacklevel=3,
        )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            paddle.save(self.clip.state_dict(), os.path.join(folder, _state_file()))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not self.log_metrics or logs is None or "loss" not in logs:
            return
        values = {k: float(v) for k, v in self.clip.metrics().items()}
        logs.update(values)
