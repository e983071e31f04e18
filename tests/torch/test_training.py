"""AdaGC in real training: AMP GradScaler, torch.compile, and several optimizers on real text."""

from __future__ import annotations

import pytest
import torch

from adagc.adapters.torch import AdaGC

from .conftest import TinyLM, batches


def test_gradscaler_skips_nonfinite_step_and_state_is_unchanged(text_bytes) -> None:
    torch.manual_seed(0)
    m = TinyLM()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    clipper = AdaGC(m.named_parameters(), warmup_steps=2)
    for k, (x, y) in enumerate(batches(text_bytes, 6)):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        scaler.scale(loss).backward()
        if k == 4:
            m.hidden.weight.grad[0, 0] = float("inf")  # an overflow in one tensor
        scaler.unscale_(opt)  # clip in true gradient units
        before = [t.clone() for t in clipper.state]
        params_before = [p.detach().clone() for p in m.parameters()]
        stats = clipper.clip_()
        scaler.step(opt)
        scaler.update()
        if k == 4:
            assert bool(stats.nonfinite)
            for a, b in zip(clipper.state, before):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            for p, q in zip(m.parameters(), params_before):  # the scaler skipped the step
                torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
            assert scaler.get_scale() < 2.0**10
        else:
            assert not bool(stats.nonfinite)
    assert int(clipper.state.step) == 5


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_torch_compile_matches_eager_and_does_not_recompile(backend: str) -> None:
    """12 steps of a fixed model: at most two graphs (the first step fills an index
    cache), the recompile limit never reached, results as in eager mode."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    a, b = TinyLM(), TinyLM()
    b.load_state_dict(a.state_dict())
    ca = AdaGC(a.parameters(), warmup_steps=3)
    cb = AdaGC(b.parameters(), warmup_steps=3)
    compiled = torch.compile(cb.clip_, backend=backend)
    for step in range(12):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, generator=gen) * (1 + 5 * (step % 4))
            q.grad = p.grad.clone()
        sa = ca.clip_()
        sb = compiled()
        torch.testing.assert_close(sa.coefficients, sb.coefficients, rtol=1e-6, atol=0)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ca.state.gamma, cb.state.gamma, rtol=1e-6, atol=0)
    assert int(cb.state.step) == 12
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


class SignSGD(torch.optim.Optimizer):
    """A Lion-style sign optimizer: update = sign(beta1 * m + (1 - beta1) * g)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def _make_optimizer(name: str, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=3e-3)]
    if name == "lion":
        return [SignSGD(model.parameters(), lr=3e-4)]
    matrices = [p for p in model.parameters() if p.ndim == 2 and p is not model.embed.weight]
    others = [p for p in model.parameters() if all(p is not q for q in matrices)]
    return [torch.optim.Muon(matrices, lr=2e-2), torch.optim.AdamW(others, lr=3e-3)]


@pytest.mark.parametrize("opt_name", ["adamw", "lion", "muon"])
def test_loss_goes_down_with_each_optimizer(text_bytes, opt_name: str) -> None:
    if opt_name == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon is not in this torch")
    torch.manual_seed(0)
    m = TinyLM()
    opts = _make_optimizer(opt_name, m)
    clipper = AdaGC(m.named_parameters(), warmup_steps=10)
    losses = []
    for x, y in batches(text_bytes, 120):
        for o in opts:
            o.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        clipper.clip_()
        for o in opts:
            o.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.5, (opt_name, first, last)
    assert int(clipper.state.step) == 120
