"""Misuse of the core with NumPy arrays: clear errors, nothing half-applied."""

from __future__ import annotations

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig, NotWritableError


def test_a_read_only_gradient_fails_before_anything_is_written() -> None:
    cfg = AdaGCConfig(warmup_steps=3, lambda_abs=0.1)
    a = np.ones(4)
    b = np.broadcast_to(np.ones(1), (4,))  # read-only view
    state = adagc.init([a, b], cfg)
    with pytest.raises(NotWritableError, match="'b'.*read-only"):
        adagc.update([a, b], state, cfg, inplace=True, names=["a", "b"])
    np.testing.assert_array_equal(a, np.ones(4))
    out, _, _ = adagc.update([a, b], state, cfg)  # out of place is fine
    assert out[1] is not b


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lambda_rel": 10**400}, "lambda_rel must be finite"),
        ({"warmup_steps": 10**30}, r"warmup_steps must be an integer in \[0, 2147483647\]"),
        ({"warmup_steps": 2**31}, "warmup_steps"),
        ({"nonfinite": np.array("raise")}, "nonfinite must be one of"),
        ({"eps": np.bool_(True)}, "eps must be a real number"),
    ],
)
def test_bad_config_values_are_value_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        AdaGCConfig(**kwargs)


def test_numpy_scalars_are_accepted_and_normalised() -> None:
    cfg = AdaGCConfig(
        lambda_rel=np.float32(1.5), warmup_steps=np.int64(3), nonfinite=np.str_("zero")
    )
    assert type(cfg.lambda_rel) is float and cfg.lambda_rel == 1.5
    assert type(cfg.warmup_steps) is int and cfg.warmup_steps == 3
    assert type(cfg.nonfinite) is str
    assert cfg == AdaGCConfig(lambda_rel=1.5, warmup_steps=3, nonfinite="zero")


def test_names_must_match_the_gradients() -> None:
    g = [np.ones(2), np.full(2, np.inf)]
    with pytest.raises(ValueError, match="3 names for 2 gradients"):
        adagc.update(g, adagc.init(g), AdaGCConfig(nonfinite="raise"), names=["a", "b", "c"])


def test_two_views_of_one_storage_are_two_tensors_as_documented() -> None:
    """spec §3: views are not detected; each is clipped by its own coefficient."""
    base = np.full(8, 2.0)
    a, b = base[:6], base[2:]  # overlap in base[2:6]
    cfg = AdaGCConfig(warmup_steps=3, lambda_abs=1.0)
    _, _, stats = adagc.update([a, b], adagc.init([a, b], cfg), cfg, inplace=True)
    assert float(stats.global_norm) == pytest.approx(np.sqrt(2 * 6 * 4.0))  # counted twice
    h = float(stats.coefficients[0])
    np.testing.assert_allclose(base[2:6], 2.0 * h * h)  # the shared part scaled twice
