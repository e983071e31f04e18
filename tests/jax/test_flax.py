"""Flax: adagc inside ``nnx.Optimizer`` (NNX) and a Linen ``TrainState``: training under jit
with one trace, ``stats`` and the state's convenience fields on NNX variables, portable
checkpoints into a fresh optimizer, orbax save/restore of the NNX optimizer state, and
Flax staying unimported unless the user imports it."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagc
from adagc import AdaGCConfig, CheckpointMismatchError
from adagc.adapters.jax import AdaGCTransformState, from_portable, leaf_names, stats, to_portable
from adagc.adapters.jax import adagc as adagc_tx

from .conftest import batches

nnx = pytest.importorskip("flax.nnx")

CFG = AdaGCConfig(warmup_steps=3, beta=0.9)
NAMES = ["embed.embedding", "hidden.bias", "hidden.kernel", "out.bias", "out.kernel"]
SPIKE = 6  # a 1,000x gradient on out.kernel at this step (after the 3 warmup steps)


class ByteModel(nnx.Module):
    """The byte-level next-token model of conftest.py, as an NNX module."""

    def __init__(self, rngs: nnx.Rngs, d: int = 32) -> None:
        self.embed = nnx.Embed(256, d, rngs=rngs)
        self.hidden = nnx.Linear(2 * d, d, rngs=rngs)
        self.out = nnx.Linear(d, 256, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        e = self.embed(x).reshape(x.shape[0], -1)
        return self.out(jnp.tanh(self.hidden(e)))


def make(seed: int = 0) -> tuple[ByteModel, nnx.Optimizer]:
    model = ByteModel(nnx.Rngs(seed))
    tx = optax.chain(adagc_tx(config=CFG), optax.adamw(3e-3))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def make_step() -> tuple[object, list[int]]:
    """An ``nnx.jit`` train step returning the loss, ``stats`` and the (boosted) gradients;
    the list counts its traces."""
    traces = [0]

    @nnx.jit
    def train_step(model, opt, x, y, boost):
        traces[0] += 1

        def loss_fn(m):
            logits = m(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        kernel = grads["out"]["kernel"]
        kernel.set_value(kernel.get_value() * boost)
        opt.update(model, grads)
        return loss, stats(opt.opt_state), nnx.as_pure(grads)

    return train_step, traces


def train(model, opt, train_step, tokens, n: int, seed: int = 0, spike: int | None = None):
    out = []
    for i, (x, y) in enumerate(batches(tokens, n, seed=seed)):
        boost = jnp.float32(1000.0 if i == spike else 1.0)
        out.append(train_step(model, opt, x, y, boost))
    return out


def test_nnx_optimizer_trains_under_jit_with_one_trace_and_stats_match_the_core(tokens) -> None:
    model, opt = make()
    train_step, traces = make_step()
    steps = train(model, opt, train_step, tokens, 10, spike=SPIKE)
    assert traces[0] == 1  # warmup, adaptive and spike steps alike
    losses = [float(loss) for loss, _, _ in steps]
    assert losses[-1] < losses[0]
    # The oracle: the core on NumPy over the same gradients.
    core_state = None
    for k, (_, got, grads) in enumerate(steps):
        leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]
        core_state = core_state or adagc.init(leaves, CFG)
        _, core_state, want = adagc.update(leaves, core_state, CFG)
        assert all(isinstance(x, jax.Array) for x in got)  # arrays, read on the host only here
        for field in ("norms", "coefficients", "global_norm", "clipped_global_norm"):
            np.testing.assert_allclose(
                getattr(got, field), getattr(want, field), rtol=1e-5, err_msg=f"{field} {k}"
            )
        for field in ("num_clipped", "nonfinite", "warmup"):
            assert int(getattr(got, field)) == int(getattr(want, field)), (field, k)
    spike = steps[SPIKE][1]
    assert (
        int(spike.num_clipped) >= 1 and float(spike.coefficients[NAMES.index("out.kernel")]) < 1e-2
    )
    assert [bool(s.warmup) for _, s, _ in steps[:5]] == [True, True, True, False, False]
    # The state's own fields read NNX variables (the TypeError), eagerly.
    record = opt.opt_state[0]
    assert isinstance(record.step, nnx.Variable)
    assert int(record.num_clipped) == int(steps[-1][1].num_clipped)
    assert int(record.core.step) == 10 and record.config == CFG
    np.testing.assert_allclose(record.core.gamma, core_state.gamma, rtol=1e-5)


def test_portable_round_trip_into_a_fresh_nnx_optimizer(tokens) -> None:
    model, opt = make()
    train_step, _ = make_step()
    train(model, opt, train_step, tokens, 5)
    params = nnx.state(model, nnx.Param)
    assert leaf_names(params) == NAMES  # the arrays' names, as nnx.Optimizer passes them
    ckpt = json.loads(json.dumps(to_portable(opt.opt_state, params)))  # no config= needed
    assert ckpt["config"] == CFG.to_dict() and ckpt["step"] == 5 and sorted(ckpt["gamma"]) == NAMES
    assert to_portable(opt, params) == ckpt  # the optimizer itself: the state is found in it

    fresh_model, fresh = make(seed=1)
    before = fresh.opt_state
    out = from_portable(ckpt, fresh.opt_state, nnx.state(fresh_model, nnx.Param))
    assert out is before and fresh.opt_state is before  # written where NNX keeps it
    live, loaded = opt.opt_state[0], fresh.opt_state[0]
    assert isinstance(loaded.gamma, nnx.Variable)
    assert np.array_equal(loaded.gamma.get_value(), live.gamma.get_value())  # bit-identical
    assert np.array_equal(loaded.seen.get_value(), live.seen.get_value())
    assert int(loaded.step.get_value()) == 5
    assert loaded.gamma.get_value().dtype == live.gamma.get_value().dtype
    # The optimizer itself works too, and the next jitted step runs on the loaded state.
    other_model, other = make(seed=2)
    assert from_portable(ckpt, other, nnx.state(other_model, nnx.Param)) is other
    assert np.array_equal(other.opt_state[0].gamma.get_value(), live.gamma.get_value())
    train(fresh_model, fresh, train_step, tokens, 1, seed=9)
    assert int(fresh.opt_state[0].step.get_value()) == 6

    # Another model's checkpoint: nothing is loaded.
    small = ByteModel(nnx.Rngs(0), d=16)
    small_opt = nnx.Optimizer(small, optax.chain(adagc_tx(config=CFG)), wrt=nnx.Param)
    bad = json.loads(json.dumps(ckpt))
    bad["gamma"]["extra"] = bad["gamma"].pop("out.kernel")
    bad["seen"]["extra"] = bad["seen"].pop("out.kernel")
    with pytest.raises(CheckpointMismatchError, match="out.kernel"):
        from_portable(bad, small_opt.opt_state, nnx.state(small, nnx.Param))
    assert int(small_opt.opt_state[0].step.get_value()) == 0
    # The module where its parameter state belongs: a TypeError saying what to pass.
    with pytest.raises(TypeError, match=r"nnx\.state\(model, nnx\.Param\)"):
        to_portable(opt.opt_state, model)
    with pytest.raises(ValueError, match="warmup_steps=100 passed, 3 in the transformation"):
        to_portable(opt.opt_state, params, AdaGCConfig())


def test_orbax_saves_and_restores_the_nnx_optimizer_state_then_trains_identically(
    tokens, tmp_path
) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    model, opt = make()
    train_step, _ = make_step()
    train(model, opt, train_step, tokens, 5)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "model", nnx.state(model))
    ckptr.save(tmp_path / "opt", nnx.state(opt))
    ckptr.wait_until_finished()

    new_model, new_opt = make(seed=1)  # other weights, a fresh optimizer state
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, nnx.state(new_opt))
    nnx.update(new_opt, ckptr.restore(tmp_path / "opt", abstract))
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, nnx.state(new_model))
    nnx.update(new_model, ckptr.restore(tmp_path / "model", abstract))
    restored = new_opt.opt_state[0]
    assert isinstance(restored, AdaGCTransformState) and restored.config == CFG
    assert np.array_equal(restored.gamma.get_value(), opt.opt_state[0].gamma.get_value())
    assert int(restored.step.get_value()) == 5

    a = train(model, opt, train_step, tokens, 4, seed=3, spike=1)
    b = train(new_model, new_opt, train_step, tokens, 4, seed=3, spike=1)
    for (la, sa, _), (lb, sb, _) in zip(a, b):
        assert np.array_equal(la, lb)
        for x, y in zip(sa, sb):
            assert np.array_equal(x, y)
    for x, y in zip(
        jax.tree_util.tree_leaves(nnx.state(opt)), jax.tree_util.tree_leaves(nnx.state(new_opt))
    ):
        assert np.array_equal(x, y)
    for x, y in zip(
        jax.tree_util.tree_leaves(nnx.state(model)), jax.tree_util.tree_leaves(nnx.state(new_model))
    ):
        assert np.array_equal(x, y)


def test_linen_train_state_under_jit_stats_and_portable(tokens) -> None:
    nn = pytest.importorskip("flax.linen")
    train_state = pytest.importorskip("flax.training.train_state")

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):
            e = nn.Embed(256, 32, name="embed")(x).reshape(x.shape[0], -1)
            return nn.Dense(256, name="out")(jnp.tanh(nn.Dense(32, name="hidden")(e)))

    module = Linen()
    x0, _ = next(batches(tokens, 1))
    params = module.init(jax.random.PRNGKey(0), x0)["params"]

    tx = optax.chain(adagc_tx(config=CFG), optax.adamw(3e-3))  # static in the TrainState

    def create():
        ts = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)
        return ts.replace(step=jnp.asarray(0))  # an array: create()'s Python 0 compiles twice

    traces = [0]

    @jax.jit
    def train_step(ts, x, y):
        traces[0] += 1

        def loss_fn(p):
            logits = ts.apply_fn({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(ts.params)
        ts = ts.apply_gradients(grads=grads)
        return ts, loss, stats(ts)  # the TrainState itself: the AdaGC state is found in it

    ts = create()
    losses, records = [], []
    for x, y in batches(tokens, 8):
        ts, loss, record = train_step(ts, x, y)
        losses.append(float(loss))
        records.append(record)
    assert traces[0] == 1 and train_step._cache_size() == 1
    assert losses[-1] < losses[0]
    assert int(ts.opt_state[0].step) == 8
    assert [bool(r.warmup) for r in records[:4]] == [True, True, True, False]
    assert int(records[-1].num_clipped) == int(ts.opt_state[0].num_clipped)
    np.testing.assert_array_equal(records[-1].coefficients, ts.opt_state[0].coefficients)

    ckpt = json.loads(json.dumps(to_portable(ts.opt_state, ts.params)))
    assert sorted(ckpt["gamma"]) == NAMES and ckpt["config"]["warmup_steps"] == 3
    assert to_portable(ts, ts.params) == ckpt
    fresh = create()
    loaded = from_portable(ckpt, fresh, fresh.params)  # a new TrainState
    assert isinstance(loaded, train_state.TrainState) and loaded.apply_fn == module.apply
    again = fresh.replace(opt_state=from_portable(ckpt, fresh.opt_state, fresh.params))
    for got in (loaded, again):
        assert np.array_equal(got.opt_state[0].gamma, ts.opt_state[0].gamma)
        assert int(got.opt_state[0].step) == 8
    assert int(fresh.opt_state[0].step) == 0  # the input is not changed
    train_step(loaded, x0, x0[:, 0])
    assert traces[0] == 1  # the loaded state has the type of the live one: no new trace


def test_the_adapter_does_not_import_flax() -> None:
    code = (
        "import sys, json, jax.numpy as jnp, optax\n"
        "from adagc.adapters.jax import adagc, stats, to_portable, from_portable\n"
        "tx = optax.chain(adagc(warmup_steps=3), optax.sgd(0.1))\n"
        "p = {'w': jnp.ones(3)}\n"
        "s = tx.init(p)\n"
        "_, s = tx.update(p, s, p)\n"
        "stats(s); from_portable(to_portable(s, p), s, p)\n"
        "assert not any(m == 'flax' or m.startswith('flax.') for m in sys.modules), 'flax'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_flax_section_of_docs_jax_md_runs(tmp_path) -> None:
    """Its code blocks, in order, as one program (they share names)."""
    pytest.importorskip("orbax.checkpoint")
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "jax.md").read_text()
    section = doc[doc.index("\n## Flax\n") :]
    section = section[: section.index("\n## ", 1)]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    assert "nnx.Optimizer" in code and "TrainState" in code
    code += "\nassert int(clipped) >= 0 and sorted(ckpt['gamma'])[0] == 'Dense_0.bias'\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
