"""The PyTorch adapter under misuse: nothing half-applied, nothing lost, clear errors."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch

import adagc
from adagc import AdaGCConfig, NotWritableError
from adagc.adapters.torch import AdaGC

from .conftest import TinyLM


def test_a_failed_in_place_step_writes_nothing() -> None:
    cfg = AdaGCConfig(warmup_steps=3, lambda_abs=0.1)
    a = torch.ones(4)
    b = torch.ones(1).expand(4)  # every element is one memory location
    state = adagc.init([a, b], cfg)
    with pytest.raises(NotWritableError, match="'b'.*share memory"):
        adagc.update([a, b], state, cfg, inplace=True, names=["a", "b"])
    torch.testing.assert_close(a, torch.ones(4), rtol=0, atol=0)  # not scaled before the error
    _, _, stats = adagc.update([a, b.clone()], state, cfg, inplace=True)  # a retry clips once
    assert float(stats.global_norm) == pytest.approx(8**0.5)  # the unscaled a: clipped once


def test_one_clipper_stepped_from_many_threads_counts_every_step() -> None:
    m = TinyLM()
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    clipper = AdaGC(m.named_parameters(), warmup_steps=10)

    def work() -> None:
        for _ in range(125):
            clipper.clip_()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(clipper.state.step) == 1000
    assert int(copy.deepcopy(clipper).state.step) == 1000  # the lock does not block copies


def test_model_double_after_construction_promotes_gamma() -> None:
    m = torch.nn.Linear(3, 2)
    clipper = AdaGC(m.named_parameters(), warmup_steps=0)
    m.double()
    for p in m.parameters():
        p.grad = torch.full_like(p, 1e30)  # finite in float64; Inf as a float32 norm
    stats = clipper.clip_()
    assert not bool(stats.nonfinite)
    assert clipper.state.gamma.dtype == torch.float64
    assert int(clipper.state.step) == 1


def test_parameters_added_to_the_optimizer_after_attach_are_named_once() -> None:
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    AdaGC(m.named_parameters(), warmup_steps=2).attach(opt)
    extra = torch.nn.Parameter(torch.ones(5))
    opt.add_param_group({"params": [extra]})
    for p in [*m.parameters(), extra]:
        p.grad = torch.ones_like(p)
    with pytest.warns(UserWarning, match=r"param_groups\[1\]\[0\] \(5,\)"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # said once


def test_a_clipper_of_part_of_the_optimizer_warns_at_attach() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="2 optimizer parameter"):
        AdaGC(m[0].named_parameters()).attach(opt)


def test_clear_errors_for_raw_failures() -> None:
    g = [torch.ones(3), torch.ones(2)]
    state = adagc.init(g)
    with pytest.raises(TypeError, match="backend='numpy' but the arrays are torch"):
        adagc.update(g, state, backend="numpy")
    with pytest.raises(ValueError, match="1 names for 2 gradients"):
        adagc.update(g, state, AdaGCConfig(nonfinite="raise"), names=["a"])
    sparse = torch.sparse_coo_tensor([[0]], [1.0], (2,))
    with pytest.raises(TypeError, match="gradient 1 is a torch.sparse_coo"):
        adagc.update([g[0], sparse], state)
    with pytest.raises(ValueError, match="warmup_steps"):
        AdaGC([torch.nn.Parameter(torch.ones(1))], warmup_steps=10**30)
