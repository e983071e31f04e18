"""The optax adapter: agreement with the core, pytrees, jit without recompilation, optax
composition (chain, apply_if_finite, MultiSteps, masked), checkpoints (tree_util, orbax,
adagc/1) and bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagc
from adagc import AdaGCConfig, CheckpointMismatchError, NonFiniteGradientError, StateMismatchError
from adagc.adapters.jax import AdaGCTransformState, from_portable, leaf_names, to_portable
from adagc.adapters.jax import adagc as adagc_tx

from .conftest import batches, init_params, loss_fn

CFG = AdaGCConfig(lambda_rel=1.04, beta=0.9, warmup_steps=3, lambda_abs=2.0)
KW = {"lambda_rel": 1.04, "beta": 0.9, "warmup_steps": 3, "lambda_abs": 2.0}


def grad_tree(step: int) -> dict:
    """A nested gradient tree (dicts, a list, a tuple, a None leaf) with leaf scales from
    0.01 to 3, a 50x spike in ``block.w`` at step 6 and a zero ``block.b`` at step 4."""
    rng = np.random.default_rng(100 + step)

    def leaf(shape: tuple[int, ...], scale: float) -> jax.Array:
        return jnp.asarray(rng.normal(size=shape).astype(np.float32) * scale)

    w = leaf((8, 8), 1.0) * (50.0 if step == 6 else 1.0)
    b = jnp.zeros(8) if step == 4 else leaf((8,), 0.01)
    return {
        "embed": leaf((16, 8), 0.5),
        "block": {"w": w, "b": b, "unused": None},
        "heads": [leaf((8, 4), 3.0), (leaf((4,), 0.2),)],
    }


def core_run(trees: list[dict], cfg: AdaGCConfig = CFG) -> list[list[np.ndarray]]:
    """The core on NumPy over the trees' leaves: the reference."""
    state, outs = None, []
    for t in trees:
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]
        state = state or adagc.init(leaves, cfg)
        out, state, _ = adagc.update(leaves, state, cfg)
        outs.append(out)
    return outs


def close(a: list, b: list, what: str, rtol: float = 2e-6) -> None:
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_allclose(np.asarray(x), y, rtol=rtol, atol=1e-7, err_msg=f"{what} {k}")


def test_jitted_update_matches_the_core_over_warmup_spike_and_zero() -> None:
    trees = [grad_tree(s) for s in range(10)]
    tx = adagc_tx(**KW)
    state = tx.init(trees[0])
    update = jax.jit(tx.update)
    expected = core_run(trees)
    for step, (t, exp) in enumerate(zip(trees, expected)):
        out, state = update(t, state)
        assert out["block"]["unused"] is None
        assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(t)
        close(jax.tree_util.tree_leaves(out), exp, f"step {step}")
    assert int(state.step) == 10
    # The spike at step 6 was clipped in block.w alone.
    assert leaf_names(trees[0]) == ["block.b", "block.w", "embed", "heads.0", "heads.1.0"]


def test_one_compilation_over_warmup_and_adaptive_steps(tokens) -> None:
    tx = optax.chain(adagc_tx(warmup_steps=2), optax.adamw(1e-3))
    # Committed inputs, like the step's own outputs: JAX compiles again for a change of
    # placement alone, which would hide what this test looks for.
    device = jax.devices()[0]
    params = jax.device_put(init_params(), device)
    opt_state = jax.device_put(tx.init(params), device)
    traces = 0
    compiles: list[float] = []

    def on_event(event: str, secs: float, **kw) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    @jax.jit
    def train_step(params, opt_state, x, y):
        nonlocal traces
        traces += 1
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    data = list(batches(tokens, 6))
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        warm = []
        for x, y in data:
            params, opt_state, _ = train_step(params, opt_state, x, y)
            warm.append(int(opt_state[0].step) <= 2)  # step after update
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert warm == [True, True, False, False, False, False]  # both phases ran (T_start=2)
    assert traces == 1
    assert len(compiles) == 1, compiles  # one XLA compilation for warmup and adaptive steps


