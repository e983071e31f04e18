"""What the trainer callbacks (transformers, PaddleFormers) share: no algorithm here."""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = ["disable_global_clipping", "move_to_front"]


def disable_global_clipping(args: Any, why: str) -> None:
    """Set the trainer's ``max_grad_norm`` to 0, with a warning saying ``why`` (the trainer
    would clip globally too); called from the callback's own event handler."""
    if args.max_grad_norm and args.max_grad_norm > 0:
        warnings.warn(
            f"AdaGCCallback: TrainingArguments.max_grad_norm={args.max_grad_norm} would clip "
            f"globally {why}; set to 0 (AdaGC's warmup max norm is lambda_abs)",
            stacklevel=2,
        )
        args.max_grad_norm = 0.0


def move_to_front(callback: Any, handler_type: Any) -> None:
    """Put ``callback`` first in the list of the ``CallbackHandler`` that is calling it (two
    frames up: the handler's ``call_event``), so that its ``on_log`` adds the AdaGC metrics
    before the reporting callbacks (which Trainer puts before the user's) read the entry.
    Moving a callback to an earlier index during the handler's loop calls each one once."""
    handler: Any = sys._getframe(2).f_locals.get("self")
    if not isinstance(handler, handler_type):
        return  # called some other way: metrics still reach log_history
    callbacks = handler.callbacks
    if callback in callbacks and callbacks[0] is not callback:
        callbacks.remove(callback)
        callbacks.insert(0, callback)
