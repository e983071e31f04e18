"""Sharded gradients for the PyTorch adapter: DTensor (FSDP2, tensor parallel) -> local shards
plus a ``Reducer`` for the core (spec §2).

- ``shard_mode="exact"``: a tensor's norm is the norm of the FULL tensor. The per-tensor partial
  sums of squares of all tensors sharded over the same process group are reduced in ONE
  ``all_reduce`` of the stacked vector (entries of other tensors masked to 0 and restored), so
  FSDP2 on one mesh costs one collective per step, never one per tensor. Tensors replicated on
  a mesh dimension are complete on every rank and are not reduced over it (counted once).
- ``shard_mode="local"``: the core sends one 2-element SUM all-reduce ([G^2, non-finite flag])
  per step, over the gradients' mesh (or ``process_group``).

Everything stays on the device: masks are built once per layout, no ``.item()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["TorchReducer", "localize"]


def _dtensor_cls() -> Any:
    from torch.distributed.tensor import DTensor

    return DTensor


class TorchReducer:
    """``adagc.Reducer`` over torch.distributed process groups."""

    def __init__(self, groups: list[tuple[Any, list[int]]], total: int, world: Any) -> None:
        self.groups = groups  # (process group, positions of tensors sharded over it)
        self.total = total
        self.world = world  # group for the plain SUM (shard_mode="local")
        self._masks: dict[tuple[Any, int], torch.Tensor] = {}

    def _mask(self, k: int, device: torch.device) -> torch.Tensor:
        key = (device, k)
        m = self._masks.get(key)
        if m is None:
            m = torch.zeros(self.total, dtype=torch.bool, device=device)
            m[self.groups[k][1]] = True
            self._masks[key] = m
        return m

    def sum_squares(self, sq: torch.Tensor) -> torch.Tensor:
        out = sq
        for k, (group, _) in enumerate(self.groups):
            mask = self._mask(k, sq.device)
            # From ``out``: a tensor sharded on two mesh dims is summed over both, in turn.
            part = torch.where(mask, out, torch.zeros_like(out))
            dist.all_reduce(part, op=dist.ReduceOp.SUM, group=group)
            out = torch.where(mask, part, out)
        return out

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.world)
        return y


def localize(
    params: Sequence[torch.Tensor], grads: Sequence[Any], process_group: Any = None
) -> tuple[list[Any], TorchReducer | None]:
    """Local shards of DTensor gradients (writable: clipping them in place clips the DTensor)
    and the reducer that turns their partial sums of squares into full-tensor ones."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    DTensor = _dtensor_cls()
    local: list[Any] = []
    by_group: dict[Any, list[int]] = {}
    world = process_group
    for i, g in enumerate(grads):
        if g is None or not isinstance(g, DTensor):
            local.append(g)
            continue
        mesh = g.device_mesh
        for dim, placement in enumerate(g.placements):
            if isinstance(placement, Partial):
                raise ValueError(
                    f"gradient {i} is a DTensor with a Partial placement (not yet reduced); "
                    "AdaGC needs reduced gradients: call it after the gradient reduction"
                )
            if isinstance(placement, Shard):
                group = process_group if process_group is not None else mesh.get_group(dim)
                by_group.setdefault(group, []).append(i)
            elif not isinstance(placement, Replicate):
                raise ValueError(f"gradient {i}: unsupported placement {placement!r}")
        if world is None:
            world = mesh.get_group(0) if mesh.ndim == 1 else None
        local.append(g.to_local())
    if not by_group and world is None:
        return local, None
    return local, TorchReducer(list(by_group.items()), len(grads), world)