def test_chain_with_adamw_trains_on_real_text(tokens) -> None:
    tx = optax.chain(adagc_tx(warmup_steps=20), optax.adamw(3e-3, b1=0.9, b2=0.95))
    params = init_params()
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, clipped = [], []
    for x, y in batches(tokens, 150):
        params, opt_state, loss = train_step(params, opt_state, x, y)
        losses.append(float(loss))
        clipped.append(int(opt_state[0].num_clipped))
    assert np.mean(losses[-20:]) < np.mean(losses[:5]) - 1.0, losses[::10]
    assert max(clipped[20:]) > 0  # the adaptive phase did clip
    assert opt_state[0].gamma.shape == (5,)


def test_stats_in_the_state_report_the_last_update() -> None:
    trees = [grad_tree(s) for s in range(8)]
    tx = adagc_tx(**KW)
    state = tx.init(trees[0])
    assert isinstance(state, AdaGCTransformState)
    np.testing.assert_array_equal(state.coefficients, np.ones(5))
    leaves0 = [np.asarray(x) for x in jax.tree_util.tree_leaves(trees[0])]
    ref_state = adagc.init(leaves0, CFG)
    for t in trees:
        _, state = tx.update(t, state)
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]
        _, ref_state, ref = adagc.update(leaves, ref_state, CFG)
        np.testing.assert_allclose(state.coefficients, ref.coefficients, rtol=2e-6)
        np.testing.assert_allclose(state.norms, ref.norms, rtol=2e-6)
        np.testing.assert_allclose(state.global_norm, ref.global_norm, rtol=2e-6)
        assert int(state.num_clipped) == int(ref.num_clipped)
        assert bool(state.nonfinite) == bool(ref.nonfinite)
    chain_state = optax.chain(tx).init(trees[0])
    assert optax.tree_utils.tree_get(chain_state, "coefficients").shape == (5,)


def test_pytrees_with_none_lists_and_masked_nodes() -> None:
    trees = [grad_tree(s) for s in range(6)]
    mask = {
        "embed": False,
        "block": {"w": True, "b": True, "unused": None},
        "heads": [True, (False,)],
    }
    tx = optax.masked(adagc_tx(**KW), mask)
    state = tx.init(trees[0])
    inner = state.inner_state
    assert inner.gamma.shape == (3,)  # block.b, block.w, heads.0: masked-out leaves take no part
    masked_trees = [
        {"block": {"w": t["block"]["w"], "b": t["block"]["b"]}, "heads": [t["heads"][0]]}
        for t in trees
    ]
    expected = core_run(masked_trees)
    for t, exp in zip(trees, expected):
        out, state = tx.update(t, state)
        np.testing.assert_array_equal(out["embed"], t["embed"])  # passed through untouched
        np.testing.assert_array_equal(out["heads"][1][0], t["heads"][1][0])
        close([out["block"]["b"], out["block"]["w"], out["heads"][0]], exp, "masked")


def test_apply_if_finite_skips_the_step_and_adagc_state_is_unchanged(tokens) -> None:
    tx = optax.apply_if_finite(optax.chain(adagc_tx(warmup_steps=2), optax.adamw(1e-3)), 3)
    params = init_params()
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    for k, (x, y) in enumerate(batches(tokens, 5)):
        grads = jax.grad(loss_fn)(params, x, y)
        if k == 3:
            grads["hidden"]["kernel"] = grads["hidden"]["kernel"].at[0, 0].set(jnp.nan)
        before = opt_state.inner_state[0]
        updates, opt_state = update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if k == 3:
            assert int(opt_state.notfinite_count) == 1
            after = opt_state.inner_state[0]
            for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(params)
            ):
                np.testing.assert_array_equal(a, b)  # the step was skipped
        params = new_params
    assert int(opt_state.inner_state[0].step) == 4


@pytest.mark.parametrize("policy", ["propagate", "zero"])
def test_nonfinite_step_leaves_the_state_unchanged(policy: str) -> None:
    tx = adagc_tx(**KW, nonfinite=policy)
    t0 = grad_tree(0)
    state = tx.init(t0)
    update = jax.jit(tx.update)
    _, state = update(t0, state)
    bad = grad_tree(1)
    bad["embed"] = bad["embed"].at[2, 3].set(jnp.inf)
    out, new = update(bad, state)
    assert bool(new.nonfinite) and int(new.num_clipped) == 0
    for field in ("step", "gamma", "seen"):
        np.testing.assert_array_equal(getattr(new, field), getattr(state, field))
    for o, g in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(bad)):
        if policy == "zero":
            assert np.all(np.asarray(o) == 0)
        else:
            np.testing.assert_array_equal(o, g)


