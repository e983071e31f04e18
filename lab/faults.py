"""The fault plan: the same faults for every method (``--faults``).

Grammar: a comma-separated list of items, or ``clean`` for none.

- ``grad:STEP[:FACTOR[:TENSOR]]`` — a transient hardware-style fault: after backward, one tensor's
  gradient is multiplied by FACTOR (default 1e3). TENSOR is a parameter name or an index
  (default: the first MLP weight).
- ``data:STEP[:random|zeros]`` — an outlier batch: random bytes (default) or a degenerate batch of
  one repeated byte. Its loss is the data's, so it is left out of spike scores.
- ``lr:STEP[:FACTOR[:STEPS]]`` — a learning-rate surge: LR x FACTOR (default 10) for STEPS steps
  (default 5).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_FAULTS", "Fault", "FaultPlanError", "parse_faults"]

DEFAULT_FAULTS = "grad:70:1e3,data:110:random,lr:150:10:5"


class FaultPlanError(ValueError):
    """A malformed ``--faults`` string."""


@dataclass(frozen=True)
class Fault:
    kind: str  # "grad" | "data" | "lr"
    step: int
    factor: float = 1.0
    tensor: str | None = None  # grad: parameter name or index
    mode: str = "random"  # data: "random" | "zeros"
    duration: int = 1  # lr: steps

    def covers(self, step: int) -> bool:
        return self.step <= step < self.step + self.duration

    def describe(self) -> str:
        if self.kind == "grad":
            return f"grad x{self.factor:g} @ {self.step}"
        if self.kind == "data":
            return f"{self.mode} batch @ {self.step}"
        return f"LR x{self.factor:g} for {self.duration} @ {self.step}"


def _number(text: str, what: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultPlanError(f"fault {item!r}: {what} must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise FaultPlanError(f"fault {item!r}: {what} must be a finite number > 0, got {text!r}")
    return value


def _step(text: str, item: str) -> int:
    if not text.isdigit():
        raise FaultPlanError(f"fault {item!r}: STEP must be an integer >= 0, got {text!r}")
    return int(text)


def parse_faults(spec: str) -> list[Fault]:
    """Parse a fault plan; raises ``FaultPlanError`` with a one-line message."""
    spec = spec.strip()
    if spec in ("clean", "none", ""):
        return []
    faults = []
    for item in (s.strip() for s in spec.split(",")):
        parts = item.split(":")
        kind = parts[0]
        if len(parts) < 2:
            raise FaultPlanError(f"fault {item!r}: expected KIND:STEP[...], e.g. grad:70:1e3")
        step = _step(parts[1], item)
        rest = parts[2:]
        if kind == "grad":
            if len(rest) > 2:
                raise FaultPlanError(f"fault {item!r}: grad takes STEP[:FACTOR[:TENSOR]]")
            factor = _number(rest[0], "FACTOR", item) if rest else 1e3
            faults.append(Fault("grad", step, factor, rest[1] if len(rest) > 1 else None))
        elif kind == "data":
            mode = rest[0] if rest else "random"
            if len(rest) > 1 or mode not in ("random", "zeros"):
                raise FaultPlanError(f"fault {item!r}: data takes STEP[:random|zeros]")
            faults.append(Fault("data", step, mode=mode))
        elif kind == "lr":
            if len(rest) > 2:
                raise FaultPlanError(f"fault {item!r}: lr takes STEP[:FACTOR[:STEPS]]")
            factor = _number(rest[0], "FACTOR", item) if rest else 10.0
            duration = _step(rest[1], item) if len(rest) > 1 else 5
            if duration < 1:
                raise FaultPlanError(f"fault {item!r}: STEPS must be >= 1")
            faults.append(Fault("lr", step, factor, duration=duration))
        else:
            raise FaultPlanError(f"fault {item!r}: unknown kind {kind!r} (grad, data or lr)")
    return sorted(faults, key=lambda f: f.step)
