"""Hypothesis over the torch adapter's checkpoint loaders: ``load_state_dict`` (its own
format and ``adagc/1``) and the optimizer hook. Every outcome is a valid state or a
``CheckpointMismatchError`` that changed nothing."""

from __future__ import annotations

import copy

import torch
from hypothesis import given
from hypothesis import strategies as st

from adagc.adapters.torch import OPTIMIZER_KEY, AdaGC

from ..fuzz import ANY_VALUE, check_loaded_or_rejected, edited_portable, fuzz


def _clipper() -> tuple[torch.nn.Module, AdaGC]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    c = AdaGC(m, warmup_steps=1)
    for k in range(3):
        for p in m.parameters():
            p.grad = torch.randn_like(p) * (k + 1)
        c.clip_()
    return m, c


MODEL, TRAINED = _clipper()
SD = TRAINED.state_dict()
PORTABLE = TRAINED.to_portable()


def _host(c: AdaGC):
    return lambda: (int(c.state.step), c.state.gamma.numpy(), c.state.seen.numpy())


TENSORISH = st.one_of(
    ANY_VALUE,
    st.lists(st.floats(allow_nan=True), min_size=4, max_size=4).map(torch.tensor),
    st.sampled_from([torch.tensor(-3), torch.tensor(2.5), torch.tensor(True), torch.zeros(4)]),
    st.integers(min_value=0, max_value=4).map(lambda n: torch.ones(n, dtype=torch.bool)),
)


@st.composite
def edited_state_dict(draw):
    sd = copy.deepcopy(SD)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.sampled_from(["step", "gamma", "seen", "names", "config", "format"]))
        action = draw(st.sampled_from(["replace", "replace", "drop", "element"]))
        if action == "drop":
            sd.pop(key, None)
        elif action == "element" and isinstance(sd.get(key), torch.Tensor) and sd[key].numel():
            i = (
                draw(st.integers(min_value=0, max_value=sd[key].numel() - 1))
                if sd[key].dim()
                else ...
            )

            v = draw(st.sampled_from([-1.0, float("nan"), float("inf"), 0.0, 2.0]))
            sd[key] = sd[key].clone()
            if sd[key].is_floating_point():
                sd[key][i] = v
        else:
            sd[key] = draw(TENSORISH)
    return sd


@fuzz(300)
@given(sd=edited_state_dict())
def test_fuzz_torch_load_state_dict(sd) -> None:
    c = AdaGC(MODEL, warmup_steps=1)
    check_loaded_or_rejected(lambda: c.load_state_dict(sd), _host(c))


@fuzz(200)
@given(ckpt=edited_portable(PORTABLE))
def test_fuzz_torch_from_portable(ckpt) -> None:
    c = AdaGC(MODEL, warmup_steps=1)
    check_loaded_or_rejected(lambda: c.from_portable(ckpt), _host(c))


@fuzz(100)
@given(sd=edited_state_dict())
def test_fuzz_the_optimizer_hook_loads_or_changes_nothing(sd) -> None:
    opt = torch.optim.SGD(MODEL.parameters(), lr=0.1)
    c = AdaGC(MODEL, warmup_steps=1)
    c.attach(opt)
    full = opt.state_dict()
    full["param_groups"][0][OPTIMIZER_KEY] = sd
    lr = opt.param_groups[0]["lr"]
    check_loaded_or_rejected(lambda: opt.load_state_dict(full), _host(c))
    assert opt.param_groups[0]["lr"] == lr
