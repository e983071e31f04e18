"""adagc.jit_step, the graph-mode helper, without a graph compiler: a "compiler" that records
what it is given stands in for jax.jit / tf.function, so the contract is checked with NumPy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig, NonFiniteGradientError, TracedRaiseError


class Recorder:
    """compile(fn) -> fn, remembering every call's arguments."""

    def __init__(self) -> None:
        self.compiled = 0
        self.calls: list[list[Any]] = []

    def __call__(self, fn: Any) -> Any:
        self.compiled += 1

        def run(used: list[Any], state: adagc.AdaGCState) -> Any:
            self.calls.append(list(used))
            return fn(used, state)

        return run


def _grads() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 2)), rng.normal(size=4) * 5]


def test_compiles_once_and_matches_update() -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    rec = Recorder()
    step = adagc.jit_step(rec, cfg)
    assert rec.compiled == 1 and isinstance(step, adagc.JitStep)
    state = ref = adagc.init(_grads(), cfg)
    for k in range(3):
        grads = [g * (k + 1) for g in _grads()]
        got, state, stats = step(grads, state)
        want, ref, want_stats = adagc.update(grads, ref, cfg)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(state.gamma, ref.gamma)
        np.testing.assert_array_equal(stats.coefficients, want_stats.coefficients)
    assert rec.compiled == 1 and len(rec.calls) == 3


def test_ties_and_absent_are_resolved_outside_the_trace() -> None:
    cfg = AdaGCConfig(warmup_steps=0)
    a, b = _grads()
    grads = [a, None, b, a]  # position 3 repeats position 0 (tied weights)
    rec = Recorder()
    step = adagc.jit_step(rec, cfg, backend="numpy")
    state = adagc.init(grads, cfg)
    out, _, stats = step(grads, state)
    used = rec.calls[0]
    assert used[0] is a and used[1] is None and used[2] is b and used[3] is None
    assert out[1] is None and out[3] is out[0]
    assert float(stats.norms[3]) == 0.0  # the repeat is counted once
    want, _, _ = adagc.update(grads, state, cfg)
    np.testing.assert_array_equal(out[0], want[0])


def test_raise_is_decided_outside_the_trace() -> None:
    cfg = AdaGCConfig(nonfinite="raise")
    seen: list[str] = []

    def compile(fn: Any) -> Any:
        def run(used: list[Any], state: adagc.AdaGCState) -> Any:
            out = fn(used, state)
            seen.append("traced step returned")  # the traced step itself never raises
            return out

        return run

    step = adagc.jit_step(compile, cfg)
    grads = _grads()
    grads[1] = grads[1].copy()
    grads[1][0] = np.nan
    state = adagc.init(grads, cfg)
    with pytest.raises(NonFiniteGradientError) as info:
        step(grads, state, names=["w", "b"])
    assert info.value.tensors == ["b"] and seen == ["traced step returned"]
    assert np.isnan(grads[1][0])  # nothing written


def test_body_replaces_what_is_traced() -> None:
    cfg = AdaGCConfig(nonfinite="raise")
    got: list[AdaGCConfig] = []

    def body(used: list[Any], state: adagc.AdaGCState, inner: AdaGCConfig) -> Any:
        got.append(inner)
        return adagc.generic_update(used, state, inner, adagc.get_backend("numpy"))

    step = adagc.jit_step(lambda f: f, cfg, backend="numpy", body=body)
    step(_grads(), adagc.init(_grads(), cfg))
    assert got[0].nonfinite == "propagate"  # the trace never sees "raise"


def test_traced_raise_error_is_a_type_and_value_error() -> None:
    err = adagc._graph.traced_raise_error("tf.function")
    assert isinstance(err, TracedRaiseError)
    assert isinstance(err, TypeError) and isinstance(err, ValueError)
    assert "tf.function" in str(err) and "jit_step" in str(err)


def test_module_path_error_does_not_suggest_an_extra() -> None:
    with pytest.raises(ImportError) as info:
        adagc.get_backend("no_such_pkg.my_backend")
    msg = str(info.value)
    assert "pip install" not in msg and "importable" in msg and "BACKEND" in msg


def test_registered_name_error_suggests_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        adagc._dispatch._REGISTRY,
        "fakefw",
        adagc._dispatch.BackendEntry("fakefw", "no_such_pkg.fakefw", lambda x: False),
    )
    with pytest.raises(ImportError, match=r"pip install 'adagc\[fakefw\]'"):
        adagc.get_backend("fakefw")