def test_multisteps_clips_the_accumulated_gradient_once_per_k() -> None:
    k = 2
    micro = [grad_tree(s) for s in range(8)]
    tx = optax.MultiSteps(optax.chain(adagc_tx(**KW), optax.sgd(1.0)), every_k_schedule=k)
    params = jax.tree_util.tree_map(jnp.zeros_like, micro[0])
    state = tx.init(params)
    update = jax.jit(tx.update)
    applied = []
    for t in micro:
        updates, state = update(t, state, params)
        applied.append(updates)
    assert int(state.inner_opt_state[0].step) == len(micro) // k
    means = [
        jax.tree_util.tree_map(lambda a, b: (a + b) / 2, micro[i], micro[i + 1])
        for i in range(0, len(micro), k)
    ]
    expected = core_run(means)
    for i, exp in enumerate(expected):  # sgd(1.0): the update is minus the clipped gradient
        got = [-np.asarray(x) for x in jax.tree_util.tree_leaves(applied[k * i + k - 1])]
        close(got, exp, f"accumulated step {i}", rtol=1e-5)


def test_half_precision_leaves_keep_their_dtype() -> None:
    t = {"a": jnp.linspace(-2, 2, 16, dtype=jnp.bfloat16), "b": jnp.ones(4, jnp.float16)}
    tx = adagc_tx(warmup_steps=1, lambda_abs=0.5)
    state = tx.init(t)
    assert state.gamma.dtype == jnp.float32
    out, state = jax.jit(tx.update)(t, state)
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float16
    assert float(state.coefficients[0]) < 1.0


def test_global_granularity_through_the_adapter() -> None:
    trees = [grad_tree(s) for s in range(8)]
    cfg = CFG.replace(granularity="global")
    tx = adagc_tx(config=cfg)
    state = tx.init(trees[0])
    assert state.gamma.shape == (1,)
    for t, exp in zip(trees, core_run(trees, cfg)):
        out, state = tx.update(t, state)
        close(jax.tree_util.tree_leaves(out), exp, "global")


# -- checkpoints ------------------------------------------------------------------------------


def _train(tx, n: int, state, start: int = 0):
    update = jax.jit(tx.update)
    outs = []
    for s in range(start, start + n):
        out, state = update(grad_tree(s), state)
        outs.append(jax.tree_util.tree_leaves(out))
    return outs, state


def test_state_is_a_plain_pytree() -> None:
    tx = adagc_tx(**KW)
    _, state = _train(tx, 5, tx.init(grad_tree(0)))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, [np.asarray(x) for x in leaves])
    assert isinstance(rebuilt, AdaGCTransformState)
    a, _ = _train(tx, 4, rebuilt, start=5)
    b, _ = _train(tx, 4, state, start=5)
    for x, y in zip(a, b):
        close(x, [np.asarray(v) for v in y], "rebuilt", rtol=0)


def test_orbax_saves_and_restores_the_chain_state(tmp_path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = optax.chain(adagc_tx(**KW), optax.adam(1e-2))
    params = jax.tree_util.tree_map(jnp.zeros_like, grad_tree(0))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for s in range(5):
        _, state = update(grad_tree(s), state, params)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "opt", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "opt", jax.tree_util.tree_map(jnp.zeros_like, state))
    assert isinstance(restored[0], AdaGCTransformState)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
    for s in range(5, 9):  # training resumes bit-identically
        ua, state = update(grad_tree(s), state, params)
        ub, restored = update(grad_tree(s), restored, params)
        for a, b in zip(jax.tree_util.tree_leaves(ua), jax.tree_util.tree_leaves(ub)):
            np.testing.assert_array_equal(a, b)


