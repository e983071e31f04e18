"""Rank programs for the distributed tests (spawned with torch.multiprocessing). Each rank
builds the single-process reference itself (same seeds) and asserts against it; a failing
assertion fails the spawn and so the test. Measurements are written as JSON by rank 0."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from adagc.adapters.torch import AdaGC

KW = dict(warmup_steps=2, lambda_rel=1.04, beta=0.9)
STEPS = 6


def _init(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)


def _finish() -> None:
    """Leave together, then exit without the interpreter's teardown. A rank tearing gloo down
    while a peer still talks to it can abort the peer, and so can C++ threads (gloo's, DCP's)
    destroyed during interpreter shutdown: "terminate called without an active exception",
    SIGABRT, seen in CI under load even after the barrier. Every result is written by now."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 8))  # 33: uneven shards


def _batch(step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    scale = 30.0 if step == 4 else 1.0 + 0.2 * step  # a spike after warmup
    return torch.randn(n, 16, generator=g) * scale, torch.randn(n, 8, generator=g)


@contextmanager
def counting_all_reduce(log: list[int]):
    """Count the real all_reduce calls (and their sizes) made while clipping."""
    real = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        log.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        yield
    finally:
        dist.all_reduce = real


def _reference_step(ref: nn.Module, clip: AdaGC, x, y) -> None:
    ref.zero_grad()
    nn.functional.mse_loss(ref(x), y).backward()
    clip.clip_()


def _write(out: str, rank: int, data: dict) -> None:
    if rank == 0:
        Path(out).write_text(json.dumps(data))


def fsdp_worker(rank: int, world: int, port: int, mode: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    _init(rank, world, port)
    ref, model = _mlp(), _mlp()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    ref_clip = AdaGC(ref.named_parameters(), **KW)
    clip = AdaGC(model.named_parameters(), shard_mode=mode, **KW)
    prev_gamma, prev_seen = clip.state.gamma.clone(), clip.state.seen.clone()
    counts = []
    per = 4
    for step in range(STEPS):
        x, y = _batch(step, per * world)
        _reference_step(ref, ref_clip, x, y)
        model.zero_grad()
        nn.functional.mse_loss(
            model(x[rank * per : (rank + 1) * per]), y[rank * per : (rank + 1) * per]
        ).backward()
        assert all(isinstance(p.grad, DTensor) for p in model.parameters())
        log: list[int] = []
        with counting_all_reduce(log):
            stats = clip.clip_()
        counts.append(log)
        if mode == "exact":
            for (name, p), q in zip(model.named_parameters(), ref.parameters()):
                torch.testing.assert_close(
                    p.grad.full_tensor(), q.grad, rtol=1e-6, atol=1e-7, msg=name
                )
            torch.testing.assert_close(
                stats.coefficients, ref_clip.last_stats.coefficients, rtol=1e-6, atol=0
            )
        else:
            # AdaGC-Shard: each rank's shard is clipped by its own norm against its own gamma.
            gamma = clip.state.gamma
            if step >= KW["warmup_steps"] + 1:
                for i, p in enumerate(model.parameters()):
                    n = p.grad.to_local().norm()
                    assert n <= KW["lambda_rel"] * prev_gamma[i] * (1 + 1e-5) or not prev_seen[i]
            prev_gamma, prev_seen = gamma.clone(), clip.state.seen.clone()
    if mode == "exact":
        torch.testing.assert_close(clip.state.gamma, ref_clip.state.gamma, rtol=1e-6, atol=0)
    _write(out, rank, {"all_reduce_sizes_per_step": counts})
    _finish()


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, world, port)
    ref, model = _mlp(), DDP(_mlp())
    ref_clip = AdaGC(ref.named_parameters(), **KW)
    clip = AdaGC(model.module.named_parameters(), **KW)
    counts = []
    per = 4
    for step in range(STEPS):
        x, y = _batch(step, per * world)
        _reference_step(ref, ref_clip, x, y)
        model.zero_grad()
        nn.functional.mse_loss(
            model(x[rank * per : (rank + 1) * per]), y[rank * per : (rank + 1) * per]
        ).backward()
        log: list[int] = []
        with counting_all_reduce(log):
            clip.clip_()
        counts.append(log)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    _write(out, rank, {"all_reduce_sizes_per_step": counts})
    _finish()


def tp_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    _init(rank, world, port)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    mesh = init_device_mesh("cpu", (world,))
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    ref_clip = AdaGC(ref.named_parameters(), **KW)
    clip = AdaGC(model.named_parameters(), **KW)
    counts = []
    for step in range(STEPS):
        x, y = _batch(step, 8)  # tensor parallel: every rank sees the same batch
        _reference_step(ref, ref_clip, x, y)
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        log: list[int] = []
        with counting_all_reduce(log):
            clip.clip_()
        counts.append(log)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-6, atol=1e-7)
    placements = [str(p.grad.placements) for p in model.parameters()]
    _write(out, rank, {"all_reduce_sizes_per_step": counts, "placements": placements})
    _finish()


def dcp_worker(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    """Save model + optimizer + AdaGC through torch.distributed.checkpoint mid-run, restore
    into fresh objects, and check that training resumes bit-identically."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _init(rank, world, port)
    mesh = init_device_mesh("cpu", (world,))

    def build():
        m = _mlp()
        fully_shard(m, mesh=mesh)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        return m, opt, AdaGC(m.named_parameters(), **KW)

    def step(m, opt, clip, k):
        x, y = _batch(k, 4 * world)
        opt.zero_grad()
        nn.functional.mse_loss(
            m(x[rank * 4 : (rank + 1) * 4]), y[rank * 4 : (rank + 1) * 4]
        ).backward()
        clip.clip_()
        opt.step()

    m, opt, clip = build()
    for k in range(3):
        step(m, opt, clip, k)
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd, "adagc": clip.state_dict()}, checkpoint_id=ckpt)
    for k in range(3, STEPS):
        step(m, opt, clip, k)
    final = [p.detach().full_tensor().clone() for p in m.parameters()]

    m2, opt2, clip2 = build()
    msd2, osd2 = get_state_dict(m2, opt2)
    state = {"model": msd2, "optim": osd2, "adagc": clip2.state_dict()}
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(m2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    clip2.load_state_dict(state["adagc"])
    assert int(clip2.state.step) == 3
    for k in range(3, STEPS):
        step(m2, opt2, clip2, k)
    for a, b in zip(final, (p.detach().full_tensor() for p in m2.parameters())):
        assert torch.equal(a, b), "resumed training differs"
    torch.testing.assert_close(clip.state.gamma, clip2.state.gamma, rtol=0, atol=0)
    _write(out, rank, {"resumed_bit_identical": True})
    _finish()
