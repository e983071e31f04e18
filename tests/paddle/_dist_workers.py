"""Two-process ``paddle.distributed`` (gloo, CPU) workers for test_distributed.py.

    python -m tests.paddle._dist_workers plain OUTDIR   # data parallel + sharded gradients
    python -m tests.paddle._dist_workers fleet OUTDIR   # fleet hybrid, model-parallel group
    python -m tests.paddle._dist_workers stages OUTDIR  # pipeline stages (pp_group)

Each rank writes ``OUTDIR/<scenario>-rank<r>.npz``; the test compares them with a
single-process run of the same steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

STEPS = 6
WARMUP = 2
SHAPES = [(6, 4), (8,), (4, 2)]
"""Gradient shapes of the sharded scenarios; tensors 0 and 2 are split by rows between the two
ranks, tensor 1 is replicated (whole on each rank)."""
SHARDED = [True, False, True]


def sharded_grads(step: int) -> list[np.ndarray]:
    """Full gradients of one step: random, with a spike in tensor 0 at step 4."""
    rng = np.random.default_rng(100 + step)
    grads = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    if step == 4:
        grads[0] *= 50.0
    return grads


def shard(grads: list[np.ndarray], rank: int) -> list[np.ndarray]:
    out = []
    for g, split in zip(grads, SHARDED, strict=True):
        half = g.shape[0] // 2
        out.append(g[rank * half : (rank + 1) * half] if split else g)
    return out


def dp_batch(step: int, rank: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A regression batch of 16 rows; rank r gets rows 8r..8r+7 (``None``: all)."""
    rng = np.random.default_rng(step)
    x = rng.normal(size=(16, 5)).astype(np.float32) * (1 + step)
    y = rng.normal(size=(16, 3)).astype(np.float32)
    return (x, y) if rank is None else (x[rank * 8 : rank * 8 + 8], y[rank * 8 : rank * 8 + 8])


def dp_model():
    import paddle

    paddle.seed(7)
    with paddle.utils.unique_name.guard():
        return paddle.nn.Sequential(
            paddle.nn.Linear(5, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 3)
        )


