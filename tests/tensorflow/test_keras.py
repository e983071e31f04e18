"""Keras 3 with AdaGC: docs/tensorflow.md's code runs as written (GradientTape loop, a
tf.function step with VariableState, model.fit through a custom train_step), and fit agrees
with the eager loop on the same data; an Embedding's IndexedSlices gradients go through fit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import adagc  # noqa: E402
from adagc.backends.tensorflow import VariableState  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "tensorflow.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def doc_namespace() -> dict:
    """Every code block of docs/tensorflow.md, run in order in one namespace."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras is not on the TensorFlow backend")
    ns: dict = {"__name__": "docs_tensorflow"}
    for block in _blocks():
        exec(compile(block, str(DOC), "exec"), ns)
    return ns


def test_doc_blocks_run(doc_namespace: dict) -> None:
    assert len(_blocks()) >= 3
    assert int(doc_namespace["state"].step) == 30  # the GradientTape loop
    assert int(doc_namespace["clipper"].step) == 5  # the tf.function step
    assert int(doc_namespace["fit_model"].adagc_state.step) == 16  # model.fit
    assert np.isfinite(doc_namespace["history"].history["loss"][-1])


def test_fit_equals_the_eager_loop(doc_namespace: dict) -> None:
    """The same model, data and config: fit's train_step and an eager tape loop give the same
    AdaGC state and the same weights (SGD, no shuffle)."""
    ns = doc_namespace
    AdaGCModel = ns["AdaGCModel"]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1)) * 50).astype("float32")  # large gradients: clipping
    cfg = adagc.AdaGCConfig(warmup_steps=2, lambda_abs=1.0, lambda_rel=1.01)

    def build(cls):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        return cls(inputs, keras.layers.Dense(1)(keras.layers.Dense(8)(inputs)))

    fit_model = build(AdaGCModel)
    fit_model.adagc_config = cfg
    fit_model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    fit_model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    eager = build(keras.Model)
    opt = keras.optimizers.SGD(1e-3)
    state = adagc.init(eager.trainable_variables, cfg)
    clipped_any = False
    for _ in range(2):
        for i in range(0, 64, 16):
            with tf.GradientTape() as tape:
                pred = eager(x[i : i + 16], training=True)
                loss = tf.reduce_mean(keras.losses.mean_squared_error(y[i : i + 16], pred))
            grads = tape.gradient(loss, eager.trainable_variables)
            grads, state, stats = adagc.update(grads, state, cfg)
            clipped_any |= int(stats.num_clipped) > 0
            opt.apply(grads, eager.trainable_variables)
    assert clipped_any
    got = fit_model.adagc_state.state
    assert int(got.step) == int(state.step) == 8
    np.testing.assert_allclose(got.gamma.numpy(), state.gamma.numpy(), rtol=1e-4)
    for a, b in zip(fit_model.trainable_variables, eager.trainable_variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_fit_with_an_embedding_clips_indexed_slices(doc_namespace: dict) -> None:
    AdaGCModel = doc_namespace["AdaGCModel"]
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(50, 4)(tokens)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    model = AdaGCModel(tokens, out)
    model.adagc_config = adagc.AdaGCConfig(warmup_steps=1)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10, size=(32, 6)).astype("int32")  # many repeated ids
    grads_seen: list = []
    real_clip = VariableState.clip

    def spy(self, grads):
        grads_seen.append([type(g).__name__ for g in grads])
        return real_clip(self, grads)

    VariableState.clip = spy  # type: ignore[method-assign]
    try:
        model.fit(ids, rng.normal(size=(32, 1)), batch_size=8, epochs=1, verbose=0)
    finally:
        VariableState.clip = real_clip  # type: ignore[method-assign]
    assert "IndexedSlices" in grads_seen[0]
    assert int(model.adagc_state.step) == 4
    assert bool(np.all(model.adagc_state.seen.numpy()))


def test_variable_state_checkpoint_and_portable(tmp_path: Path) -> None:
    cfg = adagc.AdaGCConfig(warmup_steps=1)
    v = [tf.Variable(tf.ones((2, 2))), tf.Variable(tf.ones((3,)))]
    vs = VariableState(v, cfg, names=["w", "b"])
    for k in range(3):
        vs.clip([tf.ones((2, 2)) * (k + 1), tf.ones((3,))])
    path = tf.train.Checkpoint(adagc=vs).save(str(tmp_path / "ckpt"))
    fresh = VariableState(v, cfg, names=["w", "b"])
    tf.train.Checkpoint(adagc=fresh).restore(path).assert_consumed()
    assert int(fresh.step) == 3
    np.testing.assert_array_equal(fresh.gamma.numpy(), vs.gamma.numpy())
    ckpt = adagc.to_portable(vs.state, cfg, ["w", "b"])
    other = VariableState(v, cfg)
    other.assign(adagc.from_portable(ckpt, other.state, cfg, ["w", "b"]))
    np.testing.assert_array_equal(other.gamma.numpy(), vs.gamma.numpy())
