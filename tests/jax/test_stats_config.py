"""The optax adapter's ``stats(opt_state)`` inside chain / MultiSteps / masked /
apply_if_finite under jit, and the config the state carries: portable checkpoints record the
transformation's own config without ``config=``; a different ``config=`` is an error."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagc
from adagc import AdaGCConfig, AdaGCStats
from adagc.adapters.jax import AdaGCTransformState, from_portable, stats, to_portable
from adagc.adapters.jax import adagc as adagc_tx

CFG = AdaGCConfig(lambda_rel=1.04, beta=0.9, warmup_steps=3, lambda_abs=2.0)


def grads(step: int, nan: bool = True) -> dict:
    """Three leaves; a 50x spike in ``w`` at step 5; with ``nan``, a NaN in ``b`` at step 3
    (k = 3 = warmup_steps: its ``warmup`` flag is that of the unchanged k)."""
    rng = np.random.default_rng(step)
    w = rng.normal(size=(6, 4)).astype(np.float32) * (50.0 if step == 5 else 1.0)
    b = rng.normal(size=(4,)).astype(np.float32) * 0.1
    if step == 3 and nan:
        b[0] = np.nan
    return {"w": jnp.asarray(w), "b": jnp.asarray(b), "e": jnp.asarray(rng.normal(size=(3, 2)))}


def wrapped(kind: str) -> optax.GradientTransformation:
    inner = adagc_tx(config=CFG)
    if kind == "chain":
        return optax.chain(inner, optax.sgd(0.1))
    if kind == "multisteps":
        return optax.MultiSteps(optax.chain(inner, optax.sgd(0.1)), every_k_schedule=1)
    if kind == "masked":
        return optax.chain(optax.masked(inner, {"w": True, "b": True, "e": False}), optax.sgd(0.1))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["chain", "multisteps", "masked"])
def test_stats_finds_the_state_and_matches_the_core_under_jit(kind: str) -> None:
    tx = wrapped(kind)
    params = jax.tree_util.tree_map(jnp.zeros_like, grads(0))
    state = tx.init(params)

    @jax.jit
    def step(g, s):
        _, s = tx.update(g, s, params)
        return s, stats(s)

    # MultiSteps keeps a NaN in its accumulator for later steps: no NaN there.
    core_state, masked, nan = None, kind == "masked", kind != "multisteps"
    for k in range(9):
        g = grads(k, nan)
        state, got = step(g, state)
        assert isinstance(got, AdaGCStats)
        names = [name for name in sorted(g) if not (masked and name == "e")]
        leaves = [np.asarray(g[name]) for name in names]
        core_state = core_state or adagc.init(leaves, CFG)
        _, core_state, want = adagc.update(leaves, core_state, CFG)
        for field in ("norms", "coefficients", "global_norm", "clipped_global_norm"):
            np.testing.assert_allclose(
                getattr(got, field), getattr(want, field), rtol=2e-6, err_msg=f"{field} {k}"
            )
        for field in ("num_clipped", "nonfinite", "warmup"):
            assert int(getattr(got, field)) == int(getattr(want, field)), (field, k)
        if k == 5:  # the spike: w is cut hard
            assert int(got.num_clipped) >= 1 and float(got.coefficients[names.index("w")]) < 0.1
        if k == 3 and nan:
            assert bool(got.nonfinite) and int(got.num_clipped) == 0
    assert step._cache_size() == 1


def test_stats_of_a_state_without_adagc_or_with_two_is_an_error() -> None:
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="found 0"):
        stats(optax.adam(1e-3).init(p))
    two = optax.chain(adagc_tx(), adagc_tx())
    with pytest.raises(ValueError, match="found 2"):
        stats(two.init(p))


def test_portable_records_the_transformations_config_without_config_argument() -> None:
    cfg = CFG.replace(lambda_rel=1.1)
    tx = optax.chain(adagc_tx(config=cfg), optax.sgd(0.1))
    params = jax.tree_util.tree_map(jnp.zeros_like, grads(0))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(5):
        _, state = update(grads(k, nan=False), state, params)
    assert state[0].config == cfg
    ckpt = json.loads(json.dumps(to_portable(state, params)))
    assert ckpt["config"] == cfg.to_dict()  # warmup_steps=3, lambda_rel=1.1: not the defaults
    assert to_portable(state, params, cfg) == ckpt  # config= still accepted
    fresh = from_portable(ckpt, tx.init(params), params)
    assert fresh[0].config == cfg
    for a, b in zip(fresh[0][:3], state[0][:3]):
        assert np.array_equal(a, b)
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(state)

    # A config= that is not the transformation's: an error naming the field, on both paths.
    with pytest.raises(ValueError, match=r"lambda_rel=1\.04 passed, 1\.1 in the transformation"):
        to_portable(state, params, CFG)
    with pytest.raises(ValueError, match="leave config= out"):
        from_portable(ckpt, tx.init(params), params, AdaGCConfig())
    with pytest.raises(TypeError, match="AdaGCConfig"):
        to_portable(state, params, cfg.to_dict())  # type: ignore[arg-type]

    # A state built by hand carries no config: config= is needed.
    bare = state[0]._replace(config=None)
    with pytest.raises(ValueError, match="pass config="):
        to_portable(bare, params)
    assert to_portable(bare, params, cfg) == ckpt


def test_global_granularity_is_keyed_right_without_config() -> None:
    cfg = CFG.replace(granularity="global")
    tx = adagc_tx(config=cfg)
    params = jax.tree_util.tree_map(jnp.zeros_like, grads(0))
    state = tx.init(params)
    for k in range(4):
        _, state = tx.update(grads(k, nan=False), state)
    ckpt = to_portable(state, params)
    assert list(ckpt["gamma"]) == ["__global__"] and ckpt["config"]["granularity"] == "global"
    loaded = from_portable(ckpt, tx.init(params), params)
    assert np.array_equal(loaded.gamma, state.gamma) and int(loaded.step) == 4
    # A per-tensor transformation refuses the global checkpoint (the live config wins).
    with pytest.raises(adagc.CheckpointMismatchError, match="granularity"):
        from_portable(ckpt, adagc_tx(config=CFG).init(params), params)


def test_the_config_is_static_and_survives_tree_operations() -> None:
    tx = adagc_tx(config=CFG)
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert len(leaves) == 7  # the config is no leaf
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, AdaGCTransformState) and rebuilt.config == CFG
    assert jax.tree_util.tree_map(jnp.zeros_like, state).config == CFG
    other = adagc_tx(config=CFG.replace(beta=0.5)).init(params)
    assert jax.tree_util.tree_structure(other) != treedef
    # apply_if_finite's select between the old and the new state keeps it.
    guarded = optax.apply_if_finite(optax.chain(tx, optax.sgd(0.1)), 3)
    s = guarded.init(params)
    _, s = jax.jit(guarded.update)({"w": jnp.full((2, 2), jnp.nan)}, s, params)
    assert int(s.notfinite_count) == 1
    assert s.inner_state[0].config == CFG and int(s.inner_state[0].step) == 0


def test_warmup_gamma_keyword_reaches_the_config() -> None:
    import jax.numpy as jnp

    from adagc.adapters.jax import adagc as adagc_tx

    tx = adagc_tx(warmup_gamma="raw")
    state = tx.init({"w": jnp.zeros(3)})
    assert state.config.warmup_gamma == "raw"
