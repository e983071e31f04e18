"""``ClipGradByAdaGC`` as a Paddle ``grad_clip=``: parity with ``ClipGradByGlobalNorm`` in
warmup, need_clip, absent gradients, non-finite steps, GradScaler, parameter groups, ties,
checkpoints (Paddle idiom and adagc/1) and bad input."""

from __future__ import annotations

import pathlib
import re
import sysconfig
import warnings

import numpy as np
import paddle
import pytest
from paddle.utils import unique_name

import adagc
from adagc import CheckpointMismatchError, NonFiniteGradientError
from adagc.adapters.paddle import ClipGradByAdaGC

TEXT = np.frombuffer(
    pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_bytes(), dtype=np.uint8
).astype(np.int64)


class ByteModel(paddle.nn.Layer):
    """A byte-level next-character model; ``unused`` never gets a gradient and ``head``'s
    bias is excluded from clipping with ``need_clip=False``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = paddle.nn.Embedding(256, 16)
        self.hidden = paddle.nn.Linear(16, 32)
        self.head = paddle.nn.Linear(32, 256, bias_attr=paddle.ParamAttr(need_clip=False))
        self.unused = paddle.nn.Linear(4, 4)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.head(paddle.nn.functional.gelu(self.hidden(self.embed(x))))


def make_model(seed: int = 0) -> ByteModel:
    paddle.seed(seed)
    with unique_name.guard():  # the same param.name in every model built here
        return ByteModel()


def batch(step: int, size: int = 64) -> tuple[paddle.Tensor, paddle.Tensor]:
    idx = np.random.default_rng(step).integers(0, len(TEXT) - 1, size)
    return paddle.to_tensor(TEXT[idx]), paddle.to_tensor(TEXT[idx + 1])


def train_step(model: ByteModel, opt: paddle.optimizer.Optimizer, step: int, scale=1.0) -> None:
    x, y = batch(step)
    loss = paddle.nn.functional.cross_entropy(model(x), y) * scale
    loss.backward()
    opt.step()
    opt.clear_grad()


def params_of(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return {n: p.numpy().astype(np.float64) for n, p in model.named_parameters()}


def host_state(clip: ClipGradByAdaGC) -> list[tuple[int, np.ndarray, np.ndarray]]:
    return [
        (int(g.state.step.numpy()), g.state.gamma.numpy().copy(), g.state.seen.numpy().copy())
        for g in clip._groups
        if g.state is not None
    ]


def assert_same_state(a, b) -> None:
    assert len(a) == len(b)
    for (sa, ga, na), (sb, gb, nb) in zip(a, b, strict=True):
        assert sa == sb
        np.testing.assert_array_equal(ga, gb)
        np.testing.assert_array_equal(na, nb)


# -- parity and the gradient bookkeeping ---------------------------------------------------


@pytest.mark.parametrize("lambda_abs", [0.05, 50.0])
def test_warmup_equals_clip_grad_by_global_norm(lambda_abs: float) -> None:
    """With every step in warmup, AdaGC is paddle.nn.ClipGradByGlobalNorm(lambda_abs): same
    AdamW trajectory (the only difference is eps=1e-6 in h = lambda_abs / (G + eps))."""
    ref, ours = make_model(), make_model()
    clip = ClipGradByAdaGC(warmup_steps=1000, lambda_abs=lambda_abs)
    opt_ref = paddle.optimizer.AdamW(
        1e-2, parameters=ref.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(lambda_abs)
    )
    opt_ours = paddle.optimizer.AdamW(1e-2, parameters=ours.parameters(), grad_clip=clip)
    clipped = 0
    for step in range(6):
        train_step(ref, opt_ref, step)
        train_step(ours, opt_ours, step)
        assert bool(clip.last_stats.warmup.numpy())
        clipped += int(clip.last_stats.num_clipped.numpy())
        for name, a in params_of(ref).items():
            np.testing.assert_allclose(params_of(ours)[name], a, rtol=2e-5, atol=1e-6, err_msg=name)
    assert (clipped > 0) == (lambda_abs < 1.0)  # the small threshold really clipped
    assert "head.bias" not in [n for n, _ in ours.named_parameters() if n in clip.last_names]


def test_need_clip_false_passes_through_and_stays_out_of_the_norm() -> None:
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=10, lambda_abs=0.01)
    pairs = []
    rng = np.random.default_rng(0)
    for p in [model.hidden.weight, model.head.bias]:
        pairs.append((p, paddle.to_tensor(rng.normal(size=p.shape).astype(np.float32))))
    before = pairs[1][1].numpy().copy()
    out = clip(pairs)
    assert out[1][1] is pairs[1][1]
    np.testing.assert_array_equal(out[1][1].numpy(), before)
    assert clip.last_names == [model.hidden.weight.name]
    g = np.linalg.norm(out[0][1].numpy())  # clipped to lambda_abs by its own norm alone
    np.testing.assert_allclose(g, 0.01, rtol=1e-4)


def test_parameter_without_gradient_is_absent_then_first_observed() -> None:
    """The unused layer brings no gradient (absent: h = 1, gamma unchanged); when it first
    brings one after warmup it is not clipped and gamma = its norm (spec §3)."""
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2)
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), grad_clip=clip)
    for step in range(3):
        train_step(model, opt, step)
    names = list(clip.last_names)
    assert model.unused.weight.name not in names
    # Now the unused layer gets a gradient, 1000x larger than anything seen.
    x, y = batch(3)
    loss = paddle.nn.functional.cross_entropy(model(x), y)
    loss = loss + 1e3 * model.unused(paddle.ones([2, 4])).sum()
    loss.backward()
    grad = model.unused.weight.grad.numpy().copy()
    opt.step()
    opt.clear_grad()
    stats, names = clip.last_stats, clip.last_names
    i = names.index(model.unused.weight.name)
    assert stats.coefficients.numpy()[i] == 1.0
    ((step, gamma, seen),) = host_state(clip)
    assert step == 4 and seen[i]
    np.testing.assert_allclose(gamma[i], np.linalg.norm(grad), rtol=1e-5)


def test_tied_parameter_listed_twice_is_clipped_once() -> None:
    p = paddle.create_parameter([3], "float32")
    g = paddle.to_tensor([3.0, 0.0, 4.0])
    clip = ClipGradByAdaGC(warmup_steps=5, lambda_abs=1.0)
    out = clip([(p, g), (p, g)])
    assert out[0][1] is out[1][1]
    np.testing.assert_allclose(out[0][1].numpy(), [0.6, 0.0, 0.8], rtol=1e-5)  # G = 5, not 5*sqrt2
    assert clip.last_names == [p.name]


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_gradient_dtypes(dtype: str) -> None:
    init = paddle.nn.initializer.Constant(1.0)
    ps = [paddle.create_parameter(s, dtype, default_initializer=init) for s in ([4], [2, 2])]
    clip = ClipGradByAdaGC(warmup_steps=1, lambda_abs=0.1)
    for _ in range(3):
        pairs = [(p, paddle.ones(p.shape, dtype=dtype)) for p in ps]
        out = clip(pairs)
        assert all(g.dtype == getattr(paddle, dtype) for _, g in out)
    gamma = clip._groups[0].state.gamma
    assert gamma.dtype == (paddle.float64 if dtype == "float64" else paddle.float32)


def test_param_groups_keep_one_state_each() -> None:
    """Paddle calls grad_clip once per parameter group; each group's k advances once a step."""
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2)
    groups = [
        {"params": model.embed.parameters() + model.hidden.parameters()},
        {"params": model.head.parameters(), "learning_rate": 0.5},
    ]
    opt = paddle.optimizer.AdamW(1e-2, parameters=groups, grad_clip=clip)
    for step in range(4):
        train_step(model, opt, step)
    states = host_state(clip)
    assert [s[0] for s in states] == [4, 4]
    assert len(states[0][1]) == 3 and len(states[1][1]) == 1  # head.bias: need_clip=False


