"""Rank programs for pipeline- and expert-parallel AdaGC (spawned by test_pipeline.py).

Pipelines run for real: ``torch.distributed.pipelining`` stages under ``ScheduleGPipe`` over
gloo, optionally with each stage ``fully_shard``-ed over a "dp" mesh dimension. Every rank
also builds the whole model in one process (same seed) and asserts its stage against it.
Collectives are counted with the profiler's ``gloo:all_reduce`` events, which catch
``dist.all_reduce`` and DTensor's functional collectives (``.full_tensor()``) alike.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from adagc import CheckpointMismatchError, NonFiniteGradientError
from adagc.adapters.torch import AdaGC

from ._workers import KW, STEPS, _batch, _finish, _init, _write

MICRO = 2  # microbatches per step
PER = 4  # samples per data-parallel rank and step


def _full() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 24), nn.ReLU(), nn.Linear(24, 8)
    )


def _stage_slice(stage: int) -> slice:
    return slice(0, 3) if stage == 0 else slice(3, 5)  # keeps the whole model's names


@contextmanager
def counting_collectives(log: list[list[int]]):
    """Append the shape of every gloo all-reduce run inside the block."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        yield
    for e in prof.events():
        if e.name == "gloo:all_reduce":
            log.append(list(e.input_shapes[0]) if e.input_shapes else [])


def _global_clip_(params: list[nn.Parameter], pp_group=None, max_norm: float = 1.0) -> None:
    """Global-norm clipping across pipeline stages, as torchtitan's ``clip_grad_norm_`` does
    it: total norm of this stage (DTensor: made full over its mesh), then summed over PP."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params]
    total = torch.nn.utils.get_total_norm(grads, foreach=True)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    total = total**2
    if pp_group is not None:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=pp_group)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total.sqrt(), foreach=True)


class _Pipeline:
    """One rank's stage of ``_full()`` on a ("pp", "dp") mesh (dp may be 1)."""

    def __init__(self, rank: int, pp: int, dp: int) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        self.mesh = init_device_mesh("cpu", (pp, dp), mesh_dim_names=("pp", "dp"))
        self.stage = self.mesh["pp"].get_local_rank()
        self.dp_rank, self.dp = self.mesh["dp"].get_local_rank(), dp
        self.module = _full()[_stage_slice(self.stage)]
        if dp > 1:
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.module, mesh=self.mesh["dp"])
        pipe = PipelineStage(
            self.module, self.stage, pp, torch.device("cpu"), group=self.mesh["pp"].get_group()
        )
        self.schedule = ScheduleGPipe(pipe, MICRO, loss_fn=nn.functional.mse_loss, scale_grads=True)

    def backward(self, step: int) -> None:
        x, y = _batch(step, PER * self.dp)
        lo, hi = self.dp_rank * PER, (self.dp_rank + 1) * PER
        self.module.zero_grad()
        if self.stage == 0:
            self.schedule.step(x[lo:hi])
        else:
            self.schedule.step(target=y[lo:hi], losses=[])

    def full_grads(self) -> list[torch.Tensor]:
        return [
            p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            for p in self.module.parameters()
        ]


def _reference(step: int, ref: nn.Module, clip: AdaGC, n: int):
    x, y = _batch(step, n)
    ref.zero_grad()
    nn.functional.mse_loss(ref(x), y).backward()
    return clip.clip_()


def _stage_positions(stage: int) -> list[int]:
    names = [n for n, _ in _full().named_parameters()]
    mine = [n for n, _ in _full()[_stage_slice(stage)].named_parameters()]
    return [names.index(n) for n in mine]


def _local(g):
    return g.to_local() if hasattr(g, "to_local") else g


