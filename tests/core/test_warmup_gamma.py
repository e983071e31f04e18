"""``AdaGCConfig(warmup_gamma=...)``: the warmup minimum over clipped norms (``"clipped"``, the
paper and Megatron) or over raw norms (``"raw"``, Paddle's ``ClipGradByAdaptiveNorm`` and
ERNIE), spec §1. The conformance golden ``warmup_gamma_raw`` runs it on every backend; these
tests pin down when the two settings differ and the over-clipping arithmetic of spec §1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig
from adagc.backends.reference import ref_init, ref_update
from adagc.conformance.generate_goldens import decode_list

GOLDENS = Path(adagc.conformance.__file__).parent / "goldens"
SHAPES = [(3, 4), (5,), (2, 3, 2), (7,)]


def _with_global_norm(rng: np.random.Generator, G: float) -> list[np.ndarray]:
    grads = [rng.normal(size=s) for s in SHAPES]
    total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    return [g * (G / total) for g in grads]


def _run(cfg: AdaGCConfig, steps: list[list[np.ndarray]], dtype: str):
    grads = [[g.astype(dtype) for g in step] for step in steps]
    state = adagc.init(grads[0], cfg)
    trace = []
    for step in grads:
        out, state, stats = adagc.update(step, state, cfg)
        trace.append((out, state, stats))
    return trace


def _both(cfg: AdaGCConfig, steps, dtype):
    return (
        _run(cfg.replace(warmup_gamma="clipped"), steps, dtype),
        _run(cfg.replace(warmup_gamma="raw"), steps, dtype),
    )


@pytest.mark.parametrize("granularity", ["tensor", "global"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_identical_when_every_warmup_global_norm_is_below_lambda_abs(granularity, dtype) -> None:
    """h == 1 on every warmup step: h * n_i is n_i, bit for bit, so every output, state and
    statistic of the whole run (warmup and adaptive) is the same."""
    rng = np.random.default_rng(1)
    cfg = AdaGCConfig(warmup_steps=4, lambda_abs=1.0, granularity=granularity)
    warm = [_with_global_norm(rng, G) for G in (0.3, 0.9, 0.5, 0.99)]
    later = [_with_global_norm(rng, G) for G in (0.6, 5.0, 0.7, 40.0, 0.4)]
    clipped, raw = _both(cfg, warm + later, dtype)
    for (oc, sc, tc), (orr, sr, tr) in zip(clipped, raw):
        for a, b in zip(oc, orr):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(sc, sr):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(tc, tr):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("granularity", ["tensor", "global"])
@pytest.mark.parametrize("G", [0.5, 0.999, 1.001, 2.4, 50.0])
def test_a_warmup_step_differs_exactly_when_its_global_norm_exceeds_lambda_abs(
    granularity, G
) -> None:
    """One warmup step, then adaptive steps: gamma (and so everything after warmup) differs
    exactly when G exceeds lambda_abs; the warmup step's own clipping never differs."""
    rng = np.random.default_rng(2)
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=1.0, granularity=granularity)
    steps = [_with_global_norm(rng, G)] + [_with_global_norm(rng, 1.1 * G) for _ in range(3)]
    clipped, raw = _both(cfg, steps, "float64")
    (oc, sc, tc), (orr, sr, tr) = clipped[0], raw[0]
    for a, b in zip(oc, orr):  # warmup clipping itself is the same global-norm clipping
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(tc.coefficients, tr.coefficients)
    norms = np.asarray(tc.norms) if granularity == "tensor" else np.asarray([tc.global_norm])
    h = min(1.0 / (G + cfg.eps), 1.0)
    if cfg.lambda_abs < G:
        np.testing.assert_array_equal(sr.gamma, norms)  # raw: the unclipped norms
        want = h * norms if granularity == "tensor" else np.minimum(norms, cfg.lambda_abs)
        np.testing.assert_allclose(sc.gamma, want, rtol=1e-15)
        assert np.all(np.asarray(sr.gamma) > np.asarray(sc.gamma))
        assert not np.array_equal(raw[1][2].coefficients, clipped[1][2].coefficients)
    else:
        np.testing.assert_array_equal(sr.gamma, sc.gamma)
        for (o1, s1, _), (o2, s2, _) in zip(clipped, raw):
            np.testing.assert_array_equal(s1.gamma, s2.gamma)
            for a, b in zip(o1, o2):
                np.testing.assert_array_equal(a, b)