def test_global_granularity() -> None:
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2, granularity="global")
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters(), grad_clip=clip)
    for step in range(4):
        train_step(model, opt, step)
    ((step, gamma, seen),) = host_state(clip)
    assert step == 4 and gamma.shape == (1,) and seen.all()
    c = clip.last_stats.coefficients.numpy()
    assert np.all(c == c[0])  # one coefficient for every tensor


# -- non-finite steps and loss scaling -------------------------------------------------------


def _inf_step(model: ByteModel, opt) -> None:
    x, y = batch(99)
    loss = paddle.nn.functional.cross_entropy(model(x), y) * float("inf")
    loss.backward()
    opt.step()
    opt.clear_grad()


@pytest.mark.parametrize("policy", ["propagate", "zero", "raise"])
def test_nonfinite_step_leaves_state_unchanged(policy: str) -> None:
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=1, nonfinite=policy)
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters(), grad_clip=clip)
    for step in range(3):
        train_step(model, opt, step)
    before, weights = host_state(clip), params_of(model)
    if policy == "raise":
        with pytest.raises(NonFiniteGradientError) as info:
            _inf_step(model, opt)
        assert model.hidden.weight.name in info.value.tensors
        for k, v in weights.items():
            np.testing.assert_array_equal(params_of(model)[k], v)
        opt.clear_grad()
    else:
        _inf_step(model, opt)
        assert bool(clip.last_stats.nonfinite.numpy())
    assert_same_state(host_state(clip), before)
    if policy == "propagate":  # Inf/NaN left for a GradScaler to skip; plain SGD applies it
        assert not np.isfinite(params_of(model)["hidden.weight"]).all()
        return
    if policy == "zero":  # zeroed gradients: SGD left every clipped parameter where it was
        for name in ("hidden.weight", "embed.weight"):
            np.testing.assert_array_equal(params_of(model)[name], weights[name])
    train_step(model, opt, 4)  # training goes on; k advances again
    assert host_state(clip)[0][0] == before[0][0] + 1


