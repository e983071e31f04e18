"""The portable ``adagc/1`` format with NumPy arrays (every backend runs the same through
the conformance suite)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig, CheckpointMismatchError


def _trained(cfg: AdaGCConfig, steps: int = 3):
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=s) for s in [(3,), (2, 2)]]
    state = adagc.init(grads, cfg)
    for _ in range(steps):
        _, state, _ = adagc.update([g * rng.uniform(0.5, 2) for g in grads], state, cfg)
    return grads, state


def test_json_round_trip_is_exact() -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads, state = _trained(cfg)
    text = json.dumps(adagc.to_portable(state, cfg, ["w", "b"]))
    loaded = adagc.from_portable(json.loads(text), adagc.init(grads, cfg), cfg, ["w", "b"])
    np.testing.assert_array_equal(loaded.gamma, state.gamma)
    np.testing.assert_array_equal(loaded.seen, state.seen)
    assert int(loaded.step) == 3 and loaded.gamma.dtype == state.gamma.dtype


def test_index_names_and_global_key() -> None:
    _, state = _trained(AdaGCConfig(warmup_steps=1))
    assert set(adagc.to_portable(state, AdaGCConfig())["gamma"]) == {"0", "1"}
    gcfg = AdaGCConfig(warmup_steps=1, granularity="global")
    _, gstate = _trained(gcfg)
    ck = adagc.to_portable(gstate, gcfg, ["w", "b"])
    assert list(ck["gamma"]) == ["__global__"]


def test_live_config_wins() -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads, state = _trained(cfg)
    ck = adagc.to_portable(state, cfg)
    ck["config"]["lambda_rel"] = 9.0  # ignored: the live config wins
    loaded = adagc.from_portable(ck, adagc.init(grads, cfg), cfg)
    np.testing.assert_array_equal(loaded.gamma, state.gamma)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c.update(format="adagc/0"), "format"),
        (lambda c: c.pop("seen"), "'seen'"),
        (lambda c: c.update(step=-1), "step"),
        (lambda c: c.update(step=1.5), "step"),
        (lambda c: c["gamma"].pop("b"), "missing from checkpoint: 'b'"),
        (lambda c: c["gamma"].update(extra=1.0), "not in the model: 'extra'"),
        (lambda c: c["config"].update(granularity="global"), "granularity"),
    ],
)
def test_bad_checkpoints_name_the_problem(mutate, match) -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads, state = _trained(cfg)
    ck = adagc.to_portable(state, cfg, ["w", "b"])
    mutate(ck)
    with pytest.raises(CheckpointMismatchError, match=match):
        adagc.from_portable(ck, adagc.init(grads, cfg), cfg, ["w", "b"])


def test_names_must_fit() -> None:
    cfg = AdaGCConfig()
    _, state = _trained(cfg)
    with pytest.raises(ValueError, match="unique"):
        adagc.to_portable(state, cfg, ["w", "w"])
    with pytest.raises(ValueError, match="3 names"):
        adagc.to_portable(state, cfg, ["a", "b", "c"])
    with pytest.raises(TypeError, match="dict"):
        adagc.from_portable([("format", "adagc/1")], state, cfg)  # type: ignore[arg-type]


def test_warmup_gamma_rides_in_the_config() -> None:
    cfg = AdaGCConfig(warmup_steps=5, warmup_gamma="raw")
    grads, state = _trained(cfg)  # still in warmup: the raw minimum is in gamma
    ck = json.loads(json.dumps(adagc.to_portable(state, cfg, ["w", "b"])))
    assert ck["config"]["warmup_gamma"] == "raw"
    assert AdaGCConfig.from_dict(ck["config"]) == cfg
    loaded = adagc.from_portable(ck, adagc.init(grads, cfg), cfg, ["w", "b"])
    np.testing.assert_array_equal(loaded.gamma, state.gamma)
    assert int(loaded.step) == 3
    # Resuming continues the same run as never stopping.
    rng = np.random.default_rng(7)
    nxt = [g * rng.uniform(0.5, 2) for g in grads]
    a = adagc.update(nxt, state, cfg)
    b = adagc.update(nxt, loaded, cfg)
    np.testing.assert_array_equal(a[1].gamma, b[1].gamma)


def test_a_checkpoint_from_before_warmup_gamma_loads_as_clipped() -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads, state = _trained(cfg)
    ck = adagc.to_portable(state, cfg, ["w", "b"])
    del ck["config"]["warmup_gamma"]  # what adagc/1 files written before the field hold
    assert AdaGCConfig.from_dict(ck["config"]).warmup_gamma == "clipped"
    loaded = adagc.from_portable(ck, adagc.init(grads, cfg), cfg, ["w", "b"])
    np.testing.assert_array_equal(loaded.gamma, state.gamma)
