"""AdaGC against the ``AdaGC`` optimizer of the pytorch-optimizer package, on the same
gradients. Each difference documented in docs/torch.md is pinned down here.

With ``betas=(0, ...)`` and ``lr=0`` its first moment ``exp_avg`` is exactly the clipped gradient
it feeds to Adam, so the two clippers can be compared tensor by tensor.
"""

from __future__ import annotations

import pytest
import torch

from adagc.adapters.torch import AdaGC

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


def _pair(warmup_ours: int, **theirs_kw):
    torch.manual_seed(0)
    ours_p = [torch.nn.Parameter(torch.zeros(s)) for s in [(4, 3), (5,), (2, 2)]]
    theirs_p = [torch.nn.Parameter(torch.zeros(s)) for s in [(4, 3), (5,), (2, 2)]]
    ours = AdaGC(ours_p, lambda_rel=1.05, beta=0.98, warmup_steps=warmup_ours, eps=1e-8)
    theirs = pytorch_optimizer.AdaGC(
        theirs_p,
        lr=0.0,
        betas=(0.0, 0.999),
        weight_decay=0.0,
        beta=0.98,
        lambda_rel=1.05,
        eps=1e-8,
        foreach=False,
        **theirs_kw,
    )
    return ours_p, ours, theirs_p, theirs


def _step(ours_p, ours, theirs_p, theirs, grads):
    for p, q, g in zip(ours_p, theirs_p, grads):
        p.grad, q.grad = g.clone(), g.clone()
    ours.clip_()
    theirs.step()
    return [p.grad for p in ours_p], [theirs.state[q]["exp_avg"] for q in theirs_p]


def _grads(k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    scale = 50.0 if k == 6 else 1.0  # a spike in step 6
    return [torch.randn(s, generator=gen) * scale * (1 + 0.3 * k) for s in [(4, 3), (5,), (2, 2)]]


def test_same_clipping_once_warmup_is_counted_the_same_way() -> None:
    """Their warmup is `step < warmup_steps` with step counted from 1: warmup_steps - 1 warmup
    steps (Algorithm 1 read literally). Ours (the authors' Megatron code) runs warmup_steps.
    Shifted by one, the clipped gradients agree."""
    a = _pair(warmup_ours=2, warmup_steps=3)
    for k in range(9):
        mine, theirs = _step(*a, _grads(k))
        for x, y in zip(mine, theirs):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_zero_gradient_in_warmup_pins_their_gamma_at_zero() -> None:
    """spec §3 policy: a zero gradient is 'not observed'. Theirs takes min(gamma, 0) = 0 and
    from then on scales that tensor's gradient to (almost) nothing."""
    ours_p, ours, theirs_p, theirs = _pair(warmup_ours=1, warmup_steps=2)
    g = _grads(0)
    g[1] = torch.zeros(5)
    _step(ours_p, ours, theirs_p, theirs, g)
    mine, their = _step(ours_p, ours, theirs_p, theirs, _grads(1))
    assert torch.linalg.vector_norm(mine[1]) > 0.5
    assert torch.linalg.vector_norm(their[1]) < 1e-6


def test_nonfinite_gradient_poisons_their_state_not_ours() -> None:
    ours_p, ours, theirs_p, theirs = _pair(warmup_ours=1, warmup_steps=2)
    _step(ours_p, ours, theirs_p, theirs, _grads(0))
    g = _grads(1)
    g[0][0, 0] = float("nan")
    _step(ours_p, ours, theirs_p, theirs, g)
    assert torch.isfinite(ours.state.gamma).all()
    assert torch.isnan(theirs.state[theirs_p[0]]["gamma"]).any()