def _cpu_grad_scaler(**kw) -> paddle.amp.GradScaler:
    """A real ``paddle.amp.GradScaler`` on the CPU. Paddle switches the scaler off unless the
    tracer's place is a GPU/XPU; only that place check is bypassed here, so the scaler's own
    unscale / found-inf / skip / loss-scale logic runs as on a GPU."""
    import paddle.amp.grad_scaler as gs

    real = gs._dygraph_tracer

    class _Place:
        def is_gpu_place(self) -> bool:
            return True

    class _Tracer:
        _expected_place = _Place()

    gs._dygraph_tracer = lambda: _Tracer()
    try:
        return paddle.amp.GradScaler(**kw)
    finally:
        gs._dygraph_tracer = real


def test_grad_scaler_unscales_before_clipping_and_skips_inf_steps() -> None:
    """GradScaler.step(AdamW) unscales, then calls AdamW.step() even on an overflow (AdamW
    skips its update through found_inf): the clipper sees unscaled gradients on finite steps
    and, on the overflow, leaves its state untouched while AdamW skips."""
    plain, scaled = make_model(), make_model()
    clip_plain, clip_scaled = ClipGradByAdaGC(warmup_steps=2), ClipGradByAdaGC(warmup_steps=2)
    opt_plain = paddle.optimizer.AdamW(1e-2, parameters=plain.parameters(), grad_clip=clip_plain)
    opt_scaled = paddle.optimizer.AdamW(1e-2, parameters=scaled.parameters(), grad_clip=clip_scaled)
    # decr_every_n_nan_or_inf=2: Paddle 3.3.1's message on the first decrease calls float() on
    # a 1-element tensor, which NumPy >= 2.4 rejects.
    scaler = _cpu_grad_scaler(init_loss_scaling=2.0**10, decr_every_n_nan_or_inf=2)
    assert scaler.is_enable()
    for step in range(5):
        x, y = batch(step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "amp_guard ... makes no effect" on the CPU
            amp = paddle.amp.auto_cast(dtype="float16")
            amp.__enter__()
            loss = paddle.nn.functional.cross_entropy(scaled(x), y)
            big = scaler.scale(loss * (float("inf") if step == 3 else 1.0))
            amp.__exit__(None, None, None)
        big.backward()
        before = host_state(clip_scaled)
        weights = params_of(scaled)
        scaler.step(opt_scaled)
        scaler.update()
        opt_scaled.clear_grad()
        if step == 3:  # overflow: AdamW skipped, AdaGC state unchanged
            assert bool(scaler._cache_found_inf)
            assert_same_state(host_state(clip_scaled), before)
            for k, v in weights.items():
                np.testing.assert_array_equal(params_of(scaled)[k], v)
            continue
        train_step(plain, opt_plain, step)
        np.testing.assert_allclose(
            clip_scaled.last_stats.norms.numpy(), clip_plain.last_stats.norms.numpy(), rtol=1e-4
        )
        for k, v in params_of(plain).items():
            np.testing.assert_allclose(params_of(scaled)[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    assert host_state(clip_scaled)[0][0] == 4


# -- checkpoints ---------------------------------------------------------------------------


def _trained(
    steps: int = 4, fixed: bool = False, **kw
) -> tuple[ByteModel, paddle.optimizer.SGD, ClipGradByAdaGC]:
    """A model trained a few steps; ``fixed``: the clipper was given ``parameters=`` (its
    checkpoint then also lists the never-used layer)."""
    model = make_model()
    if fixed:
        kw["parameters"] = model.parameters()
    clip = ClipGradByAdaGC(warmup_steps=2, **kw)
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters(), grad_clip=clip)
    for step in range(steps):
        train_step(model, opt, step)
    return model, opt, clip


def test_state_dict_round_trip_through_paddle_save(tmp_path) -> None:
    model, opt, clip = _trained()
    paddle.save(model.state_dict(), str(tmp_path / "model.pdparams"))
    paddle.save(clip.state_dict(), str(tmp_path / "clip.pdparams"))
    sd = clip.state_dict()
    assert set(sd) == {"@adagc", *clip.last_names}  # keyed by param.name
    # Resume in fresh objects: the checkpoint waits for the parameters (no parameters= here).
    model2 = make_model(seed=1)
    model2.set_state_dict(paddle.load(str(tmp_path / "model.pdparams")))
    clip2 = ClipGradByAdaGC(warmup_steps=2)
    opt2 = paddle.optimizer.SGD(0.1, parameters=model2.parameters(), grad_clip=clip2)
    clip2.set_state_dict(paddle.load(str(tmp_path / "clip.pdparams")))
    for step in range(4, 7):
        train_step(model, opt, step)
        train_step(model2, opt2, step)
    assert_same_state(host_state(clip2), host_state(clip))
    for k, v in params_of(model).items():
        np.testing.assert_array_equal(params_of(model2)[k], v)


def test_checkpoint_of_another_model_raises_and_loads_nothing() -> None:
    _, _, clip = _trained()
    before = host_state(clip)
    other = clip.state_dict()
    other["renamed.w_0"] = other.pop(clip.last_names[0])
    with pytest.raises(CheckpointMismatchError, match=r"renamed\.w_0") as info:
        clip.set_state_dict(other)
    assert info.value.missing == [clip.last_names[0]]
    assert info.value.unexpected == ["renamed.w_0"]
    assert_same_state(host_state(clip), before)
    ckpt = clip.to_portable()
    ckpt["gamma"]["extra"] = 1.0
    ckpt["seen"]["extra"] = True
    with pytest.raises(CheckpointMismatchError, match="extra"):
        clip.from_portable(ckpt)
    assert_same_state(host_state(clip), before)


def test_pending_checkpoint_mismatch_raises_at_the_first_step_untouched() -> None:
    _, _, trained = _trained()
    sd = trained.state_dict()
    del sd[trained.last_names[1]]
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2)
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), grad_clip=clip)
    clip.set_state_dict(sd)  # parameters unknown yet: checked at the first step
    x, y = batch(0)
    paddle.nn.functional.cross_entropy(model(x), y).backward()
    grad = model.hidden.weight.grad.numpy().copy()
    weights = params_of(model)
    with pytest.raises(CheckpointMismatchError, match=re.escape(trained.last_names[1])):
        opt.step()
    np.testing.assert_array_equal(model.hidden.weight.grad.numpy(), grad)
    for k, v in weights.items():
        np.testing.assert_array_equal(params_of(model)[k], v)


