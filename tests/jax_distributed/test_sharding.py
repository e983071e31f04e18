"""Sharded gradients on 4 host devices: ``NamedSharding`` under ``jax.jit`` equals the
unsharded run; inside ``shard_map`` ``axis_name`` selects the spec's shard_mode: "exact" equals the
unsharded run with ONE ``psum`` of the per-leaf partial sums (replicated leaves counted once
through ``param_specs``, also on a 2-D mesh), "local" (AdaGC-Shard) clips each shard by its
own norm with only the 2-element flag/warmup-norm ``psum``; data-parallel gradients after a
``pmean`` need no collective of AdaGC's own."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adagc
from adagc import AdaGCConfig
from adagc.adapters.jax import adagc as adagc_tx
from adagc.adapters.jax import state_specs
from adagc.backends.numpy import BACKEND as NP

KW = {"lambda_rel": 1.04, "beta": 0.9, "warmup_steps": 3, "lambda_abs": 4.0}
CFG = AdaGCConfig(**KW)
SHAPES = {"w1": (16, 8), "w2": (8, 12), "b": (16,), "ln": (8,)}
SCALES = {"w1": 1.0, "w2": 0.5, "b": 0.05, "ln": 0.2}
STEPS = 9


def grads_np(step: int, names: tuple[str, ...] = ("b", "w1", "w2")) -> dict[str, np.ndarray]:
    """float32 gradients; a 40x spike in w2 at step 6, a zero b at step 4."""
    rng = np.random.default_rng(7 + step)
    out = {}
    for n in sorted(SHAPES):
        g = (rng.normal(size=SHAPES[n]) * SCALES[n]).astype(np.float32)
        if n == "w2" and step == 6:
            g *= 40
        if n == "b" and step == 4:
            g[:] = 0
        if n in names:
            out[n] = g
    return out


def core_run(trees: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    state, outs = None, []
    for t in trees:
        leaves = [t[k] for k in sorted(t)]
        state = state or adagc.init(leaves, CFG)
        out, state, _ = adagc.update(leaves, state, CFG)
        outs.append(out)
    return outs


def put(tree: Any, mesh: Any, specs: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x, s: jax.device_put(jnp.asarray(x), NamedSharding(mesh, s)),
        tree,
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )


def psums(fn: Any, *args: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Every psum-family collective in ``fn``'s jaxpr (nested jaxprs included), with its
    operand shape (``shard_map`` names it ``psum_invariant``)."""
    found: list[tuple[str, tuple[int, ...]]] = []

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name.startswith("psum"):
                found.extend(("psum", tuple(v.aval.shape)) for v in eqn.invars)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def close(actual: list[Any], expected: list[np.ndarray], what: str) -> None:
    for name, a, e in zip(sorted(SHAPES), actual, expected):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-6, atol=1e-8, err_msg=f"{what} {name}")


@pytest.fixture(scope="module")
def mesh() -> Any:
    return jax.make_mesh((4,), ("x",))


SPECS = {"b": P("x"), "w1": P("x", None), "w2": P(None, "x")}


def test_named_sharding_under_jit_equals_unsharded(mesh) -> None:
    trees = [grads_np(s) for s in range(STEPS)]
    tx = adagc_tx(**KW)
    state = tx.init(put(trees[0], mesh, SPECS))
    update = jax.jit(tx.update)
    for step, (t, exp) in enumerate(zip(trees, core_run(trees))):
        out, state = update(put(t, mesh, SPECS), state)
        close([out[k] for k in sorted(out)], exp, f"step {step}")
        for k, spec in SPECS.items():  # clipping keeps the layout
            assert out[k].sharding.is_equivalent_to(NamedSharding(mesh, spec), out[k].ndim)
    assert int(state.step) == STEPS


def _many_small(step: int) -> list[np.ndarray]:
    """20 leaves of one small shape (stacked for their norms by the JAX backend), a spike in
    leaf 5 at step 3."""
    rng = np.random.default_rng(100 + step)
    leaves = [(rng.normal(size=(8,)) * 0.3).astype(np.float32) for _ in range(20)]
    if step == 3:
        leaves[5] *= 40
    return leaves


