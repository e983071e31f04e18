"""The TensorFlow backend beyond the conformance suite: tf.IndexedSlices gradients, update
inside a user's tf.function (no AutoGraph warning, "raise" refused clearly), jit_update /
adagc.jit_step (ties, "raise"), detection by name, XLA on a small layout."""

from __future__ import annotations

import logging

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import adagc  # noqa: E402
from adagc import AdaGCConfig, NonFiniteGradientError, TracedRaiseError  # noqa: E402
from adagc.backends import tensorflow as tfb  # noqa: E402


def _slices(values: np.ndarray, indices: list[int], rows: int) -> tf.IndexedSlices:
    return tf.IndexedSlices(
        tf.constant(values, tf.float32),
        tf.constant(indices, tf.int64),
        tf.constant([rows, values.shape[1]], tf.int64),
    )


def test_detected_by_name_from_sys_modules() -> None:
    g = tf.ones((2, 2))
    assert adagc.get_backend("tensorflow") is tfb.BACKEND
    state = adagc.init([g])
    assert isinstance(state.gamma, tf.Tensor) and state.step.dtype == tf.int64
    s = _slices(np.ones((1, 2)), [0], 3)
    assert adagc._dispatch.backend_for([s]) is tfb.BACKEND


def test_indexed_slices_norm_is_the_dense_gradient_norm() -> None:
    """Duplicate indices add up in the dense gradient: rows 1 and 1 of [[3, 0], [1, 0]]
    make a dense row [4, 0] (norm 4), not sqrt(3**2 + 1**2)."""
    vals = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    s = _slices(vals, [1, 1, 4], 6)
    dense = tf.convert_to_tensor(s)
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=1.0)
    state = adagc.init([s], cfg)
    (out,), _, stats = adagc.update([s], state, cfg)
    want = float(np.linalg.norm(dense.numpy()))
    assert abs(float(stats.norms[0]) - want) < 1e-6 and abs(want - np.sqrt(20.0)) < 1e-6
    assert isinstance(out, tf.IndexedSlices)  # stays sparse: same indices, scaled values
    np.testing.assert_array_equal(out.indices.numpy(), s.indices.numpy())
    h = float(stats.coefficients[0])
    np.testing.assert_allclose(out.values.numpy(), vals * h, rtol=1e-6)
    # Clipped exactly like the dense gradient would be.
    (dense_out,), _, dense_stats = adagc.update([dense], adagc.init([dense], cfg), cfg)
    np.testing.assert_allclose(tf.convert_to_tensor(out).numpy(), dense_out.numpy(), rtol=1e-6)
    assert abs(float(dense_stats.norms[0]) - float(stats.norms[0])) < 1e-6


def test_indexed_slices_with_dense_and_zero_policy() -> None:
    vals = np.array([[1.0, np.nan]])
    grads = [tf.ones((3,)), _slices(vals, [2], 5)]
    cfg = AdaGCConfig(nonfinite="zero")
    out, state, stats = adagc.update(grads, adagc.init(grads, cfg), cfg)
    assert bool(stats.nonfinite) and int(state.step) == 0
    assert np.all(out[0].numpy() == 0) and np.all(out[1].values.numpy() == 0)


def test_indexed_slices_in_tf_function_jit_update_and_xla() -> None:
    s = _slices(np.array([[3.0, 0.0], [1.0, 0.0]]), [1, 1], 4)
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=1.0)
    state = adagc.init([s], cfg)

    @tf.function
    def step(s, state):
        return adagc.update([s], state, cfg)

    (out,), _, stats = step(s, state)
    assert abs(float(stats.norms[0]) - 4.0) < 1e-6
    np.testing.assert_allclose(out.values.numpy(), [[0.75, 0.0], [0.25, 0.0]], rtol=1e-5)
    for xla in (False, True):
        (out2,), _, stats2 = tfb.jit_update(cfg, jit_compile=xla)([s], state)
        assert isinstance(out2, tf.IndexedSlices)
        np.testing.assert_allclose(out2.values.numpy(), out.values.numpy(), rtol=1e-6)
        assert abs(float(stats2.norms[0]) - 4.0) < 1e-6


def test_no_autograph_warning_inside_tf_function(caplog: pytest.LogCaptureFixture) -> None:
    """AutoGraph converts adagc's code inside tf.function; it must not warn about it."""
    cfg = AdaGCConfig(warmup_steps=1)
    grads = [tf.ones((2, 3)), tf.ones((4,)) * 3]
    state = adagc.init(grads, cfg)

    @tf.function
    def step(grads, state):
        return adagc.update(grads, state, cfg)

    tf.autograph.set_verbosity(1)  # AutoGraph's own warnings (for/else, unconvertible code)
    with caplog.at_level(logging.INFO, logger="tensorflow"):
        _, new, _ = step(grads, state)
    assert int(new.step) == 1
    noisy = [r.getMessage() for r in caplog.records if "AutoGraph" in r.getMessage()]
    assert not noisy, noisy


def test_raise_inside_tf_function_is_a_library_error() -> None:
    cfg = AdaGCConfig(nonfinite="raise")
    grads = [tf.ones((2,))]
    state = adagc.init(grads, cfg)

    @tf.function
    def step(grads, state):
        return adagc.update(grads, state, cfg)

    with pytest.raises(TracedRaiseError, match="jit_step"):
        step(grads, state)


def test_jit_update_raises_outside_the_trace_and_handles_ties() -> None:
    cfg = AdaGCConfig(nonfinite="raise", warmup_steps=0)
    a = tf.constant([3.0, 4.0])
    grads = [a, tf.constant([np.inf]), a]
    state = adagc.init(grads, cfg)
    fn = tfb.jit_update(cfg)
    with pytest.raises(NonFiniteGradientError) as info:
        fn(grads, state, ["w", "b", "w_tied"])
    assert info.value.tensors == ["b"]
    out, new, stats = fn([a, None, a], state)
    assert out[2] is out[0] and out[1] is None
    np.testing.assert_allclose(stats.norms.numpy(), [5.0, 0.0, 0.0])  # the tie counts once
    assert int(new.step) == 1


@pytest.mark.parametrize(("n", "dtype"), [(1, "float32"), (20, "float32"), (20, "float64")])
def test_xla_jit_compile_matches_eager(n: int, dtype: str) -> None:
    """jit_compile=True on small layouts (the whole suite under XLA is opt-in, see
    docs/tensorflow.md); float64 sorts 64-bit keys in the materialization."""
    rng = np.random.default_rng(n)
    grads = [tf.constant(rng.normal(size=(3, 2)) * (i + 1), dtype) for i in range(n)]
    cfg = AdaGCConfig(warmup_steps=1)
    state = ref = adagc.init(grads, cfg)
    fn = tfb.jit_update(cfg, jit_compile=True)
    for k in range(3):
        step_grads = [g * (k + 1) for g in grads]
        out, state, _ = fn(step_grads, state)
        want, ref, _ = adagc.update(step_grads, ref, cfg)
        for a, b in zip(out, want):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.gamma.numpy(), ref.gamma.numpy(), rtol=1e-5)


def test_make_like_and_device() -> None:
    like = tfb.make_like("cpu")
    g = tfb.BACKEND.asarray([1.0, 2.0], "float32", like=like)
    assert tfb.BACKEND.device(g) == tfb.BACKEND.device(like) == ("CPU", 0)
    with pytest.raises(ValueError, match="no 'tpu' devices"):
        tfb.make_like("tpu")