def test_parameters_given_checks_the_checkpoint_at_load() -> None:
    _, _, lazy = _trained()
    model = make_model()
    strict = ClipGradByAdaGC(warmup_steps=2, parameters=model.parameters())
    with pytest.raises(CheckpointMismatchError, match=re.escape(model.unused.weight.name)):
        strict.set_state_dict(lazy.state_dict())  # lazy never registered the unused layer
    _, _, trained = _trained(fixed=True)
    sd = trained.state_dict()
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2, parameters=model.parameters())
    clip.set_state_dict(sd)  # complete: loads now
    assert_same_state(host_state(clip), host_state(trained))
    sd.pop(trained.last_names[0])
    fresh = ClipGradByAdaGC(warmup_steps=2, parameters=model.parameters())
    with pytest.raises(CheckpointMismatchError, match=re.escape(trained.last_names[0])):
        fresh.set_state_dict(sd)
    assert host_state(fresh) == []


def test_portable_round_trip_with_structured_names() -> None:
    model, _, clip = _trained(fixed=True)
    names = {p.name: n for n, p in model.named_parameters()}
    ckpt = clip.to_portable(names)
    assert ckpt["format"] == "adagc/1" and ckpt["step"] == 4
    assert "hidden.weight" in ckpt["gamma"] and "head.bias" not in ckpt["gamma"]
    assert not ckpt["seen"]["unused.weight"]  # registered up front, never observed
    fresh = ClipGradByAdaGC(warmup_steps=2, parameters=model.parameters())
    fresh.from_portable(ckpt, names)
    assert_same_state(host_state(fresh), host_state(clip))
    # Before the first step, without parameters=: kept, then applied by structured name.
    pending = ClipGradByAdaGC(warmup_steps=2)
    pending.from_portable(ckpt, names)
    grads = [(p, paddle.zeros(p.shape)) for p in model.parameters() if p.name in names]
    pending(grads)  # zero gradients: not observed, so the loaded state only gains a step
    ((step, gamma, seen),) = host_state(pending)
    ((ref_step, ref_gamma, ref_seen),) = host_state(clip)
    assert step == ref_step + 1
    ref = {n: (g, s) for n, g, s in zip(clip.last_names, ref_gamma, ref_seen, strict=True)}
    for n, g, s in zip(pending.last_names, gamma, seen, strict=True):
        assert (g, s) == ref[n], n
    # A portable checkpoint also goes through set_state_dict.
    again = ClipGradByAdaGC(warmup_steps=2, parameters=model.parameters())
    again.set_state_dict(clip.to_portable())
    assert_same_state(host_state(again), host_state(clip))


