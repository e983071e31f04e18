"""PyTorch adapter: ``AdaGC``, a gradient clipper used like ``clip_grad_norm_``.

    from adagc.adapters.torch import AdaGC

    clipper = AdaGC(model.named_parameters(), lambda_rel=1.04, beta=0.99, warmup_steps=100)
    loss.backward()
    stats = clipper.clip_()          # clips every .grad in place; stats are tensors (no sync)
    optimizer.step()

    clipper.attach(optimizer)        # or: clip as an optimizer step pre-hook

With AMP, clip after ``scaler.unscale_(optimizer)``: gamma_i is kept in true gradient units.
The algorithm is in ``adagc.update``; this module only gathers ``.grad`` tensors, calls it
in place and keeps the state.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

import adagc
from adagc import AdaGCConfig, AdaGCState, AdaGCStats, CheckpointMismatchError
from adagc._checkpoint import GLOBAL_KEY
from adagc.backends._cupy_plan import Declined
from adagc.backends.torch import fused_clip_, fused_unavailable

__all__ = ["OPTIMIZER_KEY", "AdaGC", "unwrap_optimizer"]

_TORCH_FORMAT = "adagc-torch/1"
# Where an attached clipper keeps its state inside ``optimizer.state_dict()``: a key of the
# first param group, because torch's ``Optimizer.load_state_dict`` keeps unknown group keys
# (it drops unknown top-level keys). So a checkpoint loaded *before* ``attach`` still carries
# the state, and ``attach`` adopts it (HF Trainer loads ``optimizer.pt`` before callbacks run).
OPTIMIZER_KEY = "adagc"


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside the wrappers trainers hand out (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``: ``.optimizer`` /
    ``._optimizer``)."""
    opt = optimizer
    for _ in range(8):  # wrappers of wrappers, but never a cycle
        # A real optimizer ran Optimizer.__init__ (wrappers subclass it without doing so).
        if isinstance(opt, torch.optim.Optimizer) and "_optimizer_step_pre_hooks" in vars(opt):
            return opt
        inner = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
    raise TypeError(
        f"attach() needs a torch.optim.Optimizer or a wrapper of one with .optimizer / "
        f"._optimizer (accelerate, Lightning), got {type(optimizer).__name__}"
    )


class _Attachment:
    """The handle ``AdaGC.attach`` returns: ``remove()`` detaches the step and state hooks."""

    def __init__(self, clipper: AdaGC, optimizer: torch.optim.Optimizer, handles: list[Any]):
        self.clipper = clipper
        self.optimizer = optimizer
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self.optimizer, "_adagc_attachment", None) is self:
            del self.optimizer._adagc_attachment  # type: ignore[attr-defined]


def _collect(params: Any) -> tuple[list[str], list[torch.Tensor]]:
    """Names and unique parameters from ``parameters()``, ``named_parameters()`` or param-group
    dicts. A tensor listed twice (tied weights) is kept once, under its first name."""
    if isinstance(params, torch.Tensor):
        params = [params]
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    seen: set[int] = set()

    def add(name: str, p: Any) -> None:
        if not isinstance(p, torch.Tensor):
            raise TypeError(
                f"AdaGC expects torch tensors (model.parameters() or model.named_parameters()), "
                f"got {type(p).__name__} for {name!r}"
            )
        if id(p) in seen:
            return  # tied weight: clipped once, checkpointed under its first name
        seen.add(id(p))
        names.append(name)
        tensors.append(p)

    for k, item in enumerate(list(params)):
        if isinstance(item, Mapping):  # a param group {"params": [...], ...}
            if "params" not in item:
                raise TypeError("a parameter group dict needs a 'params' entry")
            group = item["params"]
            group = [group] if isinstance(group, torch.Tensor) else list(group)
            for j, p in enumerate(group):
                if isinstance(p, tuple):
                    add(str(p[0]), p[1])
                else:
                    add(f"group{k}.{j}", p)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            add(item[0], item[1])
        else:
            add(str(len(names)), item)
    if not tensors:
        raise ValueError("AdaGC got an empty parameter list")
    return names, tensors


