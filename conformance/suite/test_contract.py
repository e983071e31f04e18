"""Contract checks beyond the goldens: warmup == global-norm clipping, precision, bad input
(each raising the documented error and mutating nothing), checkpoints."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig, CheckpointMismatchError, StateMismatchError
from adagc.conformance import Harness, assert_close, tolerance

from ._common import norm_dtype, random_grads

SHAPES = [(4, 3), (6,), (2, 2, 2)]


def _grads(seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return random_grads(rng, SHAPES, [scale, 2 * scale, 0.5 * scale])


def clip_grad_norm_formula(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """torch.nn.utils.clip_grad_norm_ in NumPy: total = ||(||g_i||)||_2,
    coef = min(max_norm / (total + 1e-6), 1), every g_i multiplied by coef."""
    total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    coef = min(max_norm / (total + 1e-6), 1.0)
    return [g * coef for g in grads]


@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_warmup_equals_global_norm_clipping(harness: Harness, dtype: str, scale: float) -> None:
    cfg = AdaGCConfig(warmup_steps=10, lambda_abs=1.0)
    state = None
    for k in range(4):
        grads_np = _grads(k, scale)
        grads = harness.grads(grads_np, dtype)
        state = harness.init(grads, cfg) if state is None else state
        clipped, state, stats = harness.update(grads, state, cfg)
        assert bool(harness.to_numpy(stats.warmup))
        for c, e in zip(clipped, clip_grad_norm_formula(grads_np, 1.0)):
            rtol = tolerance(dtype) * 10
            assert_close(harness, c, e, dtype, rtol=rtol, atol=rtol * float(np.max(np.abs(e))))


def test_all_absent_step_is_finite_and_advances(harness: Harness, dtype: str) -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads = harness.grads(_grads(), dtype)
    state = harness.init(grads, cfg)
    _, state, _ = harness.update(grads, state, cfg)
    before = harness.host_state(state)
    out, state, stats = harness.update([None, None, None], state, cfg)
    after = harness.host_state(state)
    assert out == [None, None, None]
    assert not bool(harness.to_numpy(stats.nonfinite))
    assert after[0] == before[0] + 1
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])


def test_state_dtype_follows_gradients(harness: Harness, dtype: str) -> None:
    state = harness.init(harness.grads(_grads(), dtype), AdaGCConfig())
    assert harness.backend.dtype_name(state.gamma) == norm_dtype(dtype)
    assert harness.backend.dtype_name(state.seen) == "bool"
    assert int(harness.to_numpy(state.step)) == 0


def test_mixed_precision_state_is_float32(harness: Harness) -> None:
    if not {"float32", "float64"} <= set(harness.dtypes):
        pytest.skip(f"{harness.id} does not run both float32 and float64")
    g = [harness.asarray(np.ones(3), "float64"), harness.asarray(np.ones(2), "float32")]
    state = harness.init(g, AdaGCConfig())
    assert harness.backend.dtype_name(state.gamma) == "float32"


def test_float32_sum_of_squares_overflow_is_nonfinite(harness: Harness) -> None:
    if "float32" not in harness.dtypes:
        pytest.skip(f"{harness.id} does not run float32")
    cfg = AdaGCConfig(warmup_steps=0)
    big = np.full(4, 1e20)  # finite in float32, but 1e40 overflows the float32 sum
    grads = harness.grads([big, np.ones(3)], "float32")
    state = harness.init(grads, cfg)
    _, new, stats = harness.update(grads, state, cfg)
    assert bool(harness.to_numpy(stats.nonfinite))
    assert harness.host_state(new)[0] == 0


def test_half_precision_keeps_dtype(harness: Harness) -> None:
    try:
        g = harness.asarray(np.linspace(-2, 2, 8), "float16")
    except (TypeError, ValueError, KeyError):
        pytest.skip(f"{harness.id} has no float16")
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=0.5)
    state = harness.init([g], cfg)
    assert harness.backend.dtype_name(state.gamma) == "float32"
    (out,), state, stats = harness.update([g], state, cfg)
    assert harness.backend.dtype_name(out) == "float16"
    assert harness.backend.dtype_name(stats.norms) == "float32"
    assert float(harness.to_numpy(stats.coefficients)[0]) < 1


# -- bad input ---------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"lambda_rel": 0.0}, "lambda_rel"),
    ({"lambda_rel": -1.0}, "lambda_rel"),
    ({"lambda_rel": float("nan")}, "lambda_rel"),
    ({"beta": 1.0}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": 2.5}, "warmup_steps"),
    ({"warmup_steps": True}, "warmup_steps"),
    ({"lambda_abs": 0.0}, "lambda_abs"),
    ({"lambda_abs": float("inf")}, "lambda_abs"),
    ({"eps": 0.0}, "eps"),
    ({"eps": "1e-6"}, "eps"),
    ({"granularity": "layer"}, "granularity"),
    ({"shard_mode": "fsdp"}, "shard_mode"),
    ({"nonfinite": "skip"}, "nonfinite"),
    ({"granularity": "global", "shard_mode": "local"}, "shard_mode"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AdaGCConfig(**kwargs)


def _snapshot(h: Harness, grads: list, state: adagc.AdaGCState):
    return [h.to_numpy(g) for g in grads], h.host_state(state)


def _assert_untouched(h: Harness, grads: list, state: adagc.AdaGCState, snap) -> None:
    before, st = snap
    for b, g in zip(before, grads):
        np.testing.assert_array_equal(b, h.to_numpy(g))
    now = h.host_state(state)
    assert now[0] == st[0]
    np.testing.assert_array_equal(now[1], st[1])
    np.testing.assert_array_equal(now[2], st[2])


@pytest.mark.parametrize("granularity", ["tensor", "global"])
def test_state_for_other_tensors_is_rejected(
    harness: Harness, dtype: str, granularity: str
) -> None:
    cfg = AdaGCConfig(granularity=granularity)
    grads = harness.grads(_grads(scale=50.0), dtype)
    other = harness.init(
        grads[:2] if granularity == "tensor" else grads, cfg.replace(granularity="tensor")
    )
    snap = _snapshot(harness, grads, other)
    inplace = harness.backend.supports_inplace
    with pytest.raises(StateMismatchError, match="gamma entries"):
        adagc.update(grads, other, cfg, backend=harness.backend, inplace=inplace)
    _assert_untouched(harness, grads, other, snap)


def test_wrong_containers_are_rejected(harness: Harness, dtype: str) -> None:
    grads = harness.grads(_grads(), dtype)
    state = harness.init(grads, AdaGCConfig())
    with pytest.raises(TypeError, match="list or tuple"):
        adagc.update({"w": grads[0]}, state)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list or tuple"):
        adagc.update(grads[0], state)
    with pytest.raises(TypeError, match="AdaGCState"):
        adagc.update(grads, {"step": 0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AdaGCConfig"):
        adagc.update(grads, state, {"lambda_rel": 1.04})  # type: ignore[arg-type]


def test_wrong_array_types_are_rejected(harness: Harness, dtype: str) -> None:
    grads = harness.grads(_grads(), dtype)
    state = harness.init(grads, AdaGCConfig())
    inplace = harness.backend.supports_inplace
    snap = _snapshot(harness, grads, state)
    with pytest.raises(TypeError, match="no registered backend"):
        adagc.update([*grads[:2], [1.0, 2.0]], state, inplace=inplace)
    foreign = np.ones(8) if harness.backend.name != "numpy" else None
    if foreign is not None:
        with pytest.raises(TypeError, match="several frameworks"):
            adagc.update([*grads[:2], foreign], state, inplace=inplace)
    _assert_untouched(harness, grads, state, snap)
    ints = harness.backend.asarray([1, 2, 3], "int", like=harness.like)
    with pytest.raises(TypeError, match="floating"):
        adagc.update([*grads[:2], ints], state, inplace=inplace)
    _assert_untouched(harness, grads, state, snap)


def test_all_none_needs_a_backend(harness: Harness) -> None:
    with pytest.raises(TypeError, match="every gradient is None"):
        adagc.init([None, None])
    state = adagc.init([None, None], backend=harness.backend)
    assert harness.backend.size(state.gamma) == 2


# -- checkpoints --------------------------------------------------------------------------


def test_portable_checkpoint_round_trip(harness: Harness, dtype: str) -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    names = ["a.weight", "b.bias", "c.weight"]
    grads = harness.grads(_grads(0), dtype)
    state = harness.init(grads, cfg)
    for k in range(3):
        grads = harness.grads(_grads(k), dtype)
        _, state, _ = harness.update(grads, state, cfg)
    ckpt = adagc.to_portable(state, cfg, names)
    assert ckpt["format"] == "adagc/1" and ckpt["step"] == 3
    assert set(ckpt["gamma"]) == set(names)
    fresh = harness.init(grads, cfg)
    loaded = adagc.from_portable(ckpt, fresh, cfg.replace(lambda_rel=1.1), names)
    assert_close(harness, loaded.gamma, harness.to_numpy(state.gamma), norm_dtype(dtype), rtol=0)
    assert harness.host_state(loaded)[0] == 3
    np.testing.assert_array_equal(harness.to_numpy(loaded.seen), harness.to_numpy(state.seen))
    with pytest.raises(CheckpointMismatchError, match=r"'c\.weight'"):
        adagc.from_portable(ckpt, fresh, cfg, ["a.weight", "b.bias", "z.weight"])
    with pytest.raises(CheckpointMismatchError, match="granularity"):
        adagc.from_portable(
            ckpt,
            harness.init(grads, cfg.replace(granularity="global")),
            cfg.replace(granularity="global"),
        )


def test_half_precision_coefficient_is_applied_in_float32(harness: Harness) -> None:
    """h_i multiplies in float32 and the product is rounded once: 2**20 float16 elements of
    60000 clipped to lambda_abs=1 have h ~ 1.6e-8, which float16 would flush to 0."""
    try:
        g = harness.asarray(np.full(2**20, 60000.0), "float16")
    except (TypeError, ValueError, KeyError):
        pytest.skip(f"{harness.id} has no float16")
    cfg = AdaGCConfig(warmup_steps=5, lambda_abs=1.0)
    (out,), _, _ = harness.update([g], harness.init([g], cfg), cfg)
    got = harness.to_numpy(out).astype(np.float64)
    assert math.isclose(float(np.sqrt(np.sum(got * got))), 1.0, rel_tol=2e-3)


BAD_VALUES = [
    ("gamma", -1.0, "finite, >= 0"),
    ("gamma", float("nan"), "finite"),
    ("gamma", float("inf"), "finite"),
    ("gamma", 1e300, "at most"),  # beyond float32: it would load as Inf
    ("gamma", 10**400, "finite"),
    ("gamma", "0.5", "must be a number"),
    ("gamma", True, "must be a number"),
    ("gamma", None, "must be a number"),
    ("seen", "false", "True or False"),
    ("seen", 1, "True or False"),
    ("seen", 0.0, "True or False"),
    ("step", -7, "outside"),
    ("step", 2.9, "non-negative integer"),
    ("step", 3.0, "non-negative integer"),
    ("step", True, "non-negative integer"),
    ("step", "3", "non-negative integer"),
    ("step", 2**70, "outside"),
]


@pytest.mark.parametrize(("field", "value", "match"), BAD_VALUES)
def test_checkpoint_values_are_validated(harness: Harness, field: str, value, match: str) -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads = harness.grads(_grads(0), "float32")
    state = harness.init(grads, cfg)
    _, state, _ = harness.update(grads, state, cfg)
    names = ["a.weight", "b.bias", "c.weight"]
    ckpt = adagc.to_portable(state, cfg, names)
    if field == "step":
        ckpt["step"] = value
    else:
        ckpt[field]["b.bias"] = value
    with pytest.raises(CheckpointMismatchError, match=match) as info:
        adagc.from_portable(ckpt, harness.init(grads, cfg), cfg, names)
    if field != "step":
        assert "'b.bias'" in str(info.value)


def test_checkpoint_numpy_scalars_are_accepted(harness: Harness) -> None:
    cfg = AdaGCConfig(warmup_steps=1)
    grads = harness.grads(_grads(0), "float32")
    names = ["a", "b", "c"]
    ckpt = {
        "format": "adagc/1",
        "config": cfg.to_dict(),
        "step": np.int64(4),
        "gamma": {n: np.float32(0.5) for n in names},
        "seen": {n: np.bool_(True) for n in names},
    }
    loaded = adagc.from_portable(ckpt, harness.init(grads, cfg), cfg, names)
    assert harness.host_state(loaded)[0] == 4
    np.testing.assert_array_equal(harness.to_numpy(loaded.gamma), [0.5, 0.5, 0.5])


# -- accuracy at scale ------------------------------------------------------------------------

SCALE_N = 130_000_000  # about a 32000 x 4096 embedding (Llama-2 7B)


@functools.cache
def _big_normal() -> np.ndarray:
    """Normal values, built fast: one 2**20-block of draws, each copy of it scaled by its own
    factor in [0.25, 4) (as a tensor's rows differ in scale)."""
    rng = np.random.default_rng(7)
    block = rng.standard_normal(1 << 20, dtype=np.float32)
    out = np.empty(SCALE_N, np.float32)
    for i, f in zip(range(0, SCALE_N, block.size), rng.uniform(0.25, 4.0, 200)):
        n = min(block.size, SCALE_N - i)
        np.multiply(block[:n], np.float32(f), out=out[i : i + n])
    return out


def float64_sum_squares(x: np.ndarray) -> float:
    """The exact-enough reference: float64 dots over 4M-element chunks."""
    total = 0.0
    for i in range(0, x.size, 1 << 22):
        c = x[i : i + (1 << 22)].astype(np.float64)
        total += float(c @ c)
    return total


@pytest.mark.parametrize("kind", ["float32", "bfloat16"])
def test_norm_of_a_large_tensor_is_accurate(harness: Harness, kind: str) -> None:
    """n_i of one 1.3e8-element tensor within 1e-6 (relative) of a float64 sum: decisions
    compare n_i with lambda_rel * gamma_i = 1.04 gamma_i, so a drifting sum moves them."""
    host = _big_normal()
    make = harness.backend.asarray  # from float32 directly: no 1 GB float64 staging copy
    if kind == "bfloat16":
        try:
            g = make(host, "bfloat16", like=harness.like)
        except (TypeError, ValueError, KeyError):
            pytest.skip(f"{harness.id} has no bfloat16")
        host = harness.to_numpy(g).astype(np.float32)  # the values the backend holds
    else:
        g = make(host, "float32", like=harness.like)
    cfg = AdaGCConfig(warmup_steps=1, lambda_abs=1e30)  # h = 1: nothing is scaled
    _, _, stats = harness.update([g], harness.init([g], cfg), cfg)
    got = float(harness.to_numpy(stats.norms)[0])
    want = math.sqrt(float64_sum_squares(host))
    assert abs(got / want - 1) <= 1e-6, f"norm {got!r} vs float64 {want!r}"
    del g, stats
