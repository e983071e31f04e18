"""The NumPy mirror of the kernels (``emulate.py``) against the reference and against
``adagc.update`` on NumPy: the chunked reduction, the finalize logic and whole fused steps,
over every conformance golden and seeded random runs (absent, empty, tied, misaligned, odd-sized
and many tensors, half precision, both granularities, all three non-finite policies)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig, NonFiniteGradientError
from adagc.backends._cupy_plan import CHUNK, DTYPE_CODES
from adagc.backends.reference import RefState, ref_update
from adagc.conformance import GOLDENS_DIR
from adagc.conformance.generate_goldens import decode_list
from adagc.conformance.suite._common import expected_clipped

from .emulate import (
    BF16,
    F16,
    block_sum,
    emulated_update,
    round_bf16,
    warp_sum,
)

GOLDENS = sorted(p.stem for p in GOLDENS_DIR.glob("*.json"))
RTOL = {"float32": 1e-5, "float64": 1e-12}


def _convert(arrays: list[Any], dtype: str) -> list[Any]:
    """float64 golden inputs as ``dtype`` arrays, keeping ``None`` and ties (same object)."""
    made: dict[int, Any] = {}
    out: list[Any] = []
    for a in arrays:
        if a is None:
            out.append(None)
        else:
            if id(a) not in made:
                made[id(a)] = np.asarray(a, dtype=dtype)
            out.append(made[id(a)])
    return out


def _close(actual: Any, expected: Any, rtol: float, what: str, atol: float = 0.0) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=rtol,
        atol=atol,
        err_msg=what,
    )


def _close_tensors(actual: list[Any], expected: list[Any], rtol: float, what: str) -> None:
    assert len(actual) == len(expected), what
    for j, (a, e) in enumerate(zip(actual, expected)):
        if e is None:
            assert a is None, f"{what}[{j}]"
            continue
        e = np.asarray(e, dtype=np.float64)
        scale = float(np.max(np.abs(np.where(np.isfinite(e), e, 0)))) if e.size else 0.0
        _close(a, e, rtol, f"{what}[{j}]", atol=rtol * scale)


# -- the reduction trees ---------------------------------------------------------------------


def test_warp_and_block_trees_sum_every_lane_once() -> None:
    """Powers of two are added exactly in float64, so a tree that dropped or doubled a lane
    would show; the upper lanes of a shuffle step never reach lane 0."""
    lanes = 2.0 ** np.arange(32, dtype=np.float64)
    assert warp_sum(lanes) == 2.0**32 - 1
    block = 2.0 ** np.arange(256, dtype=np.float64) / 2.0**200
    assert block_sum(block, 256) == np.sum(block)
    assert block_sum(np.ones(512, np.float32), 512) == 512.0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("n", [1, 7, 255, 4097, CHUNK, CHUNK + 1, 2 * CHUNK + 13])
def test_chunked_sum_of_squares_matches_float64(dtype: str, offset: int, n: int) -> None:
    """Chunk boundaries, scalar heads of misaligned views, vectors and scalar tails together
    count every element exactly once, accumulated in float32 (half, float32) or float64."""
    rng = np.random.default_rng(n + 10 * offset)
    np_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
    base = rng.normal(0.0, 2.0, size=n + offset).astype(np_dtype)
    if dtype == "bfloat16":
        base = round_bf16(base)
    view = base[offset:]
    codes = [DTYPE_CODES[dtype]]
    gamma = np.zeros(1, np.float64 if dtype == "float64" else np.float32)
    em = emulated_update([view], 0, gamma, np.zeros(1, bool), AdaGCConfig(), codes=codes)
    exact = float(np.sum(view.astype(np.float64) ** 2))
    rtol = 1e-12 if dtype == "float64" else 2e-6 * max(1.0, math.log2(n))
    _close(float(em.stats.norms[0]) ** 2, exact, rtol, "n^2")
    # Each chunk's partial is the sum of squares of its own slice.
    for k in range(int(em.plan.start[1])):
        part = view[k * CHUNK : (k + 1) * CHUNK].astype(np.float64)
        _close(em.partials[k], float(np.sum(part * part)), rtol, f"chunk {k}")
    if n >= CHUNK:
        assert em.plan.n_chunks == -(-n // CHUNK)


def test_dense_non_contiguous_views_are_summed_in_memory_order() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(37, 19)).astype(np.float32)
    for v in (a.T, a[::-1], a[:, ::-1].T):
        em = emulated_update([v], 0, np.zeros(1, np.float32), np.zeros(1, bool), AdaGCConfig())
        _close(em.stats.norms[0], np.linalg.norm(a.astype(np.float64)), 1e-6, "norm")


def test_float32_overflow_and_denormal_squares() -> None:
    """1e20**2 overflows float32 (a non-finite step); 1e-20**2 is a float32 denormal that the
    kernels keep (no flush to zero): that tensor is observed, like in NumPy and docs/spec.md."""
    cfg = AdaGCConfig(warmup_steps=0)
    big = [np.full(4, 1e20, np.float32), np.ones(3, np.float32)]
    em = emulated_update(big, 0, np.zeros(2, np.float32), np.zeros(2, bool), cfg)
    assert em.stats.nonfinite and em.step == 0 and not em.stats.warmup
    tiny = [np.full(5, 1e-20, np.float32)]
    em = emulated_update(tiny, 0, np.zeros(1, np.float32), np.zeros(1, bool), cfg)
    _, state, stats = adagc.update(tiny, adagc.init(tiny, cfg), cfg)
    assert em.stats.norms[0] > 0 and bool(em.seen[0]) and em.step == 1
    _close(em.stats.norms[0], stats.norms[0], 1e-6, "tiny norm")
    _close(em.gamma, state.gamma, 1e-6, "tiny gamma")


# -- finalize, bit for bit -------------------------------------------------------------------


@pytest.mark.parametrize("warmup_gamma", ["clipped", "raw"])
@pytest.mark.parametrize("granularity", ["tensor", "global"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finalize_is_bitwise_the_generic_path_when_sums_agree(
    granularity: str, dtype: str, warmup_gamma: str
) -> None:
    """With one-element tensors and T = 2 the sums of squares are single products in both
    paths, so every later operation must agree exactly: the mirror's finalize repeats the
    generic algorithm's arithmetic operation for operation (no FMA, same roundings)."""
    rng = np.random.default_rng(7)
    cfg = AdaGCConfig(
        warmup_steps=3,
        lambda_rel=1.03,
        beta=0.97,
        granularity=granularity,
        warmup_gamma=warmup_gamma,
    )
    grads0 = [np.ones(1, dtype), np.ones(1, dtype)]
    state = adagc.init(grads0, cfg)
    step, gamma, seen = 0, np.asarray(state.gamma), np.asarray(state.seen)
    for k in range(25):
        grads = [np.asarray([rng.normal(0, s)], dtype) for s in (1.0, 0.01 * (1 + k % 5))]
        if k == 11:
            grads[0] = np.zeros(1, dtype)  # not observed
        em = emulated_update(grads, step, gamma, seen, cfg, inplace=False)
        out, state, stats = adagc.update(grads, state, cfg, backend="numpy")
        for name in ("norms", "coefficients", "global_norm", "clipped_global_norm"):
            np.testing.assert_array_equal(getattr(em.stats, name), getattr(stats, name), name)
        assert em.stats.num_clipped == int(stats.num_clipped)
        np.testing.assert_array_equal(em.gamma, state.gamma)
        np.testing.assert_array_equal(em.seen, state.seen)
        assert em.step == int(state.step)
        for a, b in zip(em.clipped, out):
            np.testing.assert_array_equal(a, b)
        step, gamma, seen = em.step, em.gamma, em.seen


