"""Property tests (hypothesis): invariants of spec §1-3 on random gradients, and the backend
against the naive reference on random multi-step runs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adagc import AdaGCConfig
from adagc.backends.reference import ref_init, ref_update
from adagc.conformance import Harness, assert_close, tolerance

from ._common import norm_dtype, random_grads

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,  # tests stay deterministic
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

shapes_st = st.lists(
    st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple), min_size=1, max_size=5
)
cfg_st = st.builds(
    AdaGCConfig,
    lambda_rel=st.floats(1.01, 1.2),
    beta=st.floats(0.5, 0.99),
    warmup_steps=st.integers(0, 3),
    lambda_abs=st.floats(0.1, 10.0),
    eps=st.just(1e-6),
    granularity=st.sampled_from(["tensor", "global"]),
)


def _run(h: Harness, dtype: str, cfg: AdaGCConfig, steps: list[list[np.ndarray]]):
    state = None
    outs = []
    for grads_np in steps:
        grads = h.grads(grads_np, dtype)
        if state is None:
            state = h.init(grads, cfg)
        prev = state
        clipped, state, stats = h.update(grads, state, cfg)
        outs.append((grads_np, clipped, prev, state, stats))
    return outs


def _steps(
    seed: int, shapes: list[tuple[int, ...]], n: int, spread: float
) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = [float(10 ** rng.uniform(-spread, spread)) for _ in shapes]
    return [random_grads(rng, shapes, [b * rng.uniform(0.3, 3.0) for b in base]) for _ in range(n)]


@SETTINGS
@given(seed=st.integers(0, 2**31), shapes=shapes_st, cfg=cfg_st)
def test_coefficients_in_unit_interval(
    harness: Harness, dtype: str, seed: int, shapes, cfg
) -> None:
    for _, _, _, _, stats in _run(harness, dtype, cfg, _steps(seed, shapes, 6, 2.0)):
        h = harness.to_numpy(stats.coefficients)
        assert np.all(h > 0) and np.all(h <= 1), h


@SETTINGS
@given(seed=st.integers(0, 2**31), shapes=shapes_st, cfg=cfg_st)
def test_adaptive_clipped_norm_bounded_by_threshold(
    harness: Harness, dtype: str, seed: int, shapes, cfg
) -> None:
    assume(cfg.granularity == "tensor")
    rtol = tolerance(dtype) * 10
    for _, clipped, prev, _, stats in _run(harness, dtype, cfg, _steps(seed, shapes, 7, 1.0)):
        if bool(harness.to_numpy(stats.warmup)):
            continue
        gamma = harness.to_numpy(prev.gamma)
        seen = harness.to_numpy(prev.seen)
        for i, c in enumerate(clipped):
            if seen[i]:
                n = float(np.linalg.norm(harness.to_numpy(c).astype(np.float64)))
                assert n <= cfg.lambda_rel * gamma[i] * (1 + rtol), (i, n, gamma[i])


@SETTINGS
@given(seed=st.integers(0, 2**31), shapes=shapes_st, c=st.floats(1e-2, 1e2))
def test_adaptive_phase_is_scale_invariant(
    harness: Harness, dtype: str, seed: int, shapes, c: float
) -> None:
    """Scaling gradients and gamma by c > 0 keeps the coefficients and scales outputs and
    the new gamma by c (eps is made negligible)."""
    cfg = AdaGCConfig(warmup_steps=0, eps=1e-300, beta=0.9)  # n + eps == n
    rng = np.random.default_rng(seed)
    grads_np = random_grads(rng, shapes, [1.0] * len(shapes))
    norms = np.array([np.linalg.norm(g) for g in grads_np])
    gamma = norms * rng.uniform(0.5, 1.5, size=len(norms))  # some clipped, some not
    assume(np.all(np.abs(norms / (cfg.lambda_rel * gamma) - 1) > 1e-3))
    nd = norm_dtype(dtype)
    s1 = harness.state(5, gamma, [True] * len(norms), nd)
    s2 = harness.state(5, gamma * c, [True] * len(norms), nd)
    out1, n1, st1 = harness.update(harness.grads(grads_np, dtype), s1, cfg)
    out2, n2, st2 = harness.update(harness.grads([g * c for g in grads_np], dtype), s2, cfg)
    rtol = tolerance(dtype) * 10
    assert_close(harness, st2.coefficients, harness.to_numpy(st1.coefficients), nd, rtol=rtol)
    assert_close(harness, n2.gamma, harness.to_numpy(n1.gamma) * c, nd, rtol=rtol)
    for a, b in zip(out1, out2):
        ref = harness.to_numpy(a).astype(np.float64) * c
        assert_close(harness, b, ref, dtype, rtol=rtol, atol=rtol * float(np.max(np.abs(ref))))


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    shapes=shapes_st,
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    policy=st.sampled_from(["propagate", "zero"]),
    at=st.integers(0, 4),
)
def test_nonfinite_step_leaves_state_unchanged(
    harness: Harness, dtype: str, seed: int, shapes, bad, policy, at
) -> None:
    cfg = AdaGCConfig(warmup_steps=2, nonfinite=policy)
    steps = _steps(seed, shapes, 5, 1.0)
    steps[at][0] = steps[at][0].copy()
    steps[at][0].flat[0] = bad
    for k, (grads_np, clipped, prev, new, stats) in enumerate(_run(harness, dtype, cfg, steps)):
        if k != at:
            assert not bool(harness.to_numpy(stats.nonfinite))
            continue
        assert bool(harness.to_numpy(stats.nonfinite))
        p, n = harness.host_state(prev), harness.host_state(new)
        assert p[0] == n[0]
        np.testing.assert_array_equal(p[1], n[1])
        np.testing.assert_array_equal(p[2], n[2])
        assert int(harness.to_numpy(stats.num_clipped)) == 0
        for g, c in zip(grads_np, clipped):
            got = harness.to_numpy(c)
            if policy == "zero":
                assert np.all(got == 0)
            else:  # the input as the backend holds it (rounded to 16 bits, say)
                np.testing.assert_array_equal(got, harness.to_numpy(harness.asarray(g, dtype)))


@SETTINGS
@given(seed=st.integers(0, 2**31), shapes=shapes_st, cfg=cfg_st)
def test_matches_reference_on_random_runs(
    harness: Harness, dtype: str, seed: int, shapes, cfg
) -> None:
    """Differential test against the naive reference over several steps."""
    steps = _steps(seed, shapes, 6, 1.5)
    ref_state = ref_init(len(shapes), cfg)
    rtol = tolerance(dtype) * 10
    state = None
    for grads_np in steps:
        ref_out, ref_state_next, ref_stats = ref_update(grads_np, ref_state, cfg)
        # Skip examples whose clip decisions sit within float32 rounding of a threshold.
        if dtype != "float64":
            t = np.array(ref_state.gamma) * cfg.lambda_rel
            n = np.array(
                ref_stats.norms if cfg.granularity == "tensor" else [ref_stats.global_norm]
            )
            assume(np.all(np.abs(n - t) > 1e-3 * np.maximum(t, 1e-30)))
            assume(abs(ref_stats.global_norm - cfg.lambda_abs) > 1e-3 * cfg.lambda_abs)
        grads = harness.grads(grads_np, dtype)
        if state is None:
            state = harness.init(grads, cfg)
        clipped, state, stats = harness.update(grads, state, cfg)
        nd = norm_dtype(dtype)
        assert_close(harness, stats.coefficients, ref_stats.coefficients, nd, rtol=rtol)
        assert_close(harness, state.gamma, ref_state_next.gamma, nd, rtol=rtol)
        for a, e in zip(clipped, ref_out):
            assert_close(harness, a, e, dtype, rtol=rtol, atol=rtol * float(np.max(np.abs(e))))
        ref_state = ref_state_next
