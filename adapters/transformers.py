"""Hugging Face ``Trainer``: ``AdaGCCallback``, AdaGC as one line in ``callbacks=[...]``.

    from adagc.adapters.transformers import AdaGCCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[AdaGCCallback(warmup_steps=100)])

When training begins the callback builds an ``adagc.adapters.torch.AdaGC`` from the model's
named parameters and attaches it to the optimizer ``Trainer`` created: it clips in the
optimizer's step pre-hook, so under fp16 it sees the gradients accelerate's ``GradScaler``
has unscaled, and a step the scaler skips (Inf/NaN) leaves the AdaGC state unchanged. The
state rides in ``optimizer.state_dict()``, i.e. in the checkpoint's ``optimizer.pt``, so
``train(resume_from_checkpoint=...)`` resumes it exactly with default ``TrainingArguments``.

``TrainingArguments.max_grad_norm`` (1.0 by default) would clip globally before AdaGC sees the
gradients: the callback sets it to 0 with a warning.

Trainer puts the reporting callbacks (TensorBoard, W&B, ...) before the user's, so at the end of
``Trainer.__init__`` the callback moves itself to the front of Trainer's callback list: its
``on_log`` then adds the AdaGC metrics before any reporter reads the log entry.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from adagc.adapters._callbacks import disable_global_clipping, move_to_front
from adagc.adapters.torch import AdaGC

__all__ = ["AdaGCCallback"]


class AdaGCCallback(transformers.TrainerCallback):
    """Adaptive per-tensor gradient clipping (AdaGC) for ``transformers.Trainer``.

    Args:
        **kwargs: ``AdaGC`` arguments (``lambda_rel``, ``beta``, ``warmup_steps`` = T_start,
            ``lambda_abs``, ``eps``, ``granularity``, ``shard_mode``, ``nonfinite``, ...).
        log_metrics: add ``adagc/clipped_fraction``, ``adagc/min_coefficient`` and
            ``adagc/global_norm`` of the last step to every ``Trainer`` log entry (read only
            when Trainer logs, so other steps make no host sync).

    Attributes:
        clipper: the ``AdaGC`` (``None`` until training begins).
    """

    def __init__(self, *, log_metrics: bool = True, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.log_metrics = log_metrics
        self.clipper: AdaGC | None = None
        self._model: Any = None
        AdaGC([torch.zeros(1)], **kwargs)  # validate the config now, not at train start

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        disable_global_clipping(args, "before AdaGC")
        move_to_front(self, transformers.trainer_callback.CallbackHandler)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        disable_global_clipping(args, "before AdaGC")  # also when args changed after Trainer(...)
        model, optimizer = kwargs["model"], kwargs["optimizer"]
        if self.clipper is None or self._model is not model:
            self.clipper = AdaGC(model.named_parameters(), **self.kwargs)
            self._model = model
        # Adopts the AdaGC state of an optimizer.pt that Trainer loaded on resume.
        self.clipper.attach(optimizer)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not self.log_metrics or self.clipper is None or logs is None or "loss" not in logs:
            return
        values = {k: float(v) for k, v in self.clipper.metrics().items()}
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