def test_raw_gamma_is_the_minimum_of_raw_norms_and_never_below_clipped() -> None:
    rng = np.random.default_rng(3)
    cfg = AdaGCConfig(warmup_steps=6)
    steps = [_with_global_norm(rng, G) for G in (3.0, 0.4, 2.0, 7.0, 0.8, 1.5)]
    clipped, raw = _both(cfg, steps, "float64")
    norms = np.array([np.asarray(t.norms) for _, _, t in raw])
    np.testing.assert_array_equal(raw[-1][1].gamma, norms.min(axis=0))
    for (_, sc, _), (_, sr, _) in zip(clipped, raw):
        assert np.all(np.asarray(sr.gamma) >= np.asarray(sc.gamma))


def _clipped_streak(cfg: AdaGCConfig, G: float, max_steps: int) -> tuple[int, list[int]]:
    """Constant gradients of global norm G: warmup, then the number of adaptive steps on
    which every tensor is clipped, and the number clipped on each of those steps."""
    rng = np.random.default_rng(4)
    grads = _with_global_norm(rng, G)
    state = adagc.init(grads, cfg)
    for _ in range(cfg.warmup_steps):
        _, state, _ = adagc.update(grads, state, cfg)
    counts = []
    for _ in range(max_steps):
        _, state, stats = adagc.update(grads, state, cfg)
        counts.append(int(stats.num_clipped))
        if counts[-1] == 0:
            break
    return len(counts) - 1, counts


@pytest.mark.parametrize(("beta", "lambda_rel"), [(0.99, 1.04), (0.98, 1.04), (0.98, 1.03)])
def test_over_clipping_arithmetic_of_the_spec(beta, lambda_rel) -> None:
    """spec §1.1: with steady norms and G > lambda_abs in warmup, "clipped" starts gamma_i at
    h * n_i = n_i * lambda_abs / (G + eps) and clips every tensor on every step until
    lambda_rel * r**j * h >= 1, r = beta + (1 - beta) * lambda_rel: that is
    ceil(ln((G + eps) / (lambda_abs * lambda_rel)) / ln r) steps (2,092 at G = 2.4 with the
    defaults). "raw" starts gamma_i at n_i and clips nothing."""
    G = 2.4
    cfg = AdaGCConfig(warmup_steps=3, lambda_rel=lambda_rel, beta=beta)
    r = beta + (1 - beta) * lambda_rel
    expected = math.ceil(math.log((G + cfg.eps) / (cfg.lambda_abs * lambda_rel)) / math.log(r))
    streak, counts = _clipped_streak(cfg, G, 4000)
    assert abs(streak - expected) <= 1, (streak, expected)
    # Every tensor on every step of the streak (the last may differ by a rounding).
    assert all(c == len(SHAPES) for c in counts[: streak - 1])
    if (beta, lambda_rel) == (0.99, 1.04):
        assert 2091 <= streak <= 2093  # the figure spec §1.1 quotes: 2,092
    raw_streak, raw_counts = _clipped_streak(cfg.replace(warmup_gamma="raw"), G, 10)
    assert raw_streak == 0 and raw_counts == [0]


def test_the_raw_golden_is_not_the_clipped_trajectory() -> None:
    """The conformance golden for "raw" exercises the difference: replayed with "clipped",
    the reference ends with other gammas."""
    for name in ("warmup_gamma_raw", "warmup_gamma_raw_global"):
        golden = json.loads((GOLDENS / f"{name}.json").read_text())
        cfg = AdaGCConfig.from_dict(golden["config"])
        assert cfg.warmup_gamma == "raw"
        other = cfg.replace(warmup_gamma="clipped")
        state = ref_init(golden["num_tensors"], other)
        for rec in golden["steps"]:
            _, state, _ = ref_update(decode_list(rec["grads"]), state, other)
        final = golden["steps"][-1]["state"]["gamma"]
        assert all(a > 1.5 * b for a, b in zip(final, state.gamma)), (final, state.gamma)


def test_existing_goldens_store_no_warmup_gamma() -> None:
    """Goldens written before the field existed are unchanged: the key is stored only when
    it is not the default, and a config without it means "clipped"."""
    for path in GOLDENS.glob("*.json"):
        golden = json.loads(path.read_text())
        cfg = AdaGCConfig.from_dict(golden["config"])
        assert ("warmup_gamma" in golden["config"]) == (cfg.warmup_gamma == "raw"), path.name