def test_portable_checkpoint_keyed_by_key_paths() -> None:
    tx = optax.chain(adagc_tx(**KW), optax.sgd(0.1))
    tree = grad_tree(0)
    state = tx.init(tree)
    update = jax.jit(tx.update)
    for s in range(6):
        _, state = update(grad_tree(s), state, tree)
    ckpt = json.loads(json.dumps(to_portable(state, tree, CFG)))  # JSON-ready
    assert ckpt["format"] == "adagc/1" and ckpt["step"] == 6
    assert sorted(ckpt["gamma"]) == ["block.b", "block.w", "embed", "heads.0", "heads.1.0"]
    fresh = from_portable(ckpt, tx.init(tree), tree, CFG)
    for s in range(6, 10):
        ua, state = update(grad_tree(s), state, tree)
        ub, fresh = update(grad_tree(s), fresh, tree)
        close(
            jax.tree_util.tree_leaves(ub),
            [np.asarray(x) for x in jax.tree_util.tree_leaves(ua)],
            "resumed",
        )
    other = {"embed": tree["embed"], "block": {"w": tree["block"]["w"]}, "extra": jnp.ones(3)}
    with pytest.raises(CheckpointMismatchError, match="block.b") as info:
        from_portable(ckpt, adagc_tx(**KW).init(other), other, CFG)
    assert "extra" in info.value.missing and "block.b" in info.value.unexpected
    for field, value, match in [
        ("gamma", -1.0, "finite, >= 0"),
        ("seen", "false", "True or False"),
        ("step", 2**31, "outside"),  # beyond the int32 counter JAX uses without x64
    ]:
        bad = json.loads(json.dumps(ckpt))
        if field == "step":
            bad["step"] = value if not jax.config.jax_enable_x64 else 2**63
        else:
            bad[field]["embed"] = value
        with pytest.raises(CheckpointMismatchError, match=match):
            from_portable(bad, tx.init(tree), tree, CFG)


# -- bad input --------------------------------------------------------------------------------


def test_integer_and_non_array_leaves_are_rejected() -> None:
    tx = adagc_tx()
    with pytest.raises(TypeError, match="floating"):
        tx.init({"w": jnp.ones(3), "count": jnp.arange(3)})
    with pytest.raises(TypeError, match="'lr'.*must be an array"):
        tx.init({"w": jnp.ones(3), "lr": 0.1})


def test_state_of_other_parameters_is_rejected() -> None:
    tx = adagc_tx(**KW)
    state = tx.init({"a": jnp.ones(3), "b": jnp.ones(2)})
    with pytest.raises(StateMismatchError, match="gamma entries"):
        jax.jit(tx.update)({"a": jnp.ones(3), "b": jnp.ones(2), "c": jnp.ones(1)}, state)
    with pytest.raises(TypeError, match="AdaGCTransformState"):
        tx.update({"a": jnp.ones(3), "b": jnp.ones(2)}, state.core)


def test_raise_policy_eagerly_names_the_leaf_and_refuses_jit() -> None:
    tx = adagc_tx(**KW, nonfinite="raise")
    tree = grad_tree(0)
    state = tx.init(tree)
    _, state = tx.update(tree, state)  # a finite step passes
    bad = grad_tree(1)
    bad["block"]["w"] = bad["block"]["w"].at[0, 0].set(jnp.nan)
    with pytest.raises(NonFiniteGradientError, match="block.w") as info:
        tx.update(bad, state)
    assert info.value.tensors == ["block.w"]
    with pytest.raises(ValueError, match="host read"):
        jax.jit(tx.update)(tree, state)


def test_bad_config_and_axis_name() -> None:
    with pytest.raises(ValueError, match="beta"):
        adagc_tx(beta=1.5)
    with pytest.raises(TypeError, match="AdaGCConfig"):
        adagc_tx(config={"beta": 0.9})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="axis_name"):
        adagc_tx(axis_name=["x", ["y"]])


def test_a_jitted_train_step_compiles_once() -> None:
    """tx.init's state has the placement its updates return: no second compile."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    tx = optax.chain(adagc_tx(warmup_steps=1), optax.adamw(1e-3))
    opt_state = tx.init(params)

    def loss(p, x):
        return jnp.sum((x @ p["w"] + p["b"]) ** 2)

    @jax.jit
    def train_step(p, s, x):
        u, s = tx.update(jax.grad(loss)(p, x), s, p)
        return optax.apply_updates(p, u), s

    for i in range(3):
        params, opt_state = train_step(params, opt_state, jnp.ones((2, 4)) * (i + 1))
    assert train_step._cache_size() == 1