def test_granularity_mismatch_is_rejected() -> None:
    _, _, clip = _trained()
    other = ClipGradByAdaGC(warmup_steps=2, granularity="global")
    with pytest.raises(CheckpointMismatchError, match="granularity"):
        other.set_state_dict(clip.state_dict())
    with pytest.raises(CheckpointMismatchError, match="granularity"):
        other.from_portable(clip.to_portable())


def test_global_granularity_checkpoints() -> None:
    model, _, clip = _trained(fixed=True, granularity="global")
    fresh = ClipGradByAdaGC(warmup_steps=2, granularity="global", parameters=model.parameters())
    fresh.set_state_dict(clip.state_dict())
    assert_same_state(host_state(fresh), host_state(clip))
    ckpt = clip.to_portable()
    assert set(ckpt["gamma"]) == {"__global__"}
    port = ClipGradByAdaGC(warmup_steps=2, granularity="global", parameters=model.parameters())
    port.from_portable(ckpt)
    assert_same_state(host_state(port), host_state(clip))


def test_bad_checkpoints() -> None:
    clip = ClipGradByAdaGC()
    with pytest.raises(TypeError, match="dict"):
        clip.set_state_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(CheckpointMismatchError, match="@adagc"):
        clip.set_state_dict({"linear_0.w_0": {"gamma": 1.0}})
    with pytest.raises(CheckpointMismatchError, match="gamma/seen/step"):
        clip.set_state_dict({"@adagc": {"format": "adagc-paddle/1"}, "w": {"gamma": 1.0}})
    with pytest.raises(CheckpointMismatchError, match="step"):
        clip.from_portable({"format": "adagc/1", "config": {}, "step": -1, "gamma": {}, "seen": {}})
    with pytest.raises(ValueError, match="nothing has been clipped"):
        clip.to_portable()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lambda_rel": 0.0}, "lambda_rel"),
        ({"beta": 1.0}, "beta"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"lambda_abs": -2.0}, "lambda_abs"),
        ({"eps": 0.0}, "eps"),
        ({"granularity": "layer"}, "granularity"),
        ({"nonfinite": "skip"}, "nonfinite"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ClipGradByAdaGC(**kwargs)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="fast_path"):
        ClipGradByAdaGC(fast_path="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Paddle parameters"):
        ClipGradByAdaGC(parameters=[1.0, 2.0])
    with pytest.raises(TypeError, match="groups"):
        ClipGradByAdaGC(parameters=[{"lr": 1.0}])
    with pytest.raises(TypeError, match="shard_groups"):
        ClipGradByAdaGC(shard_groups=3)  # type: ignore[arg-type]


