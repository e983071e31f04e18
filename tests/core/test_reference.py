"""The oracle itself, against numbers worked out by hand from spec §1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adagc import AdaGCConfig
from adagc.backends.reference import ref_init, ref_update


def test_warmup_is_global_clipping_and_gamma_is_running_min_of_clipped_norms() -> None:
    cfg = AdaGCConfig(warmup_steps=2, lambda_abs=1.0, eps=1e-6)
    s = ref_init(2, cfg)
    g = [np.array([3.0, 0.0]), np.array([0.0, 4.0])]  # n = 3, 4; G = 5
    out, s, st = ref_update(g, s, cfg)
    h = 1.0 / (5.0 + 1e-6)
    assert st.coefficients == [h, h]
    assert s.gamma == [3 * h, 4 * h] and s.step == 1
    np.testing.assert_allclose(out[0], [3 * h, 0.0])
    g2 = [np.array([0.1, 0.0]), np.array([0.0, 0.2])]  # G = 0.2236 < 1: no clipping
    _, s, st = ref_update(g2, s, cfg)
    assert st.coefficients == [1.0, 1.0]
    assert s.gamma == [0.1, 0.2]  # min(3h, 0.1), min(4h, 0.2)


def test_adaptive_clips_against_lambda_rel_gamma_and_ema_of_clipped_norm() -> None:
    cfg = AdaGCConfig(warmup_steps=0, lambda_rel=1.04, beta=0.9, eps=1e-6)
    s = ref_init(1, cfg)
    _, s, st = ref_update([np.array([2.0])], s, cfg)  # first observation: gamma = n, h = 1
    assert s.gamma == [2.0] and st.coefficients == [1.0]
    out, s, st = ref_update([np.array([10.0])], s, cfg)  # t = 2.08 < 10: clipped
    t = 1.04 * 2.0
    assert st.coefficients == [t / (10.0 + 1e-6)]
    assert s.gamma[0] == pytest.approx(0.9 * 2.0 + 0.1 * t)
    np.testing.assert_allclose(out[0], [10.0 * t / (10.0 + 1e-6)])
    _, s2, st = ref_update([np.array([1.0])], s, cfg)  # below threshold: EMA of n itself
    assert st.coefficients == [1.0]
    assert s2.gamma[0] == pytest.approx(0.9 * s.gamma[0] + 0.1 * 1.0)


def test_zero_gradient_is_not_observed() -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    s = ref_init(2, cfg)
    _, s, st = ref_update([np.zeros(2), np.array([0.5])], s, cfg)
    assert s.seen == [False, True] and s.gamma[0] == 0.0 and st.coefficients[0] == 1.0
    _, s, _ = ref_update([np.zeros(2), np.array([0.5])], s, cfg)
    assert s.gamma[1] == pytest.approx(0.99 * 0.5 + 0.01 * 0.5)


def test_global_granularity_uses_min_of_g_and_lambda_abs_in_warmup() -> None:
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=1.0, granularity="global")
    s = ref_init(2, cfg)
    _, s, st = ref_update([np.array([3.0]), np.array([4.0])], s, cfg)
    assert s.gamma == [1.0] and st.coefficients == [1 / (5 + 1e-6)] * 2
    _, s, st = ref_update([np.array([0.6]), np.array([0.8])], s, cfg)  # G = 1 < t = 1.04
    assert st.coefficients == [1.0, 1.0]
    assert s.gamma[0] == pytest.approx(0.99 + 0.01 * 1.0)
    assert math.isclose(st.global_norm, 1.0)