def dp_train(model, steps: int, rank: int | None, clip) -> None:
    import paddle

    opt = paddle.optimizer.AdamW(0.05, parameters=model.parameters(), grad_clip=clip)
    for step in range(steps):
        x, y = dp_batch(step, rank)
        loss = ((model(paddle.to_tensor(x)) - paddle.to_tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
        opt.clear_grad()


def _clip_shards(clip, params, step: int, rank: int) -> list[np.ndarray]:
    import paddle

    pairs = [
        (p, paddle.to_tensor(g))
        for p, g in zip(params, shard(sharded_grads(step), rank), strict=True)
    ]
    return [g.numpy() for _, g in clip(pairs)]


def _params(shapes: list[tuple[int, ...]], prefix: str, distributed: list[bool]) -> list:
    import paddle

    out = []
    for i, (s, d) in enumerate(zip(shapes, distributed, strict=True)):
        p = paddle.create_parameter(list(s), "float32", name=f"{prefix}{i}")
        p.is_distributed = d
        out.append(p)
    return out


def _local_shapes(rank: int) -> list[tuple[int, ...]]:
    return [a.shape for a in shard(sharded_grads(0), rank)]


class _Counter:
    """Counts ``all_reduce`` calls made by adagc (the real collective still runs)."""

    def __init__(self) -> None:
        import adagc.adapters.paddle_distributed as pd

        self.module, self.real, self.calls = pd, pd.dist.all_reduce, 0
        pd.dist = _Wrapped(pd.dist, self)


class _Wrapped:
    def __init__(self, dist, counter: _Counter) -> None:
        self._dist, self._counter = dist, counter

    def all_reduce(self, *a, **k):
        self._counter.calls += 1
        return self._dist.all_reduce(*a, **k)

    def __getattr__(self, name: str):
        return getattr(self._dist, name)


def plain(outdir: str) -> None:
    import paddle
    import paddle.distributed as dist

    from adagc.adapters.paddle import ClipGradByAdaGC

    dist.init_parallel_env()
    rank = dist.get_rank()
    out: dict[str, np.ndarray] = {}

    # Data parallel: DataParallel averages gradients over the ranks; AdaGC needs no collective.
    model = dp_model()
    clip = ClipGradByAdaGC(warmup_steps=WARMUP, lambda_abs=0.5)
    counter = _Counter()
    dp_train(paddle.DataParallel(model), STEPS, rank, clip)
    out["dp_allreduce_calls"] = np.array(counter.calls)
    for i, p in enumerate(model.parameters()):
        out[f"dp_param{i}"] = p.numpy()
    out["dp_gamma"] = clip._groups[0].state.gamma.numpy()

    # Sharded gradients, exact norms: one all-reduce per step over the shard group.
    group = dist.new_group([0, 1])
    shard_of = {f"x{i}": (group,) if s else () for i, s in enumerate(SHARDED)}
    params = _params(_local_shapes(rank), "x", SHARDED)
    clip = ClipGradByAdaGC(warmup_steps=WARMUP, shard_groups=lambda p: shard_of[p.name])
    counter.calls = 0
    for step in range(STEPS):
        for i, g in enumerate(_clip_shards(clip, params, step, rank)):
            out[f"exact_s{step}_t{i}"] = g
    out["exact_allreduce_calls"] = np.array(counter.calls)
    out["exact_gamma"] = clip._groups[0].state.gamma.numpy()

    # AdaGC-Shard (shard_mode="local"): per-shard norms, one 2-element sum per step.
    params = _params(_local_shapes(rank), "y", SHARDED)
    shard_of.update({f"y{i}": v for i, v in enumerate(shard_of.values())})
    clip = ClipGradByAdaGC(
        warmup_steps=WARMUP, shard_mode="local", shard_groups=lambda p: shard_of[p.name]
    )
    counter.calls = 0
    for step in range(STEPS):
        for i, g in enumerate(_clip_shards(clip, params, step, rank)):
            out[f"local_s{step}_t{i}"] = g
    out["local_allreduce_calls"] = np.array(counter.calls)
    np.savez(Path(outdir, f"plain-rank{rank}.npz"), **out)


def fleet(outdir: str) -> None:
    import paddle.distributed as dist
    from paddle.distributed import fleet as pfleet

    from adagc.adapters.paddle import ClipGradByAdaGC, fleet_groups

    strategy = pfleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": 2, "pp_degree": 1}
    pfleet.init(is_collective=True, strategy=strategy)
    hcg = pfleet.get_hybrid_communicate_group()
    rank = hcg.get_model_parallel_rank()
    shard_groups, sum_groups = fleet_groups(hcg)
    # Tensor-parallel weights carry is_distributed=True, as fleet's mp layers set it.
    params = _params(_local_shapes(rank), "f", SHARDED)
    clip = ClipGradByAdaGC(warmup_steps=WARMUP, shard_groups=shard_groups, sum_groups=sum_groups)
    out: dict[str, np.ndarray] = {"sum_groups": np.array(len(sum_groups))}
    for step in range(STEPS):
        for i, g in enumerate(_clip_shards(clip, params, step, rank)):
            out[f"fleet_s{step}_t{i}"] = g
    np.savez(Path(outdir, f"fleet-rank{dist.get_rank()}.npz"), **out)


STAGE_OF = [0, 0, 1]
"""Pipeline stages of the sharded scenarios' tensors: rank 0 holds tensors 0 and 1, rank 1
tensor 2 (whole tensors, as pipeline stages hold them)."""
INF_STEP = 3  # after warmup: an Inf in stage 1's tensor only


def stage_grads(step: int) -> list[np.ndarray]:
    grads = sharded_grads(step)
    if step == INF_STEP:
        grads[2][0, 0] = np.inf
    return grads


def stages(outdir: str) -> None:
    import paddle
    import paddle.distributed as dist

    from adagc.adapters.paddle import ClipGradByAdaGC

    dist.init_parallel_env()
    rank = dist.get_rank()
    mine = [i for i, s in enumerate(STAGE_OF) if s == rank]
    params = _params([SHAPES[i] for i in mine], "s", [False] * len(mine))
    clip = ClipGradByAdaGC(warmup_steps=WARMUP, pp_group=dist.new_group([0, 1]))
    counter = _Counter()
    out: dict[str, np.ndarray] = {"tensors": np.array(mine)}
    for step in range(STEPS):
        grads = stage_grads(step)
        pairs = [(p, paddle.to_tensor(grads[i])) for p, i in zip(params, mine, strict=True)]
        for i, (_, g) in zip(mine, clip(pairs), strict=True):
            out[f"stages_s{step}_t{i}"] = g.numpy()
        out[f"stages_nonfinite_s{step}"] = clip.last_stats.nonfinite.numpy()
        out[f"stages_global_norm_s{step}"] = clip.last_stats.global_norm.numpy()
    out["stages_allreduce_calls"] = np.array(counter.calls)
    out["stages_gamma"] = clip._groups[0].state.gamma.numpy()
    out["stages_step"] = clip._groups[0].state.step.numpy()
    np.savez(Path(outdir, f"stages-rank{rank}.npz"), **out)


def main() -> int:
    import paddle.distributed as dist

    scenario, outdir = sys.argv[1], sys.argv[2]
    fn = {"plain": plain, "fleet": fleet, "stages": stages}[scenario]
    dist.spawn(fn, args=(outdir,), nprocs=2, backend="gloo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