def test_fast_path_true_on_cpu_raises_before_touching_gradients() -> None:
    p = paddle.create_parameter([3], "float32")
    g = paddle.to_tensor([30.0, 0.0, 40.0])
    clip = ClipGradByAdaGC(fast_path=True)
    with pytest.raises(ValueError, match="fast_path=True"):
        clip([(p, g)])
    np.testing.assert_array_equal(g.numpy(), [30.0, 0.0, 40.0])
    assert clip._groups[0].state is None
    out = ClipGradByAdaGC(fast_path=None, warmup_steps=1)([(p, g)])  # None: generic on CPU
    np.testing.assert_allclose(np.linalg.norm(out[0][1].numpy()), 1.0, rtol=1e-5)


def test_parameter_not_given_to_the_clipper_is_rejected() -> None:
    model = make_model()
    clip = ClipGradByAdaGC(parameters=model.hidden.parameters())
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), grad_clip=clip)
    x, y = batch(0)
    paddle.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="not in the parameters="):
        opt.step()


def test_sparse_gradients_are_rejected() -> None:
    emb = paddle.nn.Embedding(10, 3, sparse=True)
    opt = paddle.optimizer.SGD(0.1, parameters=emb.parameters(), grad_clip=ClipGradByAdaGC())
    emb(paddle.to_tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse=False"):
        opt.step()


def test_static_graph_is_rejected() -> None:
    with pytest.raises(NotImplementedError, match="dynamic-graph"):
        ClipGradByAdaGC()._static_clip([])


def test_is_a_paddle_grad_clip() -> None:
    clip = ClipGradByAdaGC(lambda_rel=1.05)
    assert isinstance(clip, paddle.nn.clip.ClipGradBase)
    assert "lambda_rel=1.05" in str(clip)
    assert clip.config == adagc.AdaGCConfig(lambda_rel=1.05)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("gamma", paddle.to_tensor(-1.0), "finite, >= 0"),
        ("gamma", float("inf"), "finite"),
        ("gamma", "0.5", "must be a number"),
        ("gamma", True, "must be a number"),
        ("seen", "false", "True or False"),
        ("seen", paddle.to_tensor(1.0), "True or False"),
        ("step", paddle.to_tensor(-7), "outside"),
        ("step", 2.9, "non-negative integer"),
    ],
)
def test_checkpoint_values_are_validated_and_nothing_loads(field, value, match) -> None:
    _, _, clip = _trained(fixed=True)
    before = host_state(clip)
    sd = clip.state_dict()
    sd[clip.last_names[0]][field] = value
    with pytest.raises(CheckpointMismatchError, match=match):
        clip.set_state_dict(sd)
    assert_same_state(host_state(clip), before)
    ckpt = clip.to_portable()
    if field == "step":
        ckpt["step"] = value
    else:
        ckpt[field][clip.last_names[0]] = value
    with pytest.raises(CheckpointMismatchError, match=match):
        clip.from_portable(ckpt)
    assert_same_state(host_state(clip), before)
    pending = ClipGradByAdaGC(warmup_steps=2)  # no parameters yet: still checked at load
    with pytest.raises(CheckpointMismatchError, match=match):
        pending.set_state_dict(sd)