@pytest.mark.parametrize("explicit", [False, True], ids=["auto", "explicit"])
def test_stacked_small_leaves_of_two_shardings_equal_unsharded(explicit: bool) -> None:
    """Half the leaves sharded over x, half replicated: the backend stacks same-shape small
    leaves per sharding (in explicit-sharding mode a stack of mixed shardings is an error)."""
    from adagc.backends import jax as jax_backend

    axis_type = getattr(jax.sharding, "AxisType", None)
    if explicit and (axis_type is None or not hasattr(jax, "set_mesh")):
        pytest.skip("this JAX has no explicit-sharding mode")
    kw = {"axis_types": (axis_type.Explicit,)} if explicit else {}
    mesh = jax.make_mesh((4,), ("x",), **kw)
    specs = [P("x") if i % 2 else P() for i in range(20)]
    hosts = [_many_small(s) for s in range(6)]
    state_np = adagc.init(hosts[0], CFG)
    with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
        placed = [
            [jax.device_put(h, NamedSharding(mesh, sp)) for h, sp in zip(t, specs)] for t in hosts
        ]
        assert len(jax_backend._stacks(placed[0])) == 2  # one stack per sharding
        tx = adagc_tx(**KW)
        state = tx.init(placed[0])
        update = jax.jit(tx.update)
        clipped: list[int] = []
        for step, (t, host) in enumerate(zip(placed, hosts)):
            out, state = update(t, state)
            want, state_np, stats = adagc.update(host, state_np, CFG)
            clipped.append(int(stats.num_clipped))
            for i, (a, e) in enumerate(zip(out, want)):
                np.testing.assert_allclose(np.asarray(a), e, rtol=1e-6, err_msg=f"{step} {i}")
    assert int(state.step) == 6
    assert clipped[3] >= 1  # the spike, after the 3 warmup steps


def _shard_mapped(tx: Any, mesh: Any, specs: Any, state: Any, axis: Any = None) -> Any:
    sspecs = state_specs(state, axis)
    return jax.jit(
        jax.shard_map(tx.update, mesh=mesh, in_specs=(specs, sspecs), out_specs=(specs, sspecs))
    )


def test_shard_map_exact_equals_unsharded_with_one_psum(mesh) -> None:
    trees = [grads_np(s) for s in range(STEPS)]
    tx = adagc_tx(**KW, axis_name="x")
    state = tx.init(trees[0])
    state = put(state, mesh, state_specs(state))
    step_fn = _shard_mapped(tx, mesh, SPECS, state)
    g0 = put(trees[0], mesh, SPECS)
    assert psums(step_fn, g0, state) == [("psum", (3,))]  # one collective, [T] sums of squares
    for step, (t, exp) in enumerate(zip(trees, core_run(trees))):
        out, state = step_fn(put(t, mesh, SPECS), state)
        close([out[k] for k in sorted(out)], exp, f"step {step}")


def test_replicated_leaf_counts_once_with_param_specs(mesh) -> None:
    names = ("b", "ln", "w1", "w2")
    specs = {**SPECS, "ln": P()}  # a LayerNorm weight replicated on every device
    trees = [grads_np(s, names) for s in range(STEPS)]
    expected = core_run(trees)
    tx = adagc_tx(**KW, axis_name="x", param_specs=specs)
    state = tx.init(trees[0])
    state = put(state, mesh, state_specs(state))
    step_fn = _shard_mapped(tx, mesh, specs, state)
    assert psums(step_fn, put(trees[0], mesh, specs), state) == [("psum", (4,))]
    for step, (t, exp) in enumerate(zip(trees, expected)):
        out, state = step_fn(put(t, mesh, specs), state)
        close([out[k] for k in sorted(out)], exp, f"step {step}")
    # Without param_specs the replicated leaf is summed over 4 devices: a different result.
    naive = adagc_tx(**KW, axis_name="x")
    st = put(naive.init(trees[0]), mesh, state_specs(state))
    naive_fn = _shard_mapped(naive, mesh, specs, st)
    out, st = naive_fn(put(trees[0], mesh, specs), st)
    assert not np.allclose(np.asarray(st.norms), np.asarray(state.norms), rtol=1e-3)


def test_two_dimensional_mesh_fsdp_times_tensor_parallel() -> None:
    mesh2 = jax.make_mesh((2, 2), ("fsdp", "tp"))
    names = ("b", "ln", "w1", "w2")
    specs = {"w1": P("fsdp", "tp"), "w2": P(None, "tp"), "b": P("fsdp"), "ln": P()}
    trees = [grads_np(s, names) for s in range(STEPS)]
    tx = adagc_tx(**KW, axis_name=("fsdp", "tp"), param_specs=specs)
    state = tx.init(trees[0])
    state = put(state, mesh2, state_specs(state))
    step_fn = _shard_mapped(tx, mesh2, specs, state)
    assert psums(step_fn, put(trees[0], mesh2, specs), state) == [("psum", (4,))]
    for step, (t, exp) in enumerate(zip(trees, core_run(trees))):
        out, state = step_fn(put(t, mesh2, specs), state)
        close([out[k] for k in sorted(out)], exp, f"step {step}")


