"""Sharded gradients for the PyTorch adapter: DTensor (FSDP2, tensor parallel) -> local shards
plus a ``Reducer`` for the core (spec §2).

- ``shard_mode="exact"``: a tensor's norm is the norm of the FULL tensor. The per-tensor partial
  sums of squares of all tensors sharded over the same process group are reduced in ONE
  ``all_reduce`` of the stacked vector (entries of other tensors masked to 0 and restored), so
  FSDP2 on one mesh costs one collective per step, never one per tensor. Tensors replicated on
  a mesh dimension are complete on every rank and are not reduced over it (counted once).
- ``shard_mode="local"``: the core sends one 2-element SUM all-reduce ([G^2, non-finite flag])
  per step, over the gradients' mesh (or ``process_group``).
- Pipeline parallelism (``pp_mesh``): each stage holds different tensors, so per-tensor norms
  need nothing from the other stages; only [G^2, flag] is summed over them (``stages``), in
  exact mode over the pipeline group, in local mode over every stage's shard ranks at once
  (the shard and pipeline mesh dimensions flattened into one group), still one all-reduce.

Everything stays on the device: masks are built once per layout, no ``.item()``.
"""

from __future__ import annotations

import sys
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

    def __init__(
        self, groups: list[tuple[Any, list[int]]], total: int, world: Any, stages: bool = False
    ) -> None:
        self.groups = groups  # (process group, positions of tensors sharded over it)
        self.total = total
        self.world = world  # group for the plain SUM ([G^2, flag])
        self.stages = stages  # pipeline stages: the core sums [G^2, flag] in exact mode too
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


def pipeline_group(pp_mesh: Any) -> Any:
    """The process group of ``pp_mesh``: a 1-D ``DeviceMesh`` (as torchtitan's
    ``clip_grad_norm_(pp_mesh=...)`` takes it) or a ``ProcessGroup``."""
    if isinstance(pp_mesh, dist.ProcessGroup):
        return pp_mesh
    get_group = getattr(pp_mesh, "get_group", None)
    if get_group is None:
        raise TypeError(
            "pp_mesh must be the pipeline dimension as a 1-D DeviceMesh (e.g. mesh['pp']) or "
            f"a ProcessGroup, got {type(pp_mesh).__name__}"
        )
    if pp_mesh.ndim != 1:
        raise ValueError(
            f"pp_mesh must be 1-D (the pipeline dimension only), got a {pp_mesh.ndim}-D mesh "
            f"{pp_mesh.mesh_dim_names}: pass mesh['pp']"
        )
    return get_group()


def pipeline_rank(pp_mesh: Any) -> int:
    """This rank's position along the pipeline dimension (its stage's index in the group)."""
    if isinstance(pp_mesh, dist.ProcessGroup):
        return dist.get_rank(pp_mesh)
    return int(pp_mesh.get_local_rank())


_FLATTENED: dict[tuple[Any, ...], Any] = {}


def _stage_and_shard_group(pp_mesh: Any, meshes: list[Any]) -> Any:
    """One group of every rank whose shard's G^2 makes up the global norm in local mode:
    the gradients' mesh dimensions and the pipeline dimension, flattened (torchtitan builds
    its loss-parallel and DP-shard groups the same way)."""
    key = (pp_mesh, *meshes)
    if key in _FLATTENED:  # building a group is itself a collective: once per layout
        return _FLATTENED[key]
    root = getattr(pp_mesh, "_get_root_mesh", lambda: None)()
    names: list[str] = list(getattr(pp_mesh, "mesh_dim_names", None) or ())
    for mesh in meshes:
        if root is None or mesh._get_root_mesh() is not root or not mesh.mesh_dim_names:
            root = None
            break
        names += [n for n in mesh.mesh_dim_names if n not in names]
    if root is None:
        raise ValueError(
            "shard_mode='local' with pp_mesh needs one group over every stage's shard ranks: "
            "slice pp_mesh and the gradients' mesh from one named DeviceMesh (e.g. "
            "mesh['pp'] and mesh['dp']), or pass process_group= that group"
        )
    order = [n for n in root.mesh_dim_names if n in names]  # root order, as slicing requires
    group = root[tuple(order)]._flatten("_".join(order) + "_adagc").get_group()
    _FLATTENED[key] = group
    return group


def localize(
    params: Sequence[torch.Tensor],
    grads: Sequence[Any],
    process_group: Any = None,
    pp_mesh: Any = None,
    shard_mode: str = "exact",
) -> tuple[list[Any], TorchReducer | None]:
    """Local shards of DTensor gradients (writable: clipping them in place clips the DTensor)
    and the reducer that turns their partial sums of squares into full-tensor ones (and,
    with ``pp_mesh``, sums [G^2, flag] over the pipeline stages)."""
    DTensor = _dtensor_cls() if "torch.distributed.tensor" in sys.modules else None
    if DTensor is None or not any(isinstance(g, DTensor) for g in grads):
        if pp_mesh is None:
            return list(grads), None
        world = process_group if process_group is not None else pipeline_group(pp_mesh)
        return list(grads), TorchReducer([], len(grads), world, stages=True)

    from torch.distributed.tensor import Partial, Replicate, Shard

    local: list[Any] = []
    by_group: dict[Any, list[int]] = {}
    meshes: list[Any] = []
    world = process_group
    for i, g in enumerate(grads):
        if g is None or not isinstance(g, DTensor):
            local.append(g)
            continue
        mesh = g.device_mesh
        if all(m is not mesh for m in meshes):
            meshes.append(mesh)
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
    if pp_mesh is not None:
        if shard_mode == "exact":  # full-tensor norms: only [G^2, flag] crosses the stages
            world = pipeline_group(pp_mesh)
        elif process_group is None:
            world = _stage_and_shard_group(pp_mesh, meshes)
        return local, TorchReducer(list(by_group.items()), len(grads), world, stages=True)
    if not by_group and world is None:
        return local, None
    return local, TorchReducer(list(by_group.items()), len(grads), world)
