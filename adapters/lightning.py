"""Lightning: ``AdaGCCallback``, AdaGC as one line in ``Trainer(callbacks=[...])``.

    from adagc.adapters.lightning import AdaGCCallback

    trainer = lightning.Trainer(callbacks=[AdaGCCallback(warmup_steps=100)])

The callback builds an ``adagc.adapters.torch.AdaGC`` from the LightningModule's named
parameters when fitting starts and clips in ``on_before_optimizer_step``: after backward and,
under ``16-mixed``, after Lightning's ``GradScaler`` unscaled the gradients (gamma_i stays in
true gradient units); before the optimizer step. Its state rides in Lightning's checkpoints
(``checkpoint["callbacks"]``), so ``fit(ckpt_path=...)`` resumes it exactly.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from adagc.adapters.torch import AdaGC

__all__ = ["AdaGCCallback"]


class AdaGCCallback(pl.Callback):
    """Adaptive per-tensor gradient clipping (AdaGC) for ``lightning.Trainer``.

    Args:
        **kwargs: ``AdaGC`` arguments (``lambda_rel``, ``beta``, ``warmup_steps`` = T_start,
            ``lambda_abs``, ``eps``, ``granularity``, ``shard_mode``, ``nonfinite``, ...).
        log_metrics: log ``adagc/clipped_fraction``, ``adagc/min_coefficient`` and
            ``adagc/global_norm`` with ``LightningModule.log`` (tensors: Lightning reads them
            at its own log cadence, so other steps make no host sync).

    Attributes:
        clipper: the ``AdaGC`` (``None`` until fitting starts).

    Raises ``ValueError`` at fit start when ``Trainer(gradient_clip_val=...)`` is set too: that
    would clip twice.
    """

    def __init__(self, *, log_metrics: bool = True, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.log_metrics = log_metrics
        self.clipper: AdaGC | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint loaded before setup()
        AdaGC([torch.zeros(1)], **kwargs)  # validate the config now, not at fit start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.gradient_clip_val:
            raise ValueError(
                f"AdaGCCallback clips the gradients, but Trainer(gradient_clip_val="
                f"{trainer.gradient_clip_val}) clips them again: remove gradient_clip_val (the "
                "warmup's global max norm is AdaGCCallback(lambda_abs=...))"
            )
        if not pl_module.automatic_optimization:
            raise ValueError(
                "AdaGCCallback needs automatic optimization; with manual optimization call "
                "clipper.clip_() yourself (adagc.adapters.torch.AdaGC) before optimizer.step()"
            )
        if self.clipper is None:
            self.clipper = AdaGC(pl_module.named_parameters(), **self.kwargs)
        if self._pending is not None:
            self.clipper.load_state_dict(self._pending)
            self._pending = None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        assert self.clipper is not None, "setup() builds the clipper"
        self.clipper.clip_()
        if self.log_metrics:
            for k, v in self.clipper.metrics().items():
                pl_module.log(k, v, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        if self.clipper is None:
            return dict(self._pending or {})
        return self.clipper.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.clipper is None:
            self._pending = dict(state_dict)
        else:
            self.clipper.load_state_dict(state_dict)