def pipeline_worker(rank: int, world: int, port: int, dp: int, mode: str, out: str) -> None:
    """(a)/(c): a 2-stage pipeline (x FSDP2 over dp), equal to the single-process run."""
    _init(rank, world, port)
    pipe = _Pipeline(rank, world // dp, dp)
    ref = _full()
    ref_clip = AdaGC(ref.named_parameters(), **KW)
    clip = AdaGC(pipe.module.named_parameters(), pp_mesh=pipe.mesh["pp"], shard_mode=mode, **KW)
    alone = AdaGC(pipe.module.named_parameters(), shard_mode=mode, **KW)  # without pp_mesh
    params = list(pipe.module.parameters())
    mine = _stage_positions(pipe.stage)
    counts, global_counts, alone_differs = [], [], []
    for step in range(STEPS):
        want = _reference(step, ref, ref_clip, PER * dp)
        pipe.backward(step)
        raw = [_local(p.grad).clone() for p in params]
        log: list[list[int]] = []
        with counting_collectives(log):
            stats = clip.clip_()
        counts.append(log)
        torch.testing.assert_close(stats.global_norm, want.global_norm, rtol=1e-6, atol=0)
        assert int(clip.state.step) == int(ref_clip.state.step) == step + 1
        if mode == "exact":
            for g, i in zip(pipe.full_grads(), mine):
                torch.testing.assert_close(g, list(ref.parameters())[i].grad, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(
                stats.coefficients, want.coefficients[mine], rtol=1e-6, atol=0
            )
            torch.testing.assert_close(
                clip.state.gamma, ref_clip.state.gamma[mine], rtol=1e-6, atol=0
            )
        # The same raw gradients through a clipper that does not know the other stage, and
        # through torchtitan-style global clipping (for the collective count).
        for p, r in zip(params, raw):
            _local(p.grad).copy_(r)
        alone_differs.append(not torch.allclose(alone.clip_().global_norm, want.global_norm))
        for p, r in zip(params, raw):
            _local(p.grad).copy_(r)
        log = []
        with counting_collectives(log):
            _global_clip_(params, pipe.mesh["pp"].get_group())
        global_counts.append(log)
    _write(
        out,
        rank,
        {
            "collectives_per_step": counts,
            "global_per_step": global_counts,
            "alone_global_norm_differs": alone_differs,
        },
    )
    _finish()


def nonfinite_worker(rank: int, world: int, port: int, out: str) -> None:
    """(b): an Inf on the last stage only: every stage skips the update, k stays equal."""
    _init(rank, world, port)
    pipe = _Pipeline(rank, world, 1)
    clip = AdaGC(pipe.module.named_parameters(), pp_mesh=pipe.mesh["pp"], **KW)
    alone = AdaGC(pipe.module.named_parameters(), **KW)
    for wrong, kind in ((pipe.mesh, ValueError), ("pp", TypeError)):  # 2-D mesh, a name
        try:
            AdaGC(pipe.module.named_parameters(), pp_mesh=wrong, **KW)
            raise AssertionError(f"pp_mesh={wrong!r} was accepted")
        except kind as exc:
            assert "pp_mesh must be" in str(exc), exc
    bad_step = KW["warmup_steps"] + 1  # after warmup
    flags, steps, alone_steps, message = [], [], [], ""
    for step in range(STEPS):
        pipe.backward(step)
        if step == bad_step and pipe.stage == 1:
            next(pipe.module.parameters()).grad[0, 0] = float("inf")
        raw = [p.grad.clone() for p in pipe.module.parameters()]
        gamma = clip.state.gamma.clone()
        stats = clip.clip_()
        flags.append(bool(stats.nonfinite))
        steps.append(int(clip.state.step))
        if step == bad_step:
            assert torch.equal(clip.state.gamma, gamma), "a non-finite step changed gamma"
            strict = AdaGC(
                pipe.module.named_parameters(), nonfinite="raise", pp_mesh=pipe.mesh["pp"], **KW
            )
            for p, g in zip(pipe.module.parameters(), raw):
                p.grad.copy_(g)
            try:
                strict.clip_()
            except NonFiniteGradientError as exc:
                message = str(exc)
        for p, g in zip(pipe.module.parameters(), raw):
            p.grad.copy_(g)
        alone.clip_()
        alone_steps.append(int(alone.state.step))
    every = [None] * world
    dist.all_gather_object(
        every, {"flags": flags, "steps": steps, "alone": alone_steps, "message": message}
    )
    _write(out, rank, {"ranks": every, "bad_step": bad_step})
    _finish()


def _moe_layout(mesh):
    """Placements on the ("dp", "ep") mesh: experts' [E, ...] stacks split over ep by expert
    and over dp by rows (FSDP on top of EP), dense weights split over dp, replicated over ep."""
    from torch.distributed.tensor import Replicate, Shard

    return {
        "router.weight": (Shard(0), Replicate()),
        "w1": (Shard(1), Shard(0)),
        "w2": (Shard(2), Shard(0)),
        "out.weight": (Shard(0), Replicate()),
        "out.bias": (Replicate(), Replicate()),
    }


class MoE(nn.Module):
    """Top-1 mixture of experts with stacked expert weights (torchtitan's GroupedExperts
    layout), a router and a dense output layer."""

    def __init__(self, d: int = 16, h: int = 12, experts: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.router = nn.Linear(d, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, d, h) / d**0.5)
        self.w2 = nn.Parameter(torch.randn(experts, h, d) / h**0.5)
        self.out = nn.Linear(d, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.router(x).softmax(-1)
        weight, expert = gate.max(-1)
        hidden = torch.relu(torch.einsum("nd,ndh->nh", x, self.w1[expert]))
        y = torch.einsum("nh,nhd->nd", hidden, self.w2[expert]) * weight[:, None]
        return self.out(y + x)


def expert_worker(rank: int, world: int, port: int, out: str) -> None:
    """(d): experts sharded over "ep" (and dp), dense over "dp": per-tensor norms, clipped
    gradients and gamma equal to the single process. The forward is not expert-parallel
    (no all-to-all token dispatch: gloo has none for this): every rank computes the whole
    model's gradients and keeps the shards an EP x FSDP layout holds."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    _init(rank, world, port)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "ep"))
    layout = _moe_layout(mesh)
    ref, full = MoE(), MoE()
    ref_clip = AdaGC(ref.named_parameters(), **KW)
    params = {
        n: nn.Parameter(distribute_tensor(p.detach(), mesh, layout[n]))
        for n, p in full.named_parameters()
    }
    clip = AdaGC(params.items(), **KW)
    counts, global_counts = [], []
    for step in range(STEPS):
        want = _reference(step, ref, ref_clip, 8)
        full.zero_grad()
        x, y = _batch(step, 8)
        nn.functional.mse_loss(full(x), y).backward()
        for n, p in full.named_parameters():
            params[n].grad = distribute_tensor(p.grad, mesh, layout[n])
        raw = {n: q.grad.to_local().clone() for n, q in params.items()}
        log: list[list[int]] = []
        with counting_collectives(log):
            stats = clip.clip_()
        counts.append(log)
        torch.testing.assert_close(stats.norms, want.norms, rtol=1e-6, atol=0)
        torch.testing.assert_close(stats.coefficients, want.coefficients, rtol=1e-6, atol=0)
        for (n, q), r in zip(params.items(), ref.parameters()):
            torch.testing.assert_close(q.grad.full_tensor(), r.grad, rtol=1e-6, atol=1e-7, msg=n)
        for n, q in params.items():
            q.grad.to_local().copy_(raw[n])
        log = []
        with counting_collectives(log):
            _global_clip_(list(params.values()))
        global_counts.append(log)
    torch.testing.assert_close(clip.state.gamma, ref_clip.state.gamma, rtol=1e-6, atol=0)
    _write(out, rank, {"collectives_per_step": counts, "global_per_step": global_counts})
    _finish()


def dcp_worker(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    """(e): PP x FSDP2 with DCP: model, optimizer and each stage's AdaGC state saved mid-run
    (under a per-stage key), restored into fresh objects, training resumes bit-identically."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    # Keyed by parameter name (torchtitan's choice): the stages' param_groups do not collide.
    flat = StateDictOptions(flatten_optimizer_state_dict=True)

    _init(rank, world, port)

    def build():
        pipe = _Pipeline(rank, 2, 2)
        opt = torch.optim.AdamW(pipe.module.parameters(), lr=1e-2)
        return pipe, opt, AdaGC(pipe.module.named_parameters(), pp_mesh=pipe.mesh["pp"], **KW)

    def train(pipe, opt, clip, steps):
        for k in steps:
            opt.zero_grad()
            pipe.backward(k)
            clip.clip_()
            opt.step()

    pipe, opt, clip = build()
    key = f"adagc_stage{pipe.stage}"  # every stage's AdaGC state is its own
    train(pipe, opt, clip, range(3))
    msd, osd = get_state_dict(pipe.module, opt, options=flat)
    dcp.save({"model": msd, "optim": osd, key: clip.state_dict()}, checkpoint_id=ckpt)
    train(pipe, opt, clip, range(3, STEPS))
    final = [p.detach().full_tensor().clone() for p in pipe.module.parameters()]

    pipe2, opt2, clip2 = build()
    msd2, osd2 = get_state_dict(pipe2.module, opt2, options=flat)
    state = {"model": msd2, "optim": osd2, key: clip2.state_dict()}
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(
        pipe2.module,
        opt2,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=flat,
    )
    clip2.load_state_dict(state[key])
    assert int(clip2.state.step) == 3
    train(pipe2, opt2, clip2, range(3, STEPS))
    same = all(
        torch.equal(a, p.detach().full_tensor()) for a, p in zip(final, pipe2.module.parameters())
    )
    assert torch.equal(clip.state.gamma, clip2.state.gamma) and same, "resume differs"

    # One key for every stage keeps one copy (DCP dedups non-DTensor values by key): the
    # first stage's state, which another stage must refuse rather than load.
    first = [clip.state_dict()]
    dist.broadcast_object_list(first, src=0)
    error = ""
    try:
        clip2.load_state_dict(first[0])
    except CheckpointMismatchError as exc:
        error = str(exc)
    every = [None] * world
    dist.all_gather_object(every, error)
    _write(out, rank, {"resumed_bit_identical": True, "wrong_stage_errors": every})
    _finish()
