"""Exceptions raised by adagc (spec §3)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckpointMismatchError",
    "NonFiniteGradientError",
    "NotWritableError",
    "StateMismatchError",
]


class NonFiniteGradientError(FloatingPointError):
    """A gradient norm was NaN or Inf under ``nonfinite="raise"``.

    The AdaGC state is left unchanged and the gradients are not modified.
    ``tensors`` holds the names (or indices as strings) of the offending tensors.
    """

    def __init__(self, tensors: Sequence[str]) -> None:
        self.tensors = list(tensors)
        shown = ", ".join(self.tensors[:10]) + (" ..." if len(self.tensors) > 10 else "")
        where = (
            f"in {len(self.tensors)} tensor(s): {shown}"
            if self.tensors  # none here: another rank's (a pipeline stage's or shard's)
            else "on another rank (a pipeline stage or shard), none in this rank's tensors"
        )
        super().__init__(
            f"non-finite gradient norm {where}. "
            "The AdaGC state was left unchanged. Use nonfinite='propagate' to let an AMP "
            "GradScaler / optax.apply_if_finite skip the step, or nonfinite='zero'."
        )

    @classmethod
    def from_finite(
        cls, finite: Sequence[bool], names: Sequence[str] | None
    ) -> NonFiniteGradientError:
        """The error for per-tensor finiteness flags, naming the non-finite tensors by
        ``names`` (or by index)."""
        labels = list(names) if names is not None else [str(i) for i in range(len(finite))]
        return cls([labels[i] for i, ok in enumerate(finite) if not ok])


class NotWritableError(ValueError):
    """``inplace=True`` but a gradient cannot be written (a read-only or broadcast NumPy
    view, an expanded torch tensor). Raised before any gradient is written, so nothing is
    half-clipped; ``index`` is the gradient's position (the core adds its name)."""

    def __init__(self, index: int, why: str, name: str | None = None) -> None:
        self.index = index
        self.why = why
        label = repr(name) if name is not None else str(index)
        super().__init__(
            f"gradient {label} cannot be clipped in place: {why}. Nothing was modified; pass "
            "a writable array (e.g. a copy) or call update(..., inplace=False)"
        )


class StateMismatchError(ValueError):
    """An ``AdaGCState`` does not match the gradients it is used with."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not match the live model: names, count or granularity differ."""

    def __init__(
        self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = ()
    ) -> None:
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        parts = [message]
        if self.missing:
            parts.append(f"missing from checkpoint: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model: {_short(self.unexpected)}")
        super().__init__("; ".join(parts))


def _short(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
