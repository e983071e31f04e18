"""Hypothesis strategies shared by the fuzz tests of every framework's test session:
edited checkpoints and the values that have broken loaders (wrong types, NaN/Inf, huge,
negative, strings, bools, NumPy scalars)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from adagc import CheckpointMismatchError


def fuzz(examples: int) -> settings:
    """Settings of every fuzz test: ``examples`` cases, no example database on disk, no
    deadline (CI machines are slow)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
    st.just(10**400),
    st.sampled_from(["false", "True", "0.5", "1"]),
    st.floats(min_value=0, max_value=10).map(np.float32),
    st.integers(min_value=0, max_value=100).map(np.int64),
    st.booleans().map(np.bool_),
    st.lists(st.floats(min_value=0, max_value=1), max_size=2),
)


@st.composite
def edited_portable(draw: Any, ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` (an ``adagc/1`` dict) with a few random edits: values replaced by anything,
    entries dropped or added, top-level keys changed."""
    out = copy.deepcopy(ckpt)
    names = list(out["gamma"])
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        kind = draw(st.sampled_from(["gamma", "seen", "step", "drop", "add", "top"]))
        field = draw(st.sampled_from(["gamma", "seen"]))
        table = out.get(kind if kind in ("gamma", "seen") else field)
        if kind in ("gamma", "seen", "drop", "add") and not isinstance(table, dict):
            continue  # replaced by an earlier edit
        if kind in ("gamma", "seen"):
            table[draw(st.sampled_from(names))] = draw(ANY_VALUE)
        elif kind == "step":
            out["step"] = draw(ANY_VALUE)
        elif kind == "drop":
            table.pop(draw(st.sampled_from(names)), None)
        elif kind == "add":
            table[draw(st.text(max_size=3))] = 1.0
        else:
            key = draw(st.sampled_from(["format", "config", "gamma", "seen", "step"]))
            if draw(st.booleans()):
                out.pop(key, None)
            else:
                out[key] = draw(ANY_VALUE)
    return out


def check_loaded_or_rejected(load: Any, host_state: Any) -> None:
    """``load()`` either raises ``CheckpointMismatchError`` leaving ``host_state()`` as it was,
    or loads a valid state: gamma finite and >= 0, seen boolean, step >= 0. ``host_state``
    returns ``(step, gamma, seen)`` as NumPy values."""
    before = host_state()
    try:
        load()
    except CheckpointMismatchError:
        after = host_state()
        assert after[0] == before[0]
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[2], before[2])
        return
    step, gamma, seen = host_state()
    assert int(step) >= 0
    assert np.all(np.isfinite(gamma)) and np.all(np.asarray(gamma) >= 0)
    assert np.asarray(seen).dtype == np.bool_


__all__ = ["ANY_VALUE", "check_loaded_or_rejected", "edited_portable", "fuzz"]