def _warn_unclipped(opt: torch.optim.Optimizer, known: set[int]) -> None:
    new = [
        f"param_groups[{i}][{j}] {tuple(p.shape)}"
        for i, group in enumerate(opt.param_groups)
        for j, p in enumerate(group["params"])
        if id(p) not in known and p.requires_grad
    ]
    if new:
        warnings.warn(
            f"AdaGC: {len(new)} optimizer parameter(s) added after the clipper was built are "
            f"not clipped: {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}. Build the "
            "clipper from all parameters (or a new one after add_param_group)",
            stacklevel=4,
        )


def _host_list(x: Any) -> list[Any] | None:
    """A 1-d tensor, array or list as a list of Python scalars (their types kept: a bool
    tensor gives bools), or ``None`` for anything else."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist() if x.dim() == 1 else None
    if isinstance(x, (list, tuple)):
        return list(x)
    tolist = getattr(x, "tolist", None)
    out = tolist() if callable(tolist) and getattr(x, "ndim", None) == 1 else None
    return out if isinstance(out, list) else None


def _is_dtensor(g: Any) -> bool:
    mod = sys.modules.get("torch.distributed.tensor")
    cls = getattr(mod, "DTensor", None) if mod is not None else None
    return cls is not None and isinstance(g, cls)


class AdaGC:
    """Adaptive per-tensor gradient clipping (AdaGC, arXiv 2502.11034) for PyTorch.

    Args:
        params: ``model.parameters()``, ``model.named_parameters()`` (names make checkpoints
            portable across frameworks) or param-group dicts. Parameters without ``.grad`` on a
            step (frozen, unused) are "absent": not clipped, their gamma unchanged.
        lambda_rel: relative threshold lambda_rel (> 0); tensor i is clipped to
            lambda_rel * gamma_i after warmup.
        beta: EMA coefficient beta of gamma_i, ``0 <= beta < 1``.
        warmup_steps: T_start, steps of global-norm clipping at ``lambda_abs`` first.
        lambda_abs: max global norm during warmup (> 0).
        eps: added to norms in denominators (> 0).
        granularity: ``"tensor"`` (AdaGC) or ``"global"`` (the AdaGC-Global ablation).
        shard_mode: ``"exact"`` (full-tensor norms for FSDP/TP DTensor gradients, one
            collective per process group) or ``"local"`` (AdaGC-Shard).
        nonfinite: ``"propagate"`` (default; leaves Inf/NaN for ``GradScaler`` to skip the step),
            ``"zero"`` or ``"raise"``. The AdaGC state never changes on a non-finite step.
        warmup_gamma: ``"clipped"`` (default; paper Algorithm 1, Megatron: gamma_i starts at
            the warmup minimum of clipped norms h * n_i) or ``"raw"`` (of unclipped norms n_i,
            as Paddle's ``ClipGradByAdaptiveNorm`` and ERNIE do); docs/spec.md §1.1.
        process_group: for sharded (DTensor) gradients, an explicit group (default: the
            DTensor's mesh). With ``pp_mesh`` and ``shard_mode="local"``: the group of every
            stage's shard ranks, for the one [G^2, flag] all-reduce (default: the gradients'
            mesh and ``pp_mesh`` flattened, when both are slices of one named mesh).
        pp_mesh: pipeline parallelism: the pipeline dimension as a 1-D ``DeviceMesh``
            (``mesh["pp"]``, as torchtitan's ``clip_grad_norm_`` takes it) or a
            ``ProcessGroup``; each stage builds its clipper from its own parameters. The
            warmup's global norm G then covers every stage and the non-finite decision (so
            the step counter k) is the same on every stage, at the cost of one 2-element
            all-reduce over the stages per step; per-tensor norms need nothing from them.
        fast_path: the fused CuPy kernels for CUDA gradients (three launches per step, no
            copies, torch's current stream; the state tensors are then updated in place, so a
            captured CUDA graph chains its steps). ``None`` (default): used when the gradients
            are on a CUDA device and CuPy is installed, else the generic torch path;
            ``False``: always the generic path; ``True``: required (``ValueError`` saying why
            when it cannot run, raised before anything is modified).

    Attributes:
        config: the validated ``AdaGCConfig``.
        state: the current ``AdaGCState`` (tensors on the gradients' device).
        names: parameter names in the order of ``state.gamma``.
        last_stats: the ``AdaGCStats`` of the last ``clip_()`` (or ``None``).
    """

    def __init__(
        self,
        params: Iterable[Any],
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
        process_group: Any = None,
        pp_mesh: Any = None,
        fast_path: bool | None = None,
        **unknown: Any,
    ) -> None:
        if "max_norm" in unknown:
            raise TypeError(
                "AdaGC has no max_norm: the warmup's max global norm (clip_grad_norm_'s "
                "max_norm) is lambda_abs, e.g. AdaGC(params, lambda_abs=1.0)"
            )
        if unknown:
            raise TypeError(f"AdaGC got unexpected keyword arguments {sorted(unknown)}")
        if isinstance(params, torch.nn.Module):
            params = params.named_parameters()  # AdaGC(model): its named parameters
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
        self.names, self.params = _collect(params)
        if fast_path not in (None, True, False):
            raise ValueError(f"fast_path must be None, True or False, got {fast_path!r}")
        self.fast_path = fast_path
        self.process_group = process_group
        if pp_mesh is not None:
            from adagc.adapters._torch_distributed import pipeline_group

            pipeline_group(pp_mesh)  # a wrong kind or a 2-D mesh fails here, not in a step
        self.pp_mesh = pp_mesh
        # gamma's dtype follows the parameters: float64 only for an all-float64 model.
        self.state: AdaGCState = adagc.init(
            [p.detach() for p in self.params], self.config, backend="torch"
        )
        self.last_stats: AdaGCStats | None = None
        # One step at a time: two threads stepping one clipper would lose updates of k.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # copy/pickle: a lock cannot be copied
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"AdaGC({len(self.params)} tensors, lambda_rel={c.lambda_rel}, beta={c.beta}, "
            f"warmup_steps={c.warmup_steps}, lambda_abs={c.lambda_abs}, "
            f"granularity={c.granularity!r})"
        )

    @torch.no_grad()
    def clip_(self) -> AdaGCStats:
        """Clip every parameter's ``.grad`` in place; return this step's ``AdaGCStats``.
        Thread-safe: calls from several threads are serialised (one step each)."""
        if torch.compiler.is_compiling():  # dynamo cannot trace a lock; compiled code is
            return self._clip()  # the caller's to serialise
        with self._lock:
            return self._clip()

    def _clip(self) -> AdaGCStats:
        grads: list[Any] = []
        for name, p in zip(self.names, self.params):
            g = p.grad
            if g is not None and g.is_sparse:
                raise TypeError(f"AdaGC does not support sparse gradients ({name!r})")
            grads.append(g)
        reducer = None
        # DTensor gradients exist only once torch.distributed.tensor was imported.
        if self.pp_mesh is not None or (
            "torch.distributed.tensor" in sys.modules and any(_is_dtensor(g) for g in grads)
        ):
            from adagc.adapters._torch_distributed import localize

            grads, reducer = localize(
                self.params, grads, self.process_group, self.pp_mesh, self.config.shard_mode
            )
        self._follow_device(grads)
        stats = self._fast_step(grads, reducer) if self.fast_path is not False else None
        if stats is None:
            _, self.state, stats = adagc.update(
                grads,
                self.state,
                self.config,
                backend="torch",
                inplace=True,
                reducer=reducer,
                names=self.names,
                fused=False,
            )
        self.last_stats = stats
        return stats

    def _fast_step(self, grads: list[Any], reducer: Any) -> AdaGCStats | None:
        """The fused CuPy step, or ``None`` for the generic path (``fast_path=None``)."""
        reason = fused_unavailable(grads, self.state, reducer)
        if reason is None:
            try:
                _, self.state, stats = fused_clip_(grads, self.state, self.config, names=self.names)
                return stats  # type: ignore[no-any-return]
            except Declined as exc:
                reason = str(exc)
        if self.fast_path:
            raise ValueError(
                f"fast_path=True but the CuPy fast path cannot run: {reason}. Use "
                "fast_path=None to fall back to the generic torch path when it cannot run, or "
                "fast_path=False to always use it."
            )
        return None

    def _follow_device(self, grads: list[Any]) -> None:
        """Move the state to the gradients' device (e.g. the model moved after construction),
        and promote gamma to float64 when every gradient became float64 (``model.double()``
        after construction: a float32 gamma would take norms above 3.4e38 for non-finite
        steps). Devices and dtypes are static metadata: no sync."""
        g = next((g for g in grads if g is not None), None)
        if g is None:
            return
        if g.device != self.state.gamma.device:
            self.state = AdaGCState(*(t.to(g.device) for t in self.state))
        gamma = self.state.gamma
        if (
            g.dtype == torch.float64
            and gamma.dtype != torch.float64
            and all(x is None or x.dtype == torch.float64 for x in grads)
        ):
            self.state = self.state._replace(gamma=gamma.double())

    def attach(self, optimizer: Any) -> _Attachment:
        """Clip before every ``optimizer.step()`` (a step pre-hook) and carry the AdaGC state in
        ``optimizer.state_dict()`` / ``load_state_dict()``, so every trainer that checkpoints
        the optimizer checkpoints AdaGC too. Takes a ``torch.optim.Optimizer`` or a wrapper of
        one (accelerate, Lightning). Returns a handle; ``handle.remove()`` detaches.

        Attaching the same clipper again is a no-op returning the same handle (never two clips
        a step); attaching a second clipper raises ``RuntimeError``. If the optimizer was loaded
        from a checkpoint with AdaGC state before ``attach``, that state is adopted here.

        Not for closures that compute gradients inside ``step(closure)`` (Lightning's automatic
        optimization): the pre-hook runs before the closure. Use the Lightning callback there.
        """
        opt = unwrap_optimizer(optimizer)
        current: _Attachment | None = getattr(opt, "_adagc_attachment", None)
        if current is not None:
            if current.clipper is self:
                return current
            raise RuntimeError(
                "this optimizer already has an AdaGC clipper attached; two would clip twice per "
                "step. Call handle.remove() on the first one's attach() handle"
            )
        pending = opt.param_groups[0].get(OPTIMIZER_KEY) if opt.param_groups else None
        if pending is not None:
            self.load_state_dict(pending)  # validated; on error nothing is changed
            del opt.param_groups[0][OPTIMIZER_KEY]

        known = {id(p) for p in self.params}
        counted = [sum(len(g["params"]) for g in opt.param_groups)]
        _warn_unclipped(opt, known)

        def step_hook(o: Any, args: Any, kwargs: Any) -> None:  # a pre-hook must return None
            n = sum(len(g["params"]) for g in o.param_groups)
            if n != counted[0]:  # parameters added after attach(): say so once
                counted[0] = n
                _warn_unclipped(o, known)
            self.clip_()

        def save_hook(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
            groups = [dict(g) for g in sd["param_groups"]]
            if groups:
                groups[0][OPTIMIZER_KEY] = self.state_dict()
            return {**sd, "param_groups": groups}

        def load_hook(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
            groups = [dict(g) for g in sd.get("param_groups", [])]
            saved = groups[0].pop(OPTIMIZER_KEY, None) if groups else None
            if saved is None:
                warnings.warn(
                    "the optimizer checkpoint has no AdaGC state (param_groups[0]"
                    f"[{OPTIMIZER_KEY!r}]): the clipper keeps its current state (step "
                    f"{int(self.state.step)}), it does not resume. Saved before attach()?",
                    stacklevel=3,
                )
            else:
                self.load_state_dict(saved)  # raises before the optimizer loads anything
            return {**sd, "param_groups": groups}

        handles = [
            opt.register_step_pre_hook(step_hook),
            opt.register_state_dict_post_hook(save_hook),
            opt.register_load_state_dict_pre_hook(load_hook),
        ]
        attachment = _Attachment(self, opt, handles)
        opt._adagc_attachment = attachment  # type: ignore[attr-defined]
        return attachment

    def metrics(self, prefix: str = "adagc/") -> dict[str, torch.Tensor]:
        """The last step's summary as 0-d tensors (no host sync until a logger reads them):
        ``clipped_fraction`` (share of tensors with h_i < 1), ``min_coefficient`` (min h_i)
        and ``global_norm`` (G before clipping). Empty before the first step."""
        s = self.last_stats
        if s is None:
            return {}
        return {
            f"{prefix}clipped_fraction": s.num_clipped.float() / len(self.params),
            f"{prefix}min_coefficient": s.coefficients.min().float(),
            f"{prefix}global_norm": s.global_norm.float(),
        }

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state in torch's idiom: tensors plus plain values (``torch.save``-able and
        ``torch.distributed.checkpoint``-friendly). With ``pp_mesh`` it also records
        ``pp_stage``, this rank's pipeline stage, which ``load_state_dict`` checks."""
        out = {
            "format": _TORCH_FORMAT,
            "config": self.config.to_dict(),
            "names": list(self.names),
            "step": self.state.step.clone(),
            "gamma": self.state.gamma.clone(),
            "seen": self.state.seen.clone(),
        }
        if self.pp_mesh is not None:  # each stage's state is its own: the loader checks it
            from adagc.adapters._torch_distributed import pipeline_rank

            out["pp_stage"] = pipeline_rank(self.pp_mesh)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load ``state_dict()`` output, or a portable ``adagc/1`` dict. Every value is
        validated (``adagc.from_portable``'s rules: gamma finite and >= 0, ``seen`` boolean,
        ``step`` a non-negative integer); a checkpoint of other parameters or a bad value raises
        ``CheckpointMismatchError`` naming it, and nothing is half-loaded. The loaded state
        is a copy: changing ``state_dict`` afterwards does not change the clipper. The live
        config wins over the saved one (except ``granularity``)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("format") == adagc.CHECKPOINT_FORMAT:
            self.from_portable(state_dict)
            return
        if state_dict.get("format") != _TORCH_FORMAT:
            raise CheckpointMismatchError(
                f"not an AdaGC checkpoint (format={state_dict.get('format')!r}); expected "
                f"{_TORCH_FORMAT!r} from AdaGC.state_dict() or {adagc.CHECKPOINT_FORMAT!r}"
            )
        absent = [k for k in ("config", "names", "step", "gamma", "seen") if k not in state_dict]
        if absent:
            raise CheckpointMismatchError(f"the {_TORCH_FORMAT} state_dict has no {absent} entry")
        self._check_stage(state_dict.get("pp_stage"))
        names = state_dict["names"]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise CheckpointMismatchError("state_dict 'names' must be a list of parameter names")
        saved = list(names)
        if saved != self.names:
            missing = [n for n in self.names if n not in saved]
            unexpected = [n for n in saved if n not in self.names]
            raise CheckpointMismatchError(
                "the checkpoint was saved for other parameters"
                + ("" if missing or unexpected else " (same names, different order)"),
                missing,
                unexpected,
            )
        # The same validation as every other load path: through the portable format.
        keys = self.names if self.config.granularity == "tensor" else [GLOBAL_KEY]
        vectors = {}
        for field in ("gamma", "seen"):
            values = _host_list(state_dict[field])
            if values is None or len(values) != len(keys):
                shape = tuple(getattr(state_dict[field], "shape", ()))
                raise CheckpointMismatchError(
                    f"checkpoint {field} must be a vector of {len(keys)} values, got "
                    f"{type(state_dict[field]).__name__} of shape {shape}"
                )
            vectors[field] = dict(zip(keys, values))
        self.from_portable(
            {
                "format": adagc.CHECKPOINT_FORMAT,
                "config": state_dict["config"],
                "step": state_dict["step"],
                **vectors,
            }
        )

    def _check_stage(self, saved: Any) -> None:
        """A pipeline stage refuses another stage's state (one checkpoint key shared by every
        stage keeps only one stage's copy in torch.distributed.checkpoint)."""
        if saved is None or self.pp_mesh is None:
            return
        from adagc.adapters._torch_distributed import pipeline_rank

        mine = pipeline_rank(self.pp_mesh)
        if saved != mine:
            raise CheckpointMismatchError(
                f"this state_dict holds pipeline stage {saved!r}'s AdaGC state; this clipper "
                f"is stage {mine}. Save every stage's state under its own key, e.g. "
                f"{{f'adagc_stage{{stage}}': clipper.state_dict()}}"
            )

    def to_portable(self) -> dict[str, Any]:
        """The framework-neutral ``adagc/1`` checkpoint (JSON-ready), keyed by parameter name."""
        return adagc.to_portable(self.state, self.config, self.names)

    def from_portable(self, checkpoint: Mapping[str, Any]) -> None:
        """Load an ``adagc/1`` checkpoint (from any framework) keyed by these parameter names."""
        self.state = adagc.from_portable(checkpoint, self.state, self.config, self.names)
