"""Hypothesis over the core with NumPy: checkpoints, configs and gradient lists (NaN/Inf
patterns, dtypes, absent, tied, empty). Invariants, not goldens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adagc
from adagc import AdaGCConfig, CheckpointMismatchError

from ..fuzz import ANY_VALUE, check_loaded_or_rejected, edited_portable, fuzz

NAMES = ["w", "b", "e"]
GRADS = [np.linspace(-1, 1, 6).reshape(2, 3), np.full(3, 0.5), np.zeros(0)]
CFG = AdaGCConfig(warmup_steps=1)


def _trained() -> adagc.AdaGCState:
    state = adagc.init(GRADS, CFG)
    for k in range(3):
        _, state, _ = adagc.update([g * (k + 1) for g in GRADS], state, CFG)
    return state


CKPT = adagc.to_portable(_trained(), CFG, NAMES)


@fuzz(1000)
@given(ckpt=edited_portable(CKPT))
def test_fuzz_portable_loader(ckpt) -> None:
    like = adagc.init(GRADS, CFG)
    box = {"state": like}

    def load() -> None:
        box["state"] = adagc.from_portable(ckpt, like, CFG, NAMES)

    check_loaded_or_rejected(
        load, lambda: (int(box["state"].step), box["state"].gamma, box["state"].seen)
    )


CONFIG_FIELDS = [
    "lambda_rel",
    "beta",
    "warmup_steps",
    "lambda_abs",
    "eps",
    "granularity",
    "shard_mode",
    "nonfinite",
]


@fuzz(400)
@given(
    edits=st.dictionaries(
        st.sampled_from(CONFIG_FIELDS),
        st.one_of(ANY_VALUE, st.sampled_from(["tensor", "global", "local", "zero", "raise"])),
        max_size=3,
    )
)
def test_fuzz_config(edits) -> None:
    try:
        cfg = AdaGCConfig(**edits)
    except ValueError:
        return
    assert cfg.lambda_rel > 0 and 0 <= cfg.beta < 1 and cfg.lambda_abs > 0 and cfg.eps > 0
    assert type(cfg.warmup_steps) is int and cfg.warmup_steps >= 0
    assert AdaGCConfig.from_dict(cfg.to_dict()) == cfg


VALUES = st.one_of(
    st.floats(min_value=-1e3, max_value=1e3),
    st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e30]),
)


@st.composite
def gradient_lists(draw):
    n = draw(st.integers(min_value=1, max_value=5))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    grads: list = []
    for _ in range(n):
        kind = draw(st.sampled_from(["array", "array", "array", "none", "empty", "tie"]))
        if kind == "none":
            grads.append(None)
        elif kind == "empty":
            grads.append(np.zeros(0, dtype))
        elif kind == "tie" and any(g is not None for g in grads):
            grads.append(draw(st.sampled_from([g for g in grads if g is not None])))
        else:
            size = draw(st.integers(min_value=1, max_value=6))
            vals = draw(st.lists(VALUES, min_size=size, max_size=size))
            with np.errstate(over="ignore"):
                grads.append(np.array(vals, dtype=dtype))
    return grads


@fuzz(800)
@given(
    grads=gradient_lists(),
    warmup=st.integers(min_value=0, max_value=2),
    steps=st.integers(min_value=1, max_value=3),
    policy=st.sampled_from(["propagate", "zero"]),
)
def test_fuzz_update_invariants(grads, warmup, steps, policy) -> None:
    cfg = AdaGCConfig(warmup_steps=warmup, lambda_abs=0.5, nonfinite=policy)
    state = adagc.init(grads, cfg, backend="numpy")
    for _ in range(steps):
        out, new, stats = adagc.update(grads, state, cfg, backend="numpy")
        copies = [None if g is None else g.copy() for g in grads]
        # in place on copies (ties kept: the same copy twice)
        ids: dict[int, np.ndarray] = {}
        for j, g in enumerate(grads):
            if g is not None:
                copies[j] = ids.setdefault(id(g), copies[j])
        out_in, new_in, _ = adagc.update(copies, state, cfg, backend="numpy", inplace=True)
        for a, b in zip(out, out_in):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(new.gamma, new_in.gamma)
        if bool(stats.nonfinite):
            assert int(new.step) == int(state.step)
            np.testing.assert_array_equal(new.gamma, state.gamma)
            np.testing.assert_array_equal(new.seen, state.seen)
        else:
            h = np.asarray(stats.coefficients)
            assert np.all((h > 0) & (h <= 1))
            assert np.all(np.isfinite(new.gamma)) and np.all(new.gamma >= 0)
            assert int(new.step) == int(state.step) + 1
        state = new


def test_fuzz_rejects_with_the_documented_error_only() -> None:
    """A sanity anchor for the loader fuzz: a negative gamma is a CheckpointMismatchError."""
    bad = {**CKPT, "gamma": {**CKPT["gamma"], "w": -1.0}}
    with pytest.raises(CheckpointMismatchError):
        adagc.from_portable(bad, adagc.init(GRADS, CFG), CFG, NAMES)
