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
    rtol = tolerance(dtype)
    for j, (a, e) in enumerate(zip(actual, expected)):
        scale = (
            0.0
            if e is None or np.size(e) == 0
            else float(np.nanmax(np.abs(np.where(np.isfinite(e), e, 0))))
        )
        assert_close(h, a, e, dtype, rtol=rtol, atol=rtol * scale, what=f"{what}[{j}]")


def check_stats(h: Harness, stats: Any, exp: dict[str, Any], dtype: str, what: str) -> None:
    nd = norm_dtype(dtype)
    assert_close(h, stats.norms, exp["norms"], nd, what=f"{what} norms")
    assert_close(h, stats.coefficients, exp["coefficients"], nd, what=f"{what} coefficients")
    assert_close(h, stats.global_norm, exp["global_norm"], nd, what=f"{what} global_norm")
    assert_close(
        h, stats.clipped_global_norm, exp["clipped_global_norm"], nd, what=f"{what} clipped_norm"
    )
    assert int(h.to_numpy(stats.num_clipped)) == exp["num_clipped"], f"{what} num_clipped"
    assert bool(h.to_numpy(stats.nonfinite)) == exp["nonfinite"], f"{what} nonfinite"
    assert bool(h.to_numpy(stats.warmup)) == exp["warmup"], f"{what} warmup"


def check_state(h: Harness, state: Any, exp: dict[str, Any], dtype: str, what: str) -> None:
    step, _, seen = h.host_state(state)
    assert step == exp["step"], f"{what}: step {step} != {exp['step']}"
    assert_close(h, state.gamma, exp["gamma"], norm_dtype(dtype), what=f"{what} gamma")
    assert seen.tolist() == exp["seen"], f"{what}: seen {seen.tolist()} != {exp['seen']}"


def random_grads(
    rng: np.random.Generator, shapes: list[tuple[int, ...]], scales: list[float]
) -> list[Any]:
    return [rng.normal(0.0, s, size=shape) for shape, s in zip(shapes, scales)]