class _Totals:
    """The reference's stand-in for the one 2-element all-reduce of AdaGC-Shard: returns the
    sum over devices of their [G_local^2, bad] vectors, computed beforehand."""

    def __init__(self, totals: np.ndarray) -> None:
        self.totals = totals

    def sum_squares(self, sq: Any) -> Any:
        raise AssertionError("shard_mode='local' reduces no per-tensor sums")

    def sum(self, x: Any) -> np.ndarray:
        return self.totals.astype(x.dtype)


def local_reference(trees: list[dict[str, np.ndarray]], cfg: AdaGCConfig):
    """AdaGC-Shard on NumPy: every device runs the core on its own shards; only the warmup
    global norm and the non-finite flag are summed over devices."""
    axes = {"b": 0, "w1": 0, "w2": 1}
    states: list[Any] = [None] * 4
    outs = []
    for t in trees:
        shards = [[np.split(t[k], 4, axis=axes[k])[d] for k in sorted(t)] for d in range(4)]
        totals = np.zeros(2)
        for d in range(4):
            sq = NP.sum_squares(shards[d], "float32")
            totals += [float(np.sum(sq)), float(not np.all(np.isfinite(sq)))]
        step_out = []
        for d in range(4):
            states[d] = states[d] or adagc.init(shards[d], cfg)
            out, states[d], _ = adagc.update(shards[d], states[d], cfg, reducer=_Totals(totals))
            step_out.append(out)
        outs.append(
            [
                np.concatenate([step_out[d][i] for d in range(4)], axis=axes[k])
                for i, k in enumerate(sorted(t))
            ]
        )
    return outs, states


def test_shard_map_local_clips_each_shard_by_its_own_norm(mesh) -> None:
    cfg = CFG.replace(shard_mode="local")
    trees = [grads_np(s) for s in range(STEPS)]
    tx = adagc_tx(config=cfg, axis_name="x")
    abstract = jax.eval_shape(tx.init, trees[0])
    sspecs = state_specs(abstract, "x")  # each device keeps its own gamma
    init = jax.jit(jax.shard_map(tx.init, mesh=mesh, in_specs=(SPECS,), out_specs=sspecs))
    state = init(put(trees[0], mesh, SPECS))
    assert state.gamma.shape == (4 * 3,)
    step_fn = _shard_mapped(tx, mesh, SPECS, state, "x")
    # No collective of the [T] partial sums: only the 2-element [G^2, non-finite] sum.
    assert psums(step_fn, put(trees[0], mesh, SPECS), state) == [("psum", (2,))]
    expected, ref_states = local_reference(trees, cfg)
    for step, (t, exp) in enumerate(zip(trees, expected)):
        out, state = step_fn(put(t, mesh, SPECS), state)
        close([out[k] for k in sorted(out)], exp, f"step {step}")
    gammas = np.asarray(state.gamma).reshape(4, 3)
    for d in range(4):
        np.testing.assert_allclose(gammas[d], ref_states[d].gamma, rtol=1e-6)
    assert len({tuple(g) for g in gammas.round(6)}) == 4  # devices really differ
    # Differs from the exact mode, which clips by full-tensor norms.
    exact = core_run(trees)
    assert not all(np.allclose(a, b) for a, b in zip(expected[-1], exact[-1]))


def test_data_parallel_after_pmean_needs_no_collective_of_its_own(mesh) -> None:
    trees = [grads_np(s) for s in range(STEPS)]
    tx = adagc_tx(**KW)  # whole, replicated gradients: no axis_name

    def step(per_device: dict, state: Any) -> Any:
        mean = jax.tree_util.tree_map(lambda g: jax.lax.pmean(g[0], "x"), per_device)
        return tx.update(mean, state)

    state = put(tx.init(trees[0]), mesh, state_specs(tx.init(trees[0])))
    dp = {k: P("x") for k in SPECS}  # a leading axis: one gradient per device
    rep = {k: P() for k in SPECS}
    fn = jax.jit(
        jax.shard_map(
            step, mesh=mesh, in_specs=(dp, state_specs(state)), out_specs=(rep, state_specs(state))
        )
    )
    rng = np.random.default_rng(0)
    means = []
    for step_i, t in enumerate(trees):
        # Four per-device gradients whose mean is the step's gradient tree.
        noise = {k: rng.normal(size=(4, *v.shape)).astype(np.float32) for k, v in t.items()}
        per = {k: t[k][None] + noise[k] - noise[k].mean(0, keepdims=True) for k in t}
        means.append({k: per[k].mean(0) for k in per})
        batch = put(per, mesh, dp)
        if step_i == 0:
            assert [s for _, s in psums(fn, batch, state)] == [SHAPES[k] for k in sorted(t)]
        out, state = fn(batch, state)
        close([out[k] for k in sorted(out)], core_run(means)[-1], f"step {step_i}")
