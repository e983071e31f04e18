"""The CPU norm paths of the torch backend: stacked same-shape small tensors, float64 block
dots of large ones, and foreach norms for the rest, in one call, against float64 norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adagc
from adagc import AdaGCConfig
from adagc.backends import torch as torch_backend


def _float64_norms(grads: list[torch.Tensor | None]) -> list[float]:
    return [
        0.0 if g is None else float(torch.linalg.vector_norm(g.double().reshape(-1))) for g in grads
    ]


def _mixed(dtype: torch.dtype) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 3).to(dtype)

    grads: list[torch.Tensor | None] = []
    for i in range(280):  # 4 shapes of at least _STACKED tensors each, interleaved
        grads.append(draw(*[(7,), (3, 5), (64,), (2, 2, 2)][i % 4]))
    grads += [draw(11) for _ in range(3)]  # a shape too rare to stack
    grads += [draw(5, 7).t()]  # non-contiguous
    grads += [draw(600, 100)]  # large: block dots (float32/float64)
    grads.insert(17, None)  # absent
    grads.insert(40, draw(0))  # empty
    return grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_cpu_path_in_one_call_matches_float64(dtype: torch.dtype) -> None:
    grads = _mixed(dtype)
    assert sum(1 for g in grads if g is not None and g.shape == (7,)) >= torch_backend._STACKED
    sq = torch_backend.BACKEND.sum_squares(grads, "float32")
    want = np.square(_float64_norms(grads))
    np.testing.assert_allclose(sq.double().numpy(), want, rtol=2e-6, atol=0)


def test_stacked_norms_equal_per_tensor_norms_through_a_step() -> None:
    """The clipped result of 280 small tensors is the same as when each is its own group
    (fewer than _STACKED of a shape): norms, coefficients and gradients."""
    grads = [t for t in _mixed(torch.float32) if t is not None and t.numel() < 1000]
    cfg = AdaGCConfig(warmup_steps=1)
    state = adagc.init(grads, cfg)
    _, state, _ = adagc.update(grads, state, cfg)
    spiked = [g * (5.0 if i % 3 == 0 else 1.0) for i, g in enumerate(grads)]
    out, _, stats = adagc.update(spiked, state, cfg)
    # Per tensor, one at a time: always below _STACKED, so foreach norms.
    ref = [adagc.update([g], _one(state, i), cfg) for i, g in enumerate(spiked)]
    np.testing.assert_allclose(stats.norms.numpy(), [float(r[2].norms[0]) for r in ref], rtol=1e-6)
    assert int(stats.num_clipped) == sum(int(r[2].num_clipped) for r in ref) > 0
    for got, r in zip(out, ref):
        torch.testing.assert_close(got, r[0][0], rtol=1e-6, atol=0)


def _one(state: adagc.AdaGCState, i: int) -> adagc.AdaGCState:
    return adagc.AdaGCState(state.step, state.gamma[i : i + 1], state.seen[i : i + 1])


def test_nonfinite_and_overflow_in_a_stack_show_up_as_inf_and_nan() -> None:
    grads = [torch.ones(8) for _ in range(100)]
    grads[3] = torch.full((8,), 1e30)  # float32 sum of squares overflows: Inf, no rescaling
    grads[50] = torch.tensor([float("nan")] * 8)
    sq = torch_backend.BACKEND.sum_squares(grads, "float32")
    assert torch.isinf(sq[3]) and torch.isnan(sq[50])
    torch.testing.assert_close(sq[[0, 49, 99]], torch.full((3,), 8.0))


def test_a_sparse_gradient_among_many_small_ones_gets_the_clear_error() -> None:
    grads = [torch.ones(4) for _ in range(100)]
    grads[70] = torch.sparse_coo_tensor([[0]], [1.0], (4,))
    state = adagc.init(grads)
    with pytest.raises(TypeError, match="gradient 70 is a torch.sparse_coo"):
        adagc.update(grads, state)
