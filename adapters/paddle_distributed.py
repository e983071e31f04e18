"""Collectives for AdaGC on ``paddle.distributed`` process groups (spec §2).

``PaddleReducer`` implements the core's ``Reducer`` protocol for one ordered list of tensors:
tensor i's gradient may be sharded over some process groups (tensor-parallel weights over the
model-parallel group, FSDP-style shards over a sharding group). In ``shard_mode="exact"`` the
``[T]`` vector of this rank's partial sums of squares is all-reduced once per distinct group
(not once per tensor), and each tensor takes the sum only from the groups it is sharded over;
tensors replicated within a group keep their local value, which already is the full tensor's,
so they are counted once (Paddle's ``HybridParallelClipGrad`` gets the same effect by dividing
replicated squares by the group size before a scalar all-reduce).

``fleet_groups(hcg)`` reads those groups from a fleet ``HybridCommunicateGroup``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paddle
import paddle.distributed as dist

__all__ = ["PaddleReducer", "ShardGroups", "fleet_groups"]

ShardGroups = Callable[[Any], Sequence[Any]]
"""``shard_groups(param) -> groups``: the process groups ``param``'s gradient is sharded over
(``()`` when every rank holds the whole gradient)."""


def _group_key(group: Any) -> Any:
    return getattr(group, "id", id(group))


class PaddleReducer:
    """The core's ``Reducer`` for paddle.distributed groups.

    Args:
        tensor_groups: for each tensor, in the order passed to ``adagc.update``, the groups its
            gradient is sharded over (``()`` for a whole gradient).
        sum_groups: groups the ``shard_mode="local"`` vector ``[G^2, non-finite flag]`` is
            summed over, one all-reduce each; default: every distinct group of
            ``tensor_groups``. Data-parallel replicas are never summed (their gradients are
            already identical after the data-parallel all-reduce).
        stage_group: pipeline parallelism: the group of the stages (each holds other
            tensors). ``[G^2, flag]`` is then summed over it in ``shard_mode="exact"`` too
            (``stages``: the whole model's G in warmup, one non-finite decision, one k), and
            in ``"local"`` it joins ``sum_groups`` (once, if it is there already).
        shard_mode: the config's; with ``stage_group``, ``"exact"`` sums only over the
            stages (per-tensor norms are full already).
    """

    def __init__(
        self,
        tensor_groups: Sequence[Sequence[Any]],
        sum_groups: Iterable[Any] | None = None,
        stage_group: Any = None,
        shard_mode: str = "exact",
    ) -> None:
        distinct: dict[Any, Any] = {}
        members: dict[Any, list[bool]] = {}
        n = len(tensor_groups)
        for i, groups in enumerate(tensor_groups):
            for g in groups:
                if g is None or getattr(g, "nranks", 2) <= 1:
                    continue  # a one-rank group needs no collective
                k = _group_key(g)
                distinct.setdefault(k, g)
                members.setdefault(k, [False] * n)[i] = True
        self.groups = list(distinct.values())
        self._masks = [members[k] for k in distinct]
        self._mask_tensors: dict[str, list[paddle.Tensor]] = {}
        self.sum_groups = (
            self.groups
            if sum_groups is None
            else [g for g in sum_groups if g is not None and getattr(g, "nranks", 2) > 1]
        )
        self.stages = stage_group is not None and getattr(stage_group, "nranks", 2) > 1
        if self.stages:
            if shard_mode == "exact":
                self.sum_groups = [stage_group]
            elif all(_group_key(g) != _group_key(stage_group) for g in self.sum_groups):
                self.sum_groups = [*self.sum_groups, stage_group]

    def _masks_on(self, like: paddle.Tensor) -> list[paddle.Tensor]:
        key = str(like.place)
        masks = self._mask_tensors.get(key)
        if masks is None:  # built once per device, not per step
            masks = [paddle.to_tensor(m, dtype=paddle.bool, place=like.place) for m in self._masks]
            self._mask_tensors[key] = masks
        return masks

    def sum_squares(self, vec: paddle.Tensor) -> paddle.Tensor:
        """Full-tensor sums of squares: one SUM all-reduce per distinct group."""
        for group, mask in zip(self.groups, self._masks_on(vec), strict=True):
            total = vec.clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
            vec = paddle.where(mask, total, vec)  # only tensors sharded over this group
        return vec

    def sum(self, vec: paddle.Tensor) -> paddle.Tensor:
        """SUM all-reduce over ``sum_groups`` (``shard_mode="local"``, or the stages)."""
        out = vec.clone()
        for group in self.sum_groups:
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out


def fleet_groups(hcg: Any = None) -> tuple[ShardGroups, list[Any]]:
    """``(shard_groups, sum_groups)`` for fleet hybrid parallelism.

    Tensor-parallel parameters (``param.is_distributed``) are sharded over the model-parallel
    group; every other parameter is whole on each rank. ``sum_groups`` are the groups that
    partition the model's tensors between ranks: model-parallel, sharding (stage 1/2: each rank
    owns whole tensors) and pipeline — used only by ``shard_mode="local"``.

    Args:
        hcg: ``fleet.get_hybrid_communicate_group()`` (taken from fleet when omitted).
    """
    if hcg is None:
        from paddle.distributed import fleet

        hcg = fleet.get_hybrid_communicate_group()
    mp = hcg.get_model_parallel_group() if hcg.get_model_parallel_world_size() > 1 else None
    sums = [mp]
    if hcg.get_sharding_parallel_world_size() > 1:
        sums.append(hcg.get_sharding_parallel_group())
    if hcg.get_pipe_parallel_world_size() > 1:
        sums.append(hcg.get_pipe_parallel_group())

    def shard_groups(param: Any) -> tuple[Any, ...]:
        return (mp,) if mp is not None and getattr(param, "is_distributed", False) else ()

    return shard_groups, [g for g in sums if g is not None]
