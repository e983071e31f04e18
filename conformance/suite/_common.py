"""Helpers shared by the conformance tests."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import numpy as np

from adagc.conformance import GOLDENS_DIR, Harness, assert_close, tolerance
from adagc.conformance.generate_goldens import decode_list

GOLDEN_NAMES = sorted(p.stem for p in GOLDENS_DIR.glob("*.json"))


@cache
def load_golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDENS_DIR / f"{name}.json").read_text())


def norm_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def expected_clipped(rec: dict[str, Any], grads_np: list[Any], nonfinite_policy: str) -> list[Any]:
    """The golden's clipped gradients (stored, or h_i * g_i for large scenarios)."""
    if "clipped" in rec:
        return decode_list(rec["clipped"])
    coef = rec["stats"]["coefficients"]
    zero = rec["stats"]["nonfinite"] and nonfinite_policy == "zero"
    out: list[Any] = []
    first: dict[int, int] = {}
    for j, g in enumerate(grads_np):
        if g is None:
            out.append(None)
            continue
        i = first.setdefault(id(g), j)
        out.append(out[i] if i != j else (np.zeros_like(g) if zero else g * coef[j]))
    return out


def check_tensors(
    h: Harness, actual: list[Any], expected: list[Any], dtype: str, what: str
) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs for {len(expected)} inputs"
    rtol, floor = tolerance(dtype), subnormal_atol(dtype)
    for j, (a, e) in enumerate(zip(actual, expected)):
        scale = (
            0.0
            if e is None or np.size(e) == 0
            else float(np.nanmax(np.abs(np.where(np.isfinite(e), e, 0))))
        )
        atol = max(rtol * scale, floor)
        assert_close(h, a, e, dtype, rtol=rtol, atol=atol, what=f"{what}[{j}]")


def subnormal_atol(dtype: str) -> float:
    """An absolute floor for comparing values of ``dtype``: float16 holds values below
    6.1e-5 as subnormals, spaced 2**-24 apart whatever their size, and a 16-bit run rounds
    twice (input and output). 0 for the other dtypes (their subnormals are negligible)."""
    return 2.0 * 2.0**-24 if dtype == "float16" else 0.0


def norm_tolerance(dtype: str) -> float:
    """rtol for the norms, coefficients and gamma of a run on ``dtype`` gradients: those are
    float32 (float64), but a 16-bit run computes them from inputs rounded to 16 bits."""
    return max(tolerance(dtype), tolerance(norm_dtype(dtype)))


def check_stats(h: Harness, stats: Any, exp: dict[str, Any], dtype: str, what: str) -> None:
    nd, rtol = norm_dtype(dtype), norm_tolerance(dtype)
    for field in ("norms", "coefficients", "global_norm", "clipped_global_norm"):
        assert_close(h, getattr(stats, field), exp[field], nd, rtol=rtol, what=f"{what} {field}")
    assert int(h.to_numpy(stats.num_clipped)) == exp["num_clipped"], f"{what} num_clipped"
    assert bool(h.to_numpy(stats.nonfinite)) == exp["nonfinite"], f"{what} nonfinite"
    assert bool(h.to_numpy(stats.warmup)) == exp["warmup"], f"{what} warmup"


def check_state(h: Harness, state: Any, exp: dict[str, Any], dtype: str, what: str) -> None:
    step, _, seen = h.host_state(state)
    assert step == exp["step"], f"{what}: step {step} != {exp['step']}"
    rtol = norm_tolerance(dtype)
    assert_close(h, state.gamma, exp["gamma"], norm_dtype(dtype), rtol=rtol, what=f"{what} gamma")
    assert seen.tolist() == exp["seen"], f"{what}: seen {seen.tolist()} != {exp['seen']}"


def random_grads(
    rng: np.random.Generator, shapes: list[tuple[int, ...]], scales: list[float]
) -> list[Any]:
    return [rng.normal(0.0, s, size=shape) for shape, s in zip(shapes, scales)]
