"""PaddlePaddle adapter: ``ClipGradByAdaGC``, a drop-in ``grad_clip=`` for Paddle optimizers.

    import paddle
    from adagc.adapters.paddle import ClipGradByAdaGC

    clip = ClipGradByAdaGC(lambda_rel=1.04, beta=0.99, warmup_steps=100, lambda_abs=1.0)
    opt = paddle.optimizer.AdamW(parameters=model.parameters(), grad_clip=clip)
    loss.backward(); opt.step(); opt.clear_grad()

Paddle optimizers call ``grad_clip(params_grads)`` inside ``step()`` with the ``(param, grad)``
pairs of the parameters that have a gradient (once per parameter group). This class gathers
those gradients in a fixed order, calls ``adagc.update`` (which holds all of the algorithm) in
place, and hands the pairs back. Dynamic-graph mode only.

Bookkeeping (no algorithm logic here):

- parameters with ``ParamAttr(need_clip=False)`` are passed through untouched and take no part
  in any norm (as in ``paddle.nn.ClipGradByGlobalNorm``);
- a parameter without a gradient this step is an absent gradient (spec §3: h = 1, gamma
  unchanged); a parameter seen for the first time joins the state with no gamma yet;
- each optimizer parameter group keeps its own state (Paddle clips each group separately, and
  its step counter must advance once per optimizer step);
- state is keyed by ``param.name`` in ``state_dict()``; ``to_portable()`` writes the
  framework-neutral ``adagc/1`` format.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paddle
from paddle.nn.clip import ClipGradBase

import adagc
from adagc import AdaGCConfig, AdaGCState, AdaGCStats, CheckpointMismatchError
from adagc._checkpoint import checked_entry, checked_step

from .paddle_distributed import PaddleReducer, ShardGroups, fleet_groups

__all__ = ["OPTIMIZER_KEY", "ClipGradByAdaGC", "PaddleReducer", "fleet_groups"]

FORMAT = "adagc-paddle/1"
# The key of the AdaGC state inside the optimizer's ``state_dict()`` once the clip is bound.
OPTIMIZER_KEY = "adagc"
_META = "@adagc"
_BACKEND = "paddle"
_GLOBAL = "__global__"
_Record = tuple[float, bool, int]
"""(gamma, seen, step) of one parameter, on the host."""


@dataclass
class _Group:
    """The parameters of one optimizer parameter group, in state order, and their state."""

    names: list[str] = field(default_factory=list)
    state: AdaGCState | None = None
    reducer: PaddleReducer | None = None
    shard: list[tuple[Any, ...]] = field(default_factory=list)
    slot: dict[str, int] = field(default_factory=dict)
    """name -> position in ``names`` (rebuilt when parameters join)."""
    float64: bool = False
    """Every registered parameter is float64 (gamma is then float64, as ``adagc.init`` does)."""


class ClipGradByAdaGC(ClipGradBase):
    """AdaGC (arXiv 2502.11034) as a Paddle ``grad_clip=`` object.

    For the first ``warmup_steps`` (T_start) finite steps it is global-norm clipping at
    ``lambda_abs`` (equal to ``paddle.nn.ClipGradByGlobalNorm(lambda_abs)`` up to eps); then
    each parameter tensor i is clipped to ``lambda_rel * gamma_i``, where gamma_i is the EMA
    (coefficient ``beta``) of its own past clipped norms.

    Args:
        lambda_rel, beta, warmup_steps, lambda_abs, eps, granularity, shard_mode, nonfinite:
            see ``adagc.AdaGCConfig`` (validated here: a bad value raises ``ValueError``).
        warmup_gamma: ``"clipped"`` (default; paper, Megatron) or ``"raw"``: the warmup
            minimum gamma_i starts from, over clipped or unclipped norms. ``"raw"`` is Paddle's
            own ``ClipGradByAdaptiveNorm`` (and ERNIE); docs/spec.md §1.1 sets the two side
            by side (that code's ``start_clip_steps`` is ``warmup_steps - 1`` here).
        parameters: optional, the same ``parameters`` the optimizer gets (a list of
            parameters, or of ``{"params": [...]}`` groups). Registers every parameter up
            front, so ``set_state_dict`` can check a checkpoint completely before the first
            step; without it parameters are registered as they first bring a gradient.
        shard_groups: for sharded gradients (tensor parallel, FSDP-style sharding):
            ``shard_groups(param)`` returns the ``paddle.distributed`` groups ``param``'s
            gradient is sharded over; norms then are full-tensor norms, with one all-reduce per
            distinct group per step (see ``fleet_groups``). ``None``: every gradient is whole
            (single process, or data parallel after the gradient all-reduce).
        sum_groups: groups the ``shard_mode="local"`` global sum runs over (default: those of
            ``shard_groups``).
        pp_group: pipeline parallelism: the pipeline group
            (``hcg.get_pipe_parallel_group()``); each stage's clip then sums
            ``[G^2, non-finite flag]`` over the stages in one all-reduce per step, so warmup
            clips by the whole model's G and every stage keeps the same step counter, in
            exact mode too (per-tensor norms need nothing from the other stages).
        fast_path: the CuPy fused kernels for CUDA tensors (zero-copy through their device
            pointers, on Paddle's stream). ``None`` (default): use them when the gradients are
            on a GPU and the CuPy fast path is installed, else the generic path; ``False``:
            always the generic path; ``True``: require the fast path (``ValueError`` when it
            cannot run).

    Attributes:
        last_stats: the ``AdaGCStats`` of the latest call (device arrays; reading them syncs),
            with ``last_names`` the parameter names in their order.
    """

    def __init__(
        self,
        lambda_rel: float = 1.04,
        beta: float = 0.99,
        warmup_steps: int = 100,
        lambda_abs: float = 1.0,
        eps: float = 1e-6,
        granularity: str = "tensor",
        shard_mode: str = "exact",
        nonfinite: str = "propagate",
        *,
        warmup_gamma: str = "clipped",
        parameters: Iterable[Any] | None = None,
        shard_groups: ShardGroups | None = None,
        sum_groups: Sequence[Any] | None = None,
        pp_group: Any = None,
        fast_path: bool | None = None,
    ) -> None:
        super().__init__()
        self.config = AdaGCConfig(
            lambda_rel=lambda_rel,
            beta=beta,
            warmup_steps=warmup_steps,
            lambda_abs=lambda_abs,
            eps=eps,
            granularity=granularity,  # type: ignore[arg-type]
            shard_mode=shard_mode,  # type: ignore[arg-type]
            nonfinite=nonfinite,  # type: ignore[arg-type]
            warmup_gamma=warmup_gamma,  # type: ignore[arg-type]
        )
        if fast_path is not None and not isinstance(fast_path, bool):
            raise TypeError(f"fast_path must be None, True or False, got {fast_path!r}")
        if shard_groups is not None and not callable(shard_groups):
            raise TypeError("shard_groups must be a callable param -> sequence of groups")
        self.fast_path = fast_path
        self.shard_groups = shard_groups
        self.sum_groups = sum_groups
        self.pp_group = pp_group
        self._groups: list[_Group] = []
        self._group_of: dict[str, int] = {}
        self._fixed = parameters is not None
        self._pending: dict[str, Any] | None = None  # a checkpoint waiting for its parameters
        self.last_stats: AdaGCStats | None = None
        self.last_names: list[str] = []
        self._optimizer: Any = None  # the optimizer this clip is the grad_clip of (bound)
        if parameters is not None:
            self._register(parameters)

    def __str__(self) -> str:
        c = self.config
        return (
            f"ClipGradByAdaGC(lambda_rel={c.lambda_rel}, beta={c.beta}, "
            f"warmup_steps={c.warmup_steps}, lambda_abs={c.lambda_abs}, eps={c.eps}, "
            f"granularity={c.granularity!r}, shard_mode={c.shard_mode!r}, "
            f"nonfinite={c.nonfinite!r}, warmup_gamma={c.warmup_gamma!r})"
        )

    __repr__ = __str__

    # -- registration ----------------------------------------------------------------------
    def _register(self, parameters: Iterable[Any]) -> None:
        items = list(parameters)
        groups = items if items and isinstance(items[0], Mapping) else [{"params": items}]
        for spec in groups:
            if not isinstance(spec, Mapping) or "params" not in spec:
                raise TypeError(
                    "parameters must be a list of parameters or of {'params': [...]} groups, "
                    "like the optimizer's"
                )
            group = _Group()
            params = spec["params"]
            dtypes = set()
            for p in [params] if isinstance(params, paddle.Tensor) else params:
                _check_param(p)
                if _clips(p) and not p.stop_gradient and p.name not in self._group_of:
                    self._group_of[p.name] = len(self._groups)
                    group.slot[p.name] = len(group.names)
                    group.names.append(p.name)
                    group.shard.append(self._shard_of(p))
                    dtypes.add(p.dtype)
            group.float64 = dtypes == {paddle.float64}
            self._groups.append(group)

    def _shard_of(self, p: Any) -> tuple[Any, ...]:
        if self.shard_groups is None:
            return ()
        return tuple(g for g in self.shard_groups(p) if g is not None)

    def _group_for(self, params: list[Any], names: list[str]) -> _Group:
        """The group these parameters belong to; unknown ones join it (lazily registered)."""
        group_of = self._group_of
        owners = {group_of[n] for n in names if n in group_of}
        unknown = {n: p for n, p in zip(names, params, strict=True) if n not in group_of}
        if len(owners) > 1:
            raise ValueError(
                "ClipGradByAdaGC got the parameters of several groups in one call "
                f"({sorted(set(names))[:5]} ...); pass it the same parameter groups as the "
                "optimizer (parameters=...)"
            )
        if unknown and self._fixed:
            raise ValueError(
                f"parameters {list(unknown)[:10]} were not in the parameters= given to "
                "ClipGradByAdaGC; give it the same parameters as the optimizer"
            )
        if owners:
            index = owners.pop()
        else:
            index = len(self._groups)
            self._groups.append(_Group())
        group = self._groups[index]
        if unknown:
            for n, p in unknown.items():
                group_of[n] = index
                group.names.append(n)
                group.shard.append(self._shard_of(p))
            group.reducer = None
            group.slot = {}
        if not group.slot:
            group.slot = {n: i for i, n in enumerate(group.names)}
        return group

    # -- the step --------------------------------------------------------------------------
    @paddle.no_grad()
    def _dygraph_clip(self, params_grads: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        if self._optimizer is None:
            self._bind(_calling_optimizer(self))
        where, params, grads_in = [], [], []
        for k, (p, g) in enumerate(params_grads):
            if g is None or getattr(p, "need_clip", True) is False:
                continue  # absent, or ParamAttr(need_clip=False): passed through untouched
            if g.is_selected_rows():
                raise TypeError(
                    f"parameter {p.name} has a sparse (SelectedRows) gradient; AdaGC needs "
                    "dense gradients: build the layer with sparse=False"
                )
            where.append(k)
            params.append(p)
            grads_in.append(g)
        if not params:
            return params_grads
        names = [p.name for p in params]
        group = self._group_for(params, names)
        slots = [group.slot[n] for n in names]
        grads: list[Any] = [None] * len(group.names)
        for i, g in zip(slots, grads_in, strict=True):
            grads[i] = g  # a parameter listed twice is one slot (tied)
        step = self._fast_step(grads) or _generic_update
        state = self._state_for(group, grads)
        clipped, state, stats = step(
            grads, state, self.config, reducer=self._reducer(group), names=group.names
        )
        group.state = state
        self.last_stats, self.last_names = stats, list(group.names)
        out = list(params_grads)
        for k, p, i in zip(where, params, slots, strict=True):
            out[k] = (p, clipped[i])
        return out

    def _state_for(self, group: _Group, grads: list[Any]) -> AdaGCState:
        """The group's state, grown by fresh entries for newly registered parameters."""
        n = len(group.names)
        if group.state is None:
            fresh = adagc.init(grads, self.config, backend=_BACKEND)
            group.state = self._from_pending(group, fresh)
            return group.state
        have = group.state.seen.shape[0]
        if self.config.granularity == "tensor" and have < n:
            extra = adagc.init(grads[have:], self.config, backend=_BACKEND)
            gamma = paddle.concat([group.state.gamma, extra.gamma.astype(group.state.gamma.dtype)])
            seen = paddle.concat([group.state.seen, extra.seen])
            grown = AdaGCState(group.state.step, gamma, seen)
            group.state = self._from_pending(group, grown, start=have)
        return group.state

    def _reducer(self, group: _Group) -> PaddleReducer | None:
        if self.shard_groups is None and self.sum_groups is None and self.pp_group is None:
            return None
        if group.reducer is None:
            group.reducer = PaddleReducer(
                group.shard, self.sum_groups, self.pp_group, self.config.shard_mode
            )
        return group.reducer

    def _fast_step(self, grads: list[Any]) -> Callable[..., Any] | None:
        """The CuPy fused step for these gradients, or ``None`` for the generic path."""
        if self.fast_path is False:
            return None
        on_gpu = next(g for g in grads if g is not None).place.is_gpu_place()
        step = _cupy_fast_update() if on_gpu else None
        if self.fast_path and step is None:
            where = "CPU gradients" if not on_gpu else "this install (no CuPy fast path for Paddle)"
            raise ValueError(
                f"fast_path=True but the CuPy fused path cannot run on {where}; it needs GPU "
                "gradients and pip install 'adagc[cupy]'. Use fast_path=None to fall back."
            )
        if self.fast_path and step is not None:  # required: no silent fallback inside it
            return functools.partial(step, required=True)
        return step

    # -- the optimizer's checkpoint -----------------------------------------------------------
    def _bind(self, opt: Any, carry: bool = True) -> None:
        """Carry the AdaGC state in ``opt.state_dict()`` / ``opt.set_state_dict()``.

        Paddle optimizers have no state-dict hooks, so on its first step the clip finds the
        optimizer calling it (the one whose ``_grad_clip`` it is) and wraps those two methods
        of that instance. A checkpoint loaded into the optimizer *before* that first step
        waits in Paddle's ``_accumulators_holder``; its AdaGC entry is adopted here (and a
        loaded state without one warns).

        ``carry=False`` (a trainer callback that keeps the AdaGC state in a file of its own,
        for checkpoint formats that map every optimizer entry to a parameter): the
        optimizer is only recorded; its methods are left alone and nothing is warned."""
        if opt is None:
            return
        self._optimizer = opt
        holder = getattr(opt, "_accumulators_holder", None)
        saved = holder.pop(OPTIMIZER_KEY, None) if isinstance(holder, dict) else None
        if saved is not None:
            self.set_state_dict(saved)
        elif holder and carry:
            _warn_missing("the optimizer state loaded before the first step")
        if not carry:
            return
        save, load = opt.state_dict, opt.set_state_dict

        def state_dict() -> dict[str, Any]:
            out = save()
            out[OPTIMIZER_KEY] = self.state_dict()
            return out

        def set_state_dict(state_dict: Mapping[str, Any]) -> None:
            rest = dict(state_dict)
            mine = rest.pop(OPTIMIZER_KEY, None)
            if mine is None:
                _warn_missing("this optimizer state")
            else:
                self.set_state_dict(mine)  # validated first: a bad one loads nothing
            load(rest)

        opt.state_dict = state_dict
        opt.set_state_dict = opt.load_state_dict = set_state_dict
        sharded = getattr(opt, "sharded_state_dict", None)
        if sharded is not None:
            # Paddle's flex checkpoints map every state_dict() key to a parameter's slot and
            # reject any other: they get the optimizer's own entries (a trainer callback then
            # keeps the AdaGC state beside them, see adagc.adapters.paddleformers).
            def sharded_state_dict(*args: Any, **kwargs: Any) -> Any:
                opt.state_dict = save
                try:
                    return sharded(*args, **kwargs)
                finally:
                    opt.state_dict = state_dict

            opt.sharded_state_dict = sharded_state_dict

    def metrics(self, prefix: str = "adagc/") -> dict[str, paddle.Tensor]:
        """The last step's summary as 0-d tensors (read only when a logger reads them):
        ``clipped_fraction`` (share of tensors with h_i < 1), ``min_coefficient`` (min h_i)
        and ``global_norm`` (G before clipping), as the torch integrations log them. Empty
        before the first step."""
        s = self.last_stats
        if s is None:
            return {}
        return {
            f"{prefix}clipped_fraction": s.num_clipped.astype("float32") / len(self.last_names),
            f"{prefix}min_coefficient": s.coefficients.min().astype("float32"),
            f"{prefix}global_norm": s.global_norm.astype("float32"),
        }

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{param.name: {"gamma", "seen", "step"}, "@adagc": {format, config}}`` with 0-d
        Paddle tensors, ready for ``paddle.save``. ``step`` is k of the parameter's group;
        under ``granularity="global"`` every parameter of a group carries the group's gamma."""
        out: dict[str, Any] = {_META: {"format": FORMAT, "config": self.config.to_dict()}}
        for group in self._groups:
            if group.state is None:
                continue
            step, gamma, seen = group.state
            single = self.config.granularity == "global"
            count = len(group.names) if single else seen.shape[0]
            for i, name in enumerate(group.names[:count]):
                j = 0 if single else i
                out[name] = {
                    "gamma": gamma[j].clone(),
                    "seen": seen[j].clone(),
                    "step": step.clone(),
                }
        return out

    def set_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load ``state_dict()`` output (an ``adagc/1`` dict is passed to ``from_portable``).

        The live configuration wins; a granularity mismatch is an error. Parameters are
        matched by ``param.name``: a checkpoint of another model raises
        ``CheckpointMismatchError`` naming what is missing and unexpected, and nothing is
        loaded. Before the first step, and without ``parameters=``, the clipper does not know
        its parameters yet: the checkpoint is kept and checked against each parameter group
        when that group first clips (unexpected extra entries cannot be detected then).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("format") == adagc.CHECKPOINT_FORMAT:
            self.from_portable(state_dict)
            return
        meta = state_dict.get(_META)
        if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
            raise CheckpointMismatchError(
                f"not a ClipGradByAdaGC state_dict (no {_META!r} entry with format {FORMAT!r})"
            )
        self._check_granularity(meta.get("config", {}))
        records: dict[str, _Record] = {}
        for key, entry in state_dict.items():
            if key == _META:
                continue
            if not isinstance(entry, Mapping) or not {"gamma", "seen", "step"} <= set(entry):
                raise CheckpointMismatchError(f"entry {key!r} has no gamma/seen/step")
            records[str(key)] = _record(str(key), entry["gamma"], entry["seen"], entry["step"])
        self._load(records)

    def to_portable(self, names: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The state in the framework-neutral ``adagc/1`` format (spec §4), through
        ``adagc.to_portable``. ``names`` maps ``param.name`` to the name to write (e.g.
        ``{p.name: n for n, p in model.named_parameters()}``, to move a run to another
        framework); by default ``param.name`` is written."""
        parts = []
        for group in self._groups:
            if group.state is None:
                continue
            keys = [_rename(n, names) for n in group.names[: group.state.seen.shape[0]]]
            parts.append(adagc.to_portable(group.state, self.config, keys))
        if not parts:
            raise ValueError("ClipGradByAdaGC has no state yet: nothing has been clipped")
        merged = parts[0]
        for one in parts[1:]:
            same = self.config.granularity == "tensor" or one["gamma"] == merged["gamma"]
            if one["step"] != merged["step"] or not same:
                raise ValueError(
                    "the parameter groups have different step counts (or, with "
                    "granularity='global', different gammas); adagc/1 holds one. "
                    "Use state_dict() instead."
                )
            merged["gamma"].update(one["gamma"])
            merged["seen"].update(one["seen"])
        return merged

    def from_portable(
        self, checkpoint: Mapping[str, Any], names: Mapping[str, str] | None = None
    ) -> None:
        """Load an ``adagc/1`` checkpoint (``names`` as in ``to_portable``). Mismatching
        tensor names raise ``CheckpointMismatchError`` and load nothing."""
        if not isinstance(checkpoint, Mapping):
            raise TypeError(f"checkpoint must be a dict, got {type(checkpoint).__name__}")
        fmt = checkpoint.get("format")
        if fmt != adagc.CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(f"not an {adagc.CHECKPOINT_FORMAT} checkpoint ({fmt!r})")
        for key in ("config", "step", "gamma", "seen"):
            if key not in checkpoint:
                raise CheckpointMismatchError(f"{fmt} checkpoint has no {key!r} entry")
        self._check_granularity(checkpoint["config"])
        step = checked_step(checkpoint["step"])
        gamma, seen = checkpoint["gamma"], checkpoint["seen"]
        if not isinstance(gamma, Mapping) or not isinstance(seen, Mapping):
            raise CheckpointMismatchError("the checkpoint's gamma and seen must be dicts")
        if set(gamma) != set(seen):
            raise CheckpointMismatchError("the checkpoint's gamma and seen name different tensors")
        if self.config.granularity == "global":
            if set(gamma) != {_GLOBAL}:
                raise CheckpointMismatchError(
                    "a granularity='global' checkpoint holds one entry", [_GLOBAL]
                )
            value = _record(_GLOBAL, gamma[_GLOBAL], seen[_GLOBAL], step)
            known = [n for g in self._groups for n in g.names]
            self._load({n: value for n in known} if known else {_GLOBAL: value})
            return
        back = {new: old for old, new in names.items()} if names else {}
        self._load({str(back.get(k, k)): _record(str(k), gamma[k], seen[k], step) for k in gamma})

    def _check_granularity(self, config: Any) -> None:
        if not isinstance(config, Mapping):
            raise CheckpointMismatchError(
                f"the checkpoint's config must be a dict, got {type(config).__name__}"
            )
        saved = config.get("granularity", "tensor")
        if saved != self.config.granularity:
            raise CheckpointMismatchError(
                f"checkpoint was saved with granularity={saved!r} but this clipper has "
                f"granularity={self.config.granularity!r}; the gamma entries do not correspond"
            )

    def _load(self, records: dict[str, _Record]) -> None:
        """Check every known group against ``records``, then replace all states at once."""
        known = [n for g in self._groups for n in g.names]
        if not known:
            self._pending = records  # checked when each group first clips
            return
        missing = [n for n in known if n not in records]
        unexpected = sorted(set(records) - set(known))
        if missing or unexpected:
            raise CheckpointMismatchError(
                "the checkpoint's parameters differ from this model's", missing, unexpected
            )
        new_states = [self._build(g, records) for g in self._groups]  # may raise: load nothing
        for group, state in zip(self._groups, new_states, strict=True):
            group.state = state if state is not None else group.state
        self._pending = None

    def _build(self, group: _Group, records: Mapping[str, _Record]) -> AdaGCState | None:
        """A state for ``group`` from host records, through ``adagc.from_portable``."""
        if not group.names:
            return None
        missing = [n for n in group.names if n not in records and _GLOBAL not in records]
        if missing:
            raise CheckpointMismatchError("the checkpoint lacks parameters", missing)
        recs = {n: records.get(n) or records[_GLOBAL] for n in group.names}
        steps = {r[2] for r in recs.values()}
        if len(steps) > 1:
            raise CheckpointMismatchError(
                f"parameters of one group have different steps in the checkpoint: {sorted(steps)}"
            )
        if self.config.granularity == "global":
            values = {r[:2] for r in recs.values()}
            if len(values) > 1:
                raise CheckpointMismatchError(
                    "granularity='global' but the group's parameters have different gammas"
                )
            ckpt = _portable(self.config, steps.pop(), {_GLOBAL: values.pop()})
            like = adagc.init([None], self.config, backend=_BACKEND)
            return _with_dtype(adagc.from_portable(ckpt, like, self.config), group)
        ckpt = _portable(self.config, steps.pop(), {n: r[:2] for n, r in recs.items()})
        like = adagc.init([None] * len(group.names), self.config, backend=_BACKEND)
        return _with_dtype(adagc.from_portable(ckpt, like, self.config, group.names), group)

    def _from_pending(self, group: _Group, state: AdaGCState, start: int = 0) -> AdaGCState:
        """Apply a checkpoint loaded before these parameters were known."""
        if self._pending is None:
            return state
        if start == 0:
            loaded = self._build(group, self._pending)  # raises naming missing parameters
            assert loaded is not None
            return _with_dtype(loaded, state)
        new = [n for n in group.names[start:] if n in self._pending]
        if not new or self.config.granularity == "global":
            return state
        gamma, seen = state.gamma.numpy(), state.seen.numpy()
        for i, n in enumerate(group.names[start:], start):
            if n in self._pending:
                gamma[i], seen[i] = self._pending[n][0], self._pending[n][1]
        place = state.gamma.place
        return AdaGCState(
            state.step, paddle.to_tensor(gamma, place=place), paddle.to_tensor(seen, place=place)
        )

    # -- not supported ----------------------------------------------------------------------
    def _static_clip(self, params_grads: Any) -> Any:
        raise NotImplementedError(
            "ClipGradByAdaGC works in dynamic-graph mode only (paddle.disable_static())"
        )

    _pir_clip = _static_clip


def _calling_optimizer(clip: ClipGradByAdaGC) -> Any:
    """The ``paddle.optimizer.Optimizer`` whose ``step()`` is calling ``clip`` (a few frames
    up: ``step`` -> ``_apply_optimize`` -> ``_grad_clip(...)``), or ``None`` when the clip is
    called some other way."""
    frame: Any = sys._getframe(2)
    for _ in range(12):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, paddle.optimizer.Optimizer) and owner._grad_clip is clip:
            return owner
        frame = frame.f_back
    return None


def _warn_missing(what: str) -> None:
    warnings.warn(
        f"ClipGradByAdaGC: {what} has no AdaGC state ({OPTIMIZER_KEY!r}); the clipper keeps "
        "its current state and does not resume. Was it saved before the first step?",
        stacklevel=3,
    )


def _check_param(p: Any) -> None:
    if not isinstance(p, paddle.Tensor):
        raise TypeError(f"parameters must be Paddle parameters, got {type(p).__name__}")


def _clips(p: Any) -> bool:
    return getattr(p, "need_clip", True) is not False


def _rename(name: str, names: Mapping[str, str] | None) -> str:
    return names.get(name, name) if names else name


def _portable(cfg: AdaGCConfig, step: int, values: Mapping[str, tuple[float, bool]]) -> dict:
    return {
        "format": adagc.CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "step": int(step),
        "gamma": {k: v[0] for k, v in values.items()},
        "seen": {k: v[1] for k, v in values.items()},
    }


def _with_dtype(state: AdaGCState, live: _Group | AdaGCState) -> AdaGCState:
    """Keep the live state's gamma dtype and device (float64 for all-float64 models)."""
    ref = live.state if isinstance(live, _Group) else live
    if ref is None:
        f64 = isinstance(live, _Group) and live.float64
        return (
            AdaGCState(state.step, state.gamma.astype(paddle.float64), state.seen) if f64 else state
        )
    gamma = state.gamma.astype(ref.gamma.dtype).to(ref.gamma.place)
    return AdaGCState(state.step.to(ref.step.place), gamma, state.seen.to(ref.seen.place))


def _record(name: str, gamma: Any, seen: Any, step: Any) -> _Record:
    """One parameter's checkpoint entry, validated by the core (``adagc._checkpoint``: gamma
    finite and >= 0, seen a bool, step a non-negative int). Values may be 0-d Paddle
    tensors (after ``paddle.load``; the core reads them through ``tolist()``) or Python/NumPy
    scalars."""
    g, b = checked_entry(name, gamma, seen)
    return g, b, checked_step(step)


def _generic_update(
    grads: list[Any], state: AdaGCState, cfg: AdaGCConfig, *, reducer: Any, names: list[str]
) -> tuple[list[Any], AdaGCState, AdaGCStats]:
    return adagc.update(
        grads, state, cfg, backend=_BACKEND, inplace=True, reducer=reducer, names=names
    )


@functools.cache
def _cupy_fast_update() -> Callable[..., Any] | None:
    """The plug point of the CuPy fused path for Paddle CUDA tensors: a callable with
    ``_generic_update``'s signature (zero-copy through device pointers, on Paddle's current
    stream), or ``None`` while it is not installed. The CuPy backend provides it as
    ``adagc.backends.cupy.paddle_update``."""
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        module = importlib.import_module("adagc.backends.cupy")
    except ImportError:
        return None
    fn = getattr(module, "paddle_update", None)
    return fn if callable(fn) else None
