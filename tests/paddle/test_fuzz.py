"""Hypothesis over the Paddle clipper's checkpoint loaders (``set_state_dict`` and
``from_portable``): a valid state or a ``CheckpointMismatchError`` that changed nothing."""

from __future__ import annotations

import copy

import paddle
from hypothesis import given
from hypothesis import strategies as st

from adagc.adapters.paddle import ClipGradByAdaGC

from ..fuzz import ANY_VALUE, check_loaded_or_rejected, edited_portable, fuzz
from .test_adapter import make_model, train_step


def _trained() -> ClipGradByAdaGC:
    model = make_model()
    clip = ClipGradByAdaGC(warmup_steps=2, parameters=model.parameters())
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters(), grad_clip=clip)
    for step in range(3):
        train_step(model, opt, step)
    return clip


TRAINED = _trained()
SD = TRAINED.state_dict()
PORTABLE = TRAINED.to_portable()
PARAMS = make_model().parameters()


def _fresh() -> tuple[ClipGradByAdaGC, object]:
    clip = ClipGradByAdaGC(warmup_steps=2, parameters=PARAMS)
    clip.set_state_dict(copy.deepcopy(SD))  # a known state to compare with after a rejection

    def host():
        ((step, gamma, seen),) = [
            (int(g.state.step.numpy()), g.state.gamma.numpy(), g.state.seen.numpy())
            for g in clip._groups
            if g.state is not None
        ]
        return step, gamma, seen

    return clip, host


@st.composite
def edited_state_dict(draw):
    sd = {k: dict(v) if isinstance(v, dict) else v for k, v in SD.items()}
    names = [k for k in sd if k != "@adagc"]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        name = draw(st.sampled_from(names))
        kind = draw(st.sampled_from(["gamma", "seen", "step", "drop", "entry"]))
        if kind == "drop":
            sd.pop(name, None)
        elif kind == "entry":
            sd[name] = draw(ANY_VALUE)
        elif isinstance(sd.get(name), dict):
            sd[name][kind] = draw(st.one_of(ANY_VALUE, ANY_VALUE.map(_tensor)))
    return sd


def _tensor(v):
    try:
        return paddle.to_tensor(v)
    except Exception:
        return v


@fuzz(150)
@given(sd=edited_state_dict())
def test_fuzz_paddle_set_state_dict(sd) -> None:
    clip, host = _fresh()
    check_loaded_or_rejected(lambda: clip.set_state_dict(sd), host)


@fuzz(150)
@given(ckpt=edited_portable(PORTABLE))
def test_fuzz_paddle_from_portable(ckpt) -> None:
    clip, host = _fresh()
    check_loaded_or_rejected(lambda: clip.from_portable(ckpt), host)