# -- whole steps over the goldens ------------------------------------------------------------


def _load(name: str) -> dict[str, Any]:
    return json.loads((GOLDENS_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "functional"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", GOLDENS)
def test_goldens(name: str, dtype: str, inplace: bool) -> None:
    """The emulated fused step reproduces every golden trajectory of the conformance suite
    and agrees with ``adagc.update`` on NumPy at every step."""
    golden = _load(name)
    cfg = AdaGCConfig.from_dict(golden["config"])
    rtol = RTOL[dtype]
    nd = "float64" if dtype == "float64" else "float32"
    state = None
    step = 0
    gamma: Any = None
    seen: Any = None
    for k, rec in enumerate(golden["steps"]):
        what = f"{name} step {k}"
        grads64 = decode_list(rec["grads"])
        grads = _convert(grads64, dtype)
        if state is None:
            state = adagc.init(grads, cfg)
            gamma, seen = np.asarray(state.gamma), np.asarray(state.seen)
        if "raises" in rec:
            with pytest.raises(NonFiniteGradientError) as info:
                emulated_update(grads, step, gamma, seen, cfg, inplace=inplace)
            assert info.value.tensors == rec["raises"]["tensors"], what
            continue
        em = emulated_update(grads, step, gamma, seen, cfg, inplace=inplace)
        exp = rec["stats"]
        _close(em.stats.norms, exp["norms"], rtol, f"{what} norms")
        _close(em.stats.coefficients, exp["coefficients"], rtol, f"{what} coefficients")
        _close(em.stats.global_norm, exp["global_norm"], rtol, f"{what} G")
        _close(em.stats.clipped_global_norm, exp["clipped_global_norm"], rtol, f"{what} cG")
        assert em.stats.num_clipped == exp["num_clipped"], what
        assert em.stats.nonfinite == exp["nonfinite"] and em.stats.warmup == exp["warmup"], what
        assert em.step == rec["state"]["step"], what
        _close(em.gamma, rec["state"]["gamma"], rtol, f"{what} gamma")
        assert em.seen.tolist() == rec["state"]["seen"], what
        assert str(em.stats.norms.dtype) == nd and str(em.gamma.dtype) == nd
        _close_tensors(em.clipped, expected_clipped(rec, grads64, cfg.nonfinite), rtol, what)
        # ... and the generic path on the same float32/float64 arrays, step by step.
        out, state, stats = adagc.update(grads, state, cfg, backend="numpy")
        _close(em.stats.norms, stats.norms, rtol, f"{what} vs generic norms")
        _close(em.stats.coefficients, stats.coefficients, rtol, f"{what} vs generic coef")
        _close(em.gamma, state.gamma, rtol, f"{what} vs generic gamma")
        _close_tensors(em.clipped, out, rtol, f"{what} vs generic clipped")
        # Coefficient 1 in place: the tensor is neither written nor changed.
        firsts = {id(g): j for j, g in reversed(list(enumerate(grads)))}
        for j, g in enumerate(grads):
            first = g is not None and firsts[id(g)] == j
            if first and g.size and inplace and em.stats.coefficients[j] == 1:
                assert not em.written[j] and em.clipped[j] is g, what
        step, gamma, seen = em.step, em.gamma, em.seen


# -- seeded random runs ----------------------------------------------------------------------


def _random_case(seed: int) -> tuple[AdaGCConfig, list[list[Any]], list[int] | None]:
    rng = np.random.default_rng(seed)
    cfg = AdaGCConfig(
        lambda_rel=float(rng.uniform(1.01, 1.2)),
        beta=float(rng.uniform(0.5, 0.99)),
        warmup_steps=int(rng.integers(0, 4)),
        lambda_abs=float(10 ** rng.uniform(-1, 1)),
        granularity=str(rng.choice(["tensor", "global"])),
        nonfinite=str(rng.choice(["propagate", "zero"])),
        # From the seed, not the generator: the other seeds' cases stay what they were.
        warmup_gamma="raw" if seed % 2 else "clipped",
    )
    T = int(rng.integers(1, 9))
    sizes = [int(rng.choice([1, 3, 17, 1000, CHUNK + 5])) for _ in range(T)]
    offsets = [int(rng.integers(0, 4)) for _ in range(T)]
    scales = [float(10 ** rng.uniform(-2, 2)) for _ in range(T)]
    steps = []
    for _ in range(6):
        grads: list[Any] = []
        for n, off, sc in zip(sizes, offsets, scales):
            base = rng.normal(0.0, sc * rng.uniform(0.3, 3.0), size=n + off).astype(np.float32)
            grads.append(base[off:])  # misaligned views when off > 0
        kind = rng.integers(0, 6)
        if kind == 0 and T > 1:
            grads[int(rng.integers(1, T))] = None
        elif kind == 1 and T > 1:
            grads[-1] = grads[0]  # tie
        elif kind == 2:
            grads[0] = np.zeros(0, np.float32)
        elif kind == 3:
            grads[0] = np.zeros_like(grads[0])
        elif kind == 4:
            g = grads[0].copy()
            g[0] = rng.choice([np.nan, np.inf])
            grads[0] = g
        steps.append(grads)
    return cfg, steps, None


@pytest.mark.parametrize("seed", range(24))
def test_random_runs_match_reference_and_generic(seed: int) -> None:
    cfg, steps, _ = _random_case(seed)
    T = len(steps[0])
    ref = RefState(
        0,
        [0.0] * (1 if cfg.granularity == "global" else T),
        [False] * (1 if cfg.granularity == "global" else T),
    )
    state = adagc.init([g for g in steps[0]], cfg)
    step, gamma, seen = 0, np.asarray(state.gamma), np.asarray(state.seen)
    for k, grads in enumerate(steps):
        what = f"seed {seed} step {k}"
        em = emulated_update(grads, step, gamma, seen, cfg, inplace=False)
        g64 = [None if g is None else np.asarray(g, np.float64) for g in grads]
        # ties stay ties in float64
        for j, g in enumerate(grads):
            for i in range(j):
                if g is not None and grads[i] is g:
                    g64[j] = g64[i]
        r_out, ref, r_stats = ref_update(g64, ref, cfg)
        _close(em.stats.norms, r_stats.norms, 1e-5, f"{what} norms")
        _close(em.stats.coefficients, r_stats.coefficients, 1e-5, f"{what} coef")
        assert em.stats.nonfinite == r_stats.nonfinite and em.step == ref.step, what
        _close(em.gamma, ref.gamma, 1e-5, f"{what} gamma")
        assert em.seen.tolist() == ref.seen, what
        _close_tensors(em.clipped, r_out, 1e-5, f"{what} clipped")
        out, state, stats = adagc.update(grads, state, cfg, backend="numpy")
        _close(em.stats.global_norm, stats.global_norm, 1e-5, f"{what} G vs generic")
        _close(em.stats.clipped_global_norm, stats.clipped_global_norm, 1e-5, what)
        assert em.stats.num_clipped == int(stats.num_clipped), what
        _close_tensors(em.clipped, out, 1e-5, f"{what} vs generic")
        step, gamma, seen = em.step, em.gamma, em.seen


@pytest.mark.parametrize("count", [4001])
def test_many_small_tensors(count: int) -> None:
    rng = np.random.default_rng(count)
    cfg = AdaGCConfig(warmup_steps=1)
    grads = [
        rng.normal(0, 1 + i % 7, size=1 + (i * 37) % 300).astype(np.float32) for i in range(count)
    ]
    state = adagc.init(grads, cfg)
    step, gamma, seen = 0, np.asarray(state.gamma), np.asarray(state.seen)
    for k in range(2):
        gs = [g * (1 + 0.5 * ((i + k) % 3)) for i, g in enumerate(grads)]
        em = emulated_update(gs, step, gamma, seen, cfg, inplace=False)
        _, state, stats = adagc.update(gs, state, cfg, backend="numpy")
        assert em.plan.n_chunks == count
        _close(em.stats.norms, stats.norms, 1e-5, "norms")
        _close(em.stats.coefficients, stats.coefficients, 1e-5, "coef")
        _close(em.gamma, state.gamma, 1e-5, "gamma")
        assert em.stats.num_clipped == int(stats.num_clipped)
        step, gamma, seen = em.step, em.gamma, em.seen


@pytest.mark.parametrize("code", [F16, BF16])
def test_half_precision_against_the_reference(code: int) -> None:
    """float16/bfloat16 gradients: float32 norms, results rounded once to the tensor's dtype."""
    rng = np.random.default_rng(code)
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=0.5)
    raw = [rng.normal(0, 1, size=n).astype(np.float32) for n in (9, 130, CHUNK + 9)]
    if code == F16:
        grads = [r.astype(np.float16) for r in raw]
        codes = None
    else:
        grads = [round_bf16(r) for r in raw]
        codes = [BF16] * 3
    step, gamma, seen = 0, np.zeros(3, np.float32), np.zeros(3, bool)
    ref = RefState(0, [0.0] * 3, [False] * 3)
    for k in range(3):
        gs = [g * (k + 1) for g in grads]
        if code == BF16:
            gs = [round_bf16(g) for g in gs]
        em = emulated_update(gs, step, gamma, seen, cfg, codes=codes, inplace=False)
        r_out, ref, r_stats = ref_update([np.asarray(g, np.float64) for g in gs], ref, cfg)
        _close(em.stats.norms, r_stats.norms, 1e-5, "norms")
        _close(em.gamma, ref.gamma, 1e-5, "gamma")
        ulp = 2.0**-10 if code == F16 else 2.0**-7
        for a, e in zip(em.clipped, r_out):
            _close(a, e, ulp, "clipped", atol=1e-7)
            if code == F16:
                assert a.dtype == np.float16
        step, gamma, seen = em.step, em.gamma, em.seen


@pytest.mark.parametrize("code", ["float32", "bfloat16"])
def test_the_kernels_norm_of_a_large_tensor_is_accurate(code: str) -> None:
    """The kernels' accumulation order (float32 per 65,536-element chunk, warp and block
    trees, float64 partials combined by finalize) on one 1.3e8-element tensor, within 1e-6
    of a float64 sum, as the conformance suite asks of every backend."""
    from adagc.conformance.suite.test_contract import _big_normal, float64_sum_squares

    x = _big_normal()
    codes = None
    if code == "bfloat16":
        x = round_bf16(x)
        codes = [BF16]
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=1e30)  # h = 1
    out = emulated_update([x], 0, np.zeros(1, np.float32), np.zeros(1, bool), cfg, codes=codes)
    got = float(out.stats.norms[0])
    want = math.sqrt(float64_sum_squares(x))
    assert abs(got / want - 1) <= 1e-6, (got, want)