def test_the_state_rides_in_the_optimizer_checkpoint(tmp_path) -> None:
    """paddle.save(opt.state_dict()) carries AdaGC; loading it before the first step (the
    usual resume) resumes bit-identically; once bound, the optimizer's set_state_dict loads
    it too; a state without it warns. (Each run in its own unique_name scope, as a fresh
    process would be: Paddle matches optimizer accumulators by generated names.)"""

    def make() -> tuple[ByteModel, paddle.optimizer.AdamW, ClipGradByAdaGC]:
        model = make_model()
        clip = ClipGradByAdaGC(warmup_steps=2)
        opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), grad_clip=clip)
        return model, opt, clip

    with unique_name.guard():
        ref_model, ref_opt, ref_clip = make()
        for step in range(6):
            train_step(ref_model, ref_opt, step)

    with unique_name.guard():
        model, opt, _ = make()
        for step in range(3):
            train_step(model, opt, step)
        assert "adagc" in opt.state_dict()
        paddle.save(model.state_dict(), str(tmp_path / "m.pdparams"))
        paddle.save(opt.state_dict(), str(tmp_path / "o.pdopt"))

    with unique_name.guard():
        model2, opt2, clip2 = make()  # the usual resume: loaded before the first step
        model2.set_state_dict(paddle.load(str(tmp_path / "m.pdparams")))
        opt2.set_state_dict(paddle.load(str(tmp_path / "o.pdopt")))
        for step in range(3, 6):
            train_step(model2, opt2, step)
        assert_same_state(host_state(clip2), host_state(ref_clip))
        for k, v in params_of(ref_model).items():
            np.testing.assert_array_equal(params_of(model2)[k], v, err_msg=k)
        # once bound, the optimizer's own set_state_dict loads the AdaGC state too
        saved, before = opt2.state_dict(), host_state(clip2)
        train_step(model2, opt2, 6)
        opt2.set_state_dict(saved)
        assert_same_state(host_state(clip2), before)

    with unique_name.guard():
        model3, opt3, _ = make()
        plain = {k: v for k, v in paddle.load(str(tmp_path / "o.pdopt")).items() if k != "adagc"}
        opt3.set_state_dict(plain)
        with pytest.warns(UserWarning, match="no AdaGC state"):
            train_step(model3, opt3, 3)
        with pytest.warns(UserWarning, match="no AdaGC state"):
            opt3.set_state_dict(plain)


def test_flex_checkpoint_conversion_sees_only_the_optimizer_entries() -> None:
    """Paddle's flex checkpoints (``opt.sharded_state_dict``, PaddleFormers' default) map every
    ``state_dict()`` key to a parameter and raise on any other: a bound clip keeps its entry
    out of that conversion (and in ``state_dict()``)."""
    from paddle.distributed.flex_checkpoint.dcp.sharded_weight import ShardedWeight

    with unique_name.guard():
        model = make_model()
        clip = ClipGradByAdaGC(warmup_steps=2)
        opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), grad_clip=clip)
        train_step(model, opt, 0)
        assert "adagc" in opt.state_dict()
        weights = {
            k: ShardedWeight(k, v, tuple(v.shape), tuple(v.shape), (0,) * v.ndim)
            for k, v in model.state_dict().items()
        }
        sharded = opt.sharded_state_dict(weights)
        assert sharded and not any("adagc" in k for k in sharded)
        assert "adagc" in opt.state_dict()  # restored after the conversion


@pytest.mark.parametrize("route", ["propagate", "zero"])
def test_an_overflow_in_bf16(route: str) -> None:
    """bf16 training usually runs without a GradScaler, and then nothing skips a step whose
    gradients overflowed: with ``nonfinite="propagate"`` AdamW applies the Inf/NaN and the
    parameters are lost. ``nonfinite="zero"`` zeroes the gradients AdaGC clips (not those of
    ``need_clip=False`` parameters, which it never touches). (A ``GradScaler`` with scale 1,
    which would skip the whole step, is disabled by Paddle on the CPU: untested here.) The
    AdaGC state never changes on such a step."""
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2, nonfinite="zero" if route == "zero" else "propagate")
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters(), grad_clip=clip)

    def step(k: int, scale: float = 1.0) -> None:
        x, y = batch(k)
        with paddle.amp.auto_cast(dtype="bfloat16", level="O1"):
            loss = paddle.nn.functional.cross_entropy(model(x), y) * scale
        loss.backward()
        opt.step()
        opt.clear_grad()

    for k in range(3):
        step(k)
    before = host_state(clip)
    step(3, scale=1e39)  # the loss overflows float32: Inf/NaN gradients everywhere
    assert_same_state(host_state(clip), before)
    finite = {n: bool(np.isfinite(v).all()) for n, v in params_of(model).items()}
    clipped = ["embed.weight", "hidden.weight", "hidden.bias", "head.weight"]
    if route == "propagate":
        assert not any(finite[n] for n in clipped)  # the run is lost
    else:
        assert all(finite[n] for n in clipped)
        assert not finite["head.bias"]  # need_clip=False: AdaGC never touches it
        assert int(clip._groups[0].state.step.numpy()) == 3


def test_warmup_gamma_raw_is_paddles_own_warmup() -> None:
    clip = ClipGradByAdaGC(warmup_gamma="raw")
    assert clip.config.warmup_gamma == "raw" and "warmup_gamma='raw'" in str(clip)
    with pytest.raises(ValueError, match="warmup_gamma"):
        ClipGradByAdaGC(warmup_gamma="unclipped")
