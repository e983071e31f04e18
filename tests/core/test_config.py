from __future__ import annotations

import dataclasses

import pytest

from adagc import AdaGCConfig


def test_defaults_are_the_papers() -> None:
    cfg = AdaGCConfig()
    assert (cfg.lambda_rel, cfg.beta, cfg.warmup_steps, cfg.lambda_abs, cfg.eps) == (
        1.04,
        0.99,
        100,
        1.0,
        1e-6,
    )
    assert (cfg.granularity, cfg.shard_mode, cfg.nonfinite) == ("tensor", "exact", "propagate")


def test_frozen_and_replace_validates() -> None:
    cfg = AdaGCConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 0.5  # type: ignore[misc]
    assert cfg.replace(beta=0.5).beta == 0.5
    with pytest.raises(ValueError, match="beta"):
        cfg.replace(beta=2.0)


def test_dict_round_trip_and_unknown_keys() -> None:
    cfg = AdaGCConfig(lambda_rel=1.05, granularity="global")
    assert AdaGCConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown AdaGCConfig field"):
        AdaGCConfig.from_dict({**cfg.to_dict(), "lamda_rel": 1.0})


def test_integers_are_accepted_for_floats() -> None:
    cfg = AdaGCConfig(lambda_rel=2, lambda_abs=3)
    assert isinstance(cfg.lambda_rel, float) and cfg.lambda_abs == 3.0


def test_error_says_the_legal_range() -> None:
    with pytest.raises(ValueError, match=r"0 <= beta < 1"):
        AdaGCConfig(beta=1.0)
    with pytest.raises(ValueError, match=r"one of \['tensor', 'global'\]"):
        AdaGCConfig(granularity="layer")  # type: ignore[arg-type]


def test_warmup_gamma_default_and_choices() -> None:
    assert AdaGCConfig().warmup_gamma == "clipped"  # the paper's Algorithm 1 and Megatron
    assert AdaGCConfig(warmup_gamma="raw").warmup_gamma == "raw"
    for bad in ("unclipped", "Raw", "", None, 1, True):
        with pytest.raises(ValueError, match=r"warmup_gamma must be one of \['clipped', 'raw'\]"):
            AdaGCConfig(warmup_gamma=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_gamma"):
        AdaGCConfig().replace(warmup_gamma="min")


def test_warmup_gamma_in_dicts() -> None:
    cfg = AdaGCConfig(warmup_gamma="raw")
    assert cfg.to_dict()["warmup_gamma"] == "raw"
    assert AdaGCConfig.from_dict(cfg.to_dict()) == cfg
    old = AdaGCConfig().to_dict()
    del old["warmup_gamma"]  # a dict saved before the field existed
    assert AdaGCConfig.from_dict(old).warmup_gamma == "clipped"
    assert AdaGCConfig(warmup_gamma="raw") != AdaGCConfig()  # configs compare (JAX caches)
