"""The PyTorch adapter: parameters in every form, in-place clipping, the optimizer hook,
checkpoints, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import adagc
from adagc import AdaGCConfig, CheckpointMismatchError
from adagc.adapters.torch import AdaGC

from .conftest import TinyLM


def _set_grads(model: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * scale


def test_accepts_parameters_named_parameters_and_groups() -> None:
    m = TinyLM()
    assert AdaGC(m.parameters()).names == [str(i) for i in range(7)]
    named = AdaGC(m.named_parameters())
    assert named.names[:2] == ["embed.weight", "hidden.weight"]
    groups = AdaGC([{"params": [m.embed.weight]}, {"params": list(m.out.parameters()), "lr": 1}])
    assert groups.names == ["group0.0", "group1.0", "group1.1"]


def test_tied_weights_are_clipped_once_under_the_first_name() -> None:
    m = TinyLM()
    params = [("a", m.embed.weight), ("b", m.out.weight), ("a_again", m.embed.weight)]
    clipper = AdaGC(params, warmup_steps=0)
    assert clipper.names == ["a", "b"]
    _set_grads(m, 0)
    clipper.clip_()
    assert clipper.state.gamma.shape == (2,)


def test_clip_matches_the_core_in_place() -> None:
    m = TinyLM()
    clipper = AdaGC(m.named_parameters(), warmup_steps=1)
    cfg = clipper.config
    ref_state = adagc.init([p.detach() for p in m.parameters()], cfg)
    for step in range(3):
        _set_grads(m, step, scale=1.0 + step)
        expected, ref_state, _ = adagc.update(
            [p.grad.clone() for p in m.parameters()], ref_state, cfg
        )
        stats = clipper.clip_()
        for p, e in zip(m.parameters(), expected):
            torch.testing.assert_close(p.grad, e, rtol=0, atol=0)
        assert isinstance(stats.coefficients, torch.Tensor)
    torch.testing.assert_close(clipper.state.gamma, ref_state.gamma, rtol=0, atol=0)


def test_params_without_grad_are_absent() -> None:
    m = TinyLM()
    m.norm.weight.requires_grad_(False)
    clipper = AdaGC(m.named_parameters(), warmup_steps=0)
    _set_grads(m, 0)
    m.norm.weight.grad = None
    m.out.bias.grad = None
    stats = clipper.clip_()
    i, j = clipper.names.index("norm.weight"), clipper.names.index("out.bias")
    assert not clipper.state.seen[i] and not clipper.state.seen[j]
    assert stats.coefficients[i] == 1 and stats.norms[i] == 0
    assert m.norm.weight.grad is None


def test_peer_parity_with_clip_grad_norm_during_warmup() -> None:
    """With warmup covering every step AdaGC is torch.nn.utils.clip_grad_norm_."""
    a, b = TinyLM(), TinyLM()
    clipper = AdaGC(a.parameters(), warmup_steps=100, lambda_abs=1.0)
    for step in range(5):
        _set_grads(a, step, scale=0.01 * 10**step)
        _set_grads(b, step, scale=0.01 * 10**step)
        clipper.clip_()
        torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm=1.0)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


def test_attach_clips_before_each_step_and_detaches() -> None:
    m = TinyLM()
    clipper = AdaGC(m.parameters(), warmup_steps=100, lambda_abs=1e-3)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    handle = clipper.attach(opt)
    _set_grads(m, 0)
    opt.step()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()]))
    assert total <= 1e-3 * (1 + 1e-5)
    assert int(clipper.state.step) == 1
    handle.remove()
    _set_grads(m, 1)
    opt.step()
    assert int(clipper.state.step) == 1
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        clipper.attach(object())  # type: ignore[arg-type]


def _trained_clipper(model: torch.nn.Module, steps: int = 3) -> AdaGC:
    clipper = AdaGC(model.named_parameters(), warmup_steps=1)
    for s in range(steps):
        _set_grads(model, s)
        clipper.clip_()
    return clipper


def test_state_dict_round_trip_through_torch_save() -> None:
    m = TinyLM()
    clipper = _trained_clipper(m)
    buf = io.BytesIO()
    torch.save(clipper.state_dict(), buf)
    buf.seek(0)
    other = AdaGC(m.named_parameters(), warmup_steps=1)
    other.load_state_dict(torch.load(buf))
    for a, b in zip(other.state, clipper.state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    _set_grads(m, 7)
    g = [p.grad.clone() for p in m.parameters()]
    s1 = clipper.clip_()
    for p, x in zip(m.parameters(), g):
        p.grad = x
    s2 = other.clip_()
    torch.testing.assert_close(s1.coefficients, s2.coefficients, rtol=0, atol=0)


def test_portable_checkpoint_moves_between_core_and_adapter() -> None:
    m = TinyLM()
    clipper = _trained_clipper(m)
    ck = clipper.to_portable()
    assert ck["format"] == "adagc/1" and "embed.weight" in ck["gamma"]
    fresh = AdaGC(m.named_parameters(), warmup_steps=1)
    fresh.load_state_dict(ck)  # load_state_dict also takes the portable format
    np.testing.assert_array_equal(fresh.state.gamma.numpy(), clipper.state.gamma.numpy())


def test_checkpoint_of_another_model_names_the_parameters_and_changes_nothing() -> None:
    m = TinyLM()
    clipper = _trained_clipper(m)
    other_model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    other = AdaGC(other_model.named_parameters())
    before = [t.clone() for t in other.state]
    with pytest.raises(CheckpointMismatchError, match="embed.weight"):
        other.load_state_dict(clipper.state_dict())
    with pytest.raises(CheckpointMismatchError, match="0.weight"):
        other.from_portable(clipper.to_portable())
    for a, b in zip(other.state, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(CheckpointMismatchError, match="format"):
        other.load_state_dict({"step": 0})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lambda_rel": 0}, "lambda_rel"),
        ({"beta": 1.0}, "beta"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"granularity": "layer"}, "granularity"),
        ({"fast_path": "yes"}, "fast_path"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        AdaGC(TinyLM().parameters(), **kwargs)


def test_bad_parameter_lists() -> None:
    with pytest.raises(ValueError, match="empty"):
        AdaGC([])
    with pytest.raises(TypeError, match="torch tensors"):
        AdaGC([np.ones(3)])
    with pytest.raises(TypeError, match="'params'"):
        AdaGC([{"lr": 1.0}])


def test_sparse_gradients_are_rejected_without_changes() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    clipper = AdaGC(emb.parameters(), warmup_steps=0)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.grad.to_dense().clone()
    with pytest.raises(TypeError, match="sparse"):
        clipper.clip_()
    torch.testing.assert_close(emb.weight.grad.to_dense(), before)
    assert int(clipper.state.step) == 0


def test_nonfinite_raise_names_the_parameter() -> None:
    m = TinyLM()
    clipper = AdaGC(m.named_parameters(), warmup_steps=0, nonfinite="raise")
    _set_grads(m, 0)
    m.hidden.bias.grad[0] = float("nan")
    with pytest.raises(adagc.NonFiniteGradientError, match="hidden.bias"):
        clipper.clip_()
    assert int(clipper.state.step) == 0


def test_float64_model_keeps_float64_state_and_half_grads_float32() -> None:
    assert AdaGC(TinyLM().double().parameters()).state.gamma.dtype == torch.float64
    clipper = AdaGC(TinyLM().bfloat16().parameters(), warmup_steps=0)
    assert clipper.state.gamma.dtype == torch.float32
    assert AdaGCConfig() == AdaGC(TinyLM().parameters()).config


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd["gamma"].__setitem__(1, -0.5), "gamma of 'hidden.weight'.*finite, >= 0"),
        (lambda sd: sd["gamma"].__setitem__(0, float("nan")), "finite"),
        (lambda sd: sd.__setitem__("step", torch.tensor(-7)), "outside"),
        (lambda sd: sd.__setitem__("step", torch.tensor(2.9)), "non-negative integer"),
        (lambda sd: sd.__setitem__("step", True), "non-negative integer"),
        (lambda sd: sd.__setitem__("seen", sd["seen"].float()), "True or False"),
        (lambda sd: sd.__setitem__("gamma", sd["gamma"][:2]), "vector of"),
        (lambda sd: sd.__setitem__("gamma", sd["gamma"][0]), "vector of"),
        (lambda sd: sd.pop("seen"), "no \\['seen'\\] entry"),
        (lambda sd: sd.__setitem__("names", "embed.weight"), "names"),
        (lambda sd: sd.__setitem__("config", "tensor"), "config"),
    ],
)
def test_state_dict_values_are_validated_and_nothing_changes(edit, match) -> None:
    m = TinyLM()
    clipper = _trained_clipper(m)
    sd = clipper.state_dict()
    edit(sd)
    other = AdaGC(m.named_parameters(), warmup_steps=1)
    before = [t.clone() for t in other.state]
    with pytest.raises(CheckpointMismatchError, match=match):
        other.load_state_dict(sd)
    for a, b in zip(other.state, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_loaded_state_shares_no_memory_with_the_checkpoint() -> None:
    m = TinyLM()
    clipper = _trained_clipper(m)
    sd = clipper.state_dict()
    other = AdaGC(m.named_parameters(), warmup_steps=1)
    other.load_state_dict(sd)
    kept = other.state.gamma.clone()
    sd["gamma"].fill_(-1.0)
    sd["step"].fill_(0)
    torch.testing.assert_close(other.state.gamma, kept, rtol=0, atol=0)
    assert int(other.state.step) == int(clipper.state.step)


def test_warmup_gamma_raw_reaches_the_core() -> None:
    """``AdaGC(..., warmup_gamma="raw")``: the same state as the core with that config, and a
    different one from the default when the warmup global norm exceeds lambda_abs."""
    import numpy as np

    import adagc

    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=s) * 3.0 for s in [(4, 3), (5,)]] for _ in range(4)]
    states = {}
    for mode in ("clipped", "raw"):
        params = [torch.nn.Parameter(torch.zeros(*g.shape, dtype=torch.float64)) for g in grads[0]]
        clip = AdaGC(params, warmup_steps=2, warmup_gamma=mode)
        cfg = adagc.AdaGCConfig(warmup_steps=2, warmup_gamma=mode)
        ref = adagc.init(grads[0], cfg)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = torch.tensor(g)
            clip.clip_()
            _, ref, _ = adagc.update([g.copy() for g in step], ref, cfg)
        np.testing.assert_allclose(clip.state.gamma.numpy(), ref.gamma, rtol=1e-12)
        states[mode] = clip.state.gamma.numpy()
    assert not np.allclose(states["clipped"], states["raw"])
