"""JAX / optax adapter: ``adagc(...)``, an optax ``GradientTransformation``.

    import optax
    from adagc.adapters.jax import adagc

    tx = optax.chain(adagc(lambda_rel=1.04, beta=0.99, warmup_steps=100), optax.adamw(3e-4))
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)   # inside jax.jit

It drops in where ``optax.clip_by_global_norm(1.0)`` stood: for the first ``warmup_steps``
(T_start) steps it *is* global-norm clipping at ``lambda_abs``; afterwards each leaf i is
clipped to ``lambda_rel * gamma_i``, gamma_i being the EMA (coefficient beta) of its own past
clipped norms.

The state is ``AdaGCTransformState``, a NamedTuple pytree of arrays: the core's ``step``,
``gamma`` and ``seen`` (one entry per array leaf of the gradient tree, in ``jax.tree_util``
order) and a record of the last update (norms, coefficients h_i, ``num_clipped``), for logging
from inside a jitted train step (``stats(opt_state)``). The transformation's ``AdaGCConfig``
rides in the state's tree structure (no leaves). ``jax.tree_util``, ``optax.tree_utils``
and orbax save and restore it as is. ``to_portable`` / ``from_portable`` convert it to the
framework-neutral ``adagc/1`` format keyed by the leaves' key paths (``"layer.kernel"``), the
names a PyTorch model's ``named_parameters()`` would use for the same nesting.

Flax: the state may sit in an ``nnx.Optimizer`` (whose ``opt_state`` leaves are ``nnx``
variables; ``from_portable`` writes into them in place) or a Linen ``TrainState``.
Flax is never imported here: its variables are recognised once ``flax.nnx`` is in
``sys.modules``.

The algorithm is ``adagc.update``; this module flattens pytrees, adds the collectives for
``shard_map`` and unflattens the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec
from jax.tree_util import keystr, tree_flatten_with_path

import adagc as _adagc  # the module; ``adagc`` below is the transformation
from adagc import AdaGCConfig, AdaGCState, AdaGCStats
from adagc.backends.jax import is_traced

__all__ = [
    "AdaGCTransformState",
    "adagc",
    "from_portable",
    "leaf_names",
    "state_specs",
    "stats",
    "to_portable",
]

_BACKEND = "jax"
AxisName = Hashable | tuple[Hashable, ...]
_ARRAYS = 7  # the array fields of AdaGCTransformState; ``config`` follows them

# The config rides in the state's treedef as a node without leaves (like ``None``): jit,
# orbax, ``tree_map`` and Flax see the seven arrays only, and a restored or re-created state
# (``tree_unflatten``, ``apply_if_finite``'s select, NNX's split/merge) keeps it.
with contextlib.suppress(ValueError):  # ValueError: already registered (a module re-import)
    jax.tree_util.register_pytree_node(AdaGCConfig, lambda cfg: ((), cfg), lambda cfg, _: cfg)


class AdaGCTransformState(NamedTuple):
    """The optax state of ``adagc(...)``; T is the number of array leaves of the gradients.

    The first three fields are the core's ``AdaGCState``; the others record the last update,
    for logging from inside a jitted train step. Every field is either the same on all devices
    of a ``shard_map`` (``[]`` fields) or one entry per leaf (``[T]`` fields, which differ per
    device only under ``shard_mode="local"``); see ``state_specs``.

    Attributes:
        step: int32 ``[]`` (int64 with x64): k, the finite steps completed so far.
        gamma: float32 ``[T]`` (``[1]`` for ``granularity="global"``; float64 with x64 and
            all-float64 leaves): gamma_i, EMA of leaf i's clipped norms (warmup: their minimum).
        seen: bool ``[T]`` (``[1]`` for global): whether gamma_i has been initialised.
        norms: float ``[T]``: n_i, each leaf's gradient norm at the last update (0 before any).
        coefficients: float ``[T]``: h_i applied at the last update (1 before any).
        global_norm: float ``[]``: G before clipping at the last update.
        nonfinite: bool ``[]``: the last update saw a NaN/Inf norm (and changed no state).
        config: the ``AdaGCConfig`` the transformation was built with. Static: it is part of
            the tree structure, not a leaf. ``None`` for a state built by hand.

    In an ``nnx.Optimizer`` the array fields are ``nnx`` variables (``OptArray``);
    ``core`` and ``num_clipped`` read their values.
    """

    step: Any
    gamma: Any
    seen: Any
    norms: Any
    coefficients: Any
    global_norm: Any
    nonfinite: Any
    config: AdaGCConfig | None = None

    @property
    def core(self) -> AdaGCState:
        """The ``adagc.AdaGCState`` (step, gamma, seen) the core works on."""
        return AdaGCState(_value(self.step), _value(self.gamma), _value(self.seen))

    @property
    def num_clipped(self) -> Any:
        """How many leaves the last update clipped (h_i < 1; none on a non-finite step)."""
        coefficients, nonfinite = _value(self.coefficients), _value(self.nonfinite)
        return jnp.sum(jnp.logical_and(coefficients < 1, jnp.logical_not(nonfinite)))


def _state(
    core: AdaGCState, stats: AdaGCStats | None, n: int, config: AdaGCConfig | None = None
) -> AdaGCTransformState:
    """The transformation state; before any update (``stats is None``) the record fields take
    the dtypes and shapes an update produces, so a jitted step sees one state type throughout
    (no recompilation)."""
    step, gamma, seen = core
    if stats is None:
        dt = gamma.dtype
        if not is_traced(gamma):
            # Uncommitted, like every optax init state: a jitted train step given a mix of
            # committed and uncommitted arrays compiles again once its outputs (all
            # committed) come back; all uncommitted, it compiles once.
            step, gamma, seen = (jnp.asarray(np.asarray(x)) for x in (step, gamma, seen))
        zeros, ones = jnp.zeros(n, dt), jnp.ones(n, dt)
        return AdaGCTransformState(
            step, gamma, seen, zeros, ones, jnp.zeros((), dt), jnp.zeros((), bool), config
        )
    return AdaGCTransformState(
        step,
        gamma,
        seen,
        stats.norms,
        stats.coefficients,
        stats.global_norm,
        stats.nonfinite,
        config,
    )


def state_specs(state: AdaGCTransformState, axis_name: AxisName | None = None) -> Any:
    """``PartitionSpec`` s for passing the state through ``shard_map``'s ``in_specs`` /
    ``out_specs``: ``P()`` for every field, except that with ``shard_mode="local"`` (give its
    ``axis_name``) each device keeps its own ``[T]`` fields: ``P(axis_name)``, a global array of
    ``devices * T`` entries."""
    per_leaf = PartitionSpec() if axis_name is None else PartitionSpec(axis_name)
    specs = [PartitionSpec() if _value(x).ndim == 0 else per_leaf for x in _fields(state)]
    return _with_arrays(state, specs)


def leaf_names(tree: Any) -> list[str]:
    """The names of the array leaves of ``tree`` in state order: key paths joined by dots
    (``{"layer": {"kernel": x}}`` -> ``"layer.kernel"``; list positions are numbers). An
    ``nnx.State`` (``nnx.state(model, nnx.Param)``) is named by its arrays, as
    ``nnx.Optimizer`` hands them to the transformation: ``"linear.kernel"``."""
    _check_params(tree)
    return [keystr(path, simple=True, separator=".") for path, _ in _flat(_unwrap(tree))[0]]


def _variable_types() -> tuple[type, ...]:
    """Flax NNX's variable classes, once ``flax.nnx`` has been imported (by the user: this
    module never imports Flax); ``()`` before that."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return ()
    found = (vars(nnx).get("Variable"), vars(nnx).get("VariableState"))  # no deprecated alias
    return tuple(t for t in found if isinstance(t, type))


def _value(x: Any) -> Any:
    """The array an NNX variable (``nnx.Param``, ``OptArray``) holds; anything else as is."""
    types = _variable_types()
    if types and isinstance(x, types):
        var: Any = x
        return var.get_value() if hasattr(var, "get_value") else var.value
    return x


def _unwrap(tree: Any) -> Any:
    """``tree`` with every NNX variable replaced by its array (what ``nnx.as_pure`` does)."""
    types = _variable_types()
    if not types:
        return tree
    return jax.tree_util.tree_map(_value, tree, is_leaf=lambda x: isinstance(x, types))


def _check_params(tree: Any) -> None:
    """A Flax module or optimizer is not the parameter tree: say which one to pass."""
    nnx = sys.modules.get("flax.nnx")
    graph_types = (
        tuple(
            t for t in (vars(nnx).get("Module"), vars(nnx).get("Optimizer")) if isinstance(t, type)
        )
        if nnx is not None
        else ()
    )
    if graph_types and isinstance(tree, graph_types):
        raise TypeError(
            f"got an nnx.{type(tree).__name__} where the parameter tree belongs; pass the "
            "state the optimizer was built on: nnx.state(model, wrt), e.g. "
            "nnx.state(model, nnx.Param)"
        )


def _flat(tree: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """Leaves with their paths. ``None`` and ``optax.MaskedNode`` are empty subtrees in JAX,
    so they take no part: they are not leaves of the state either."""
    return tree_flatten_with_path(tree)


def adagc(
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
    config: AdaGCConfig | None = None,
    axis_name: AxisName | None = None,
    param_specs: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaGC (arXiv 2502.11034) as an optax gradient transformation.

    Args:
        lambda_rel: relative threshold lambda_rel (> 0): after warmup leaf i is clipped to
            ``lambda_rel * gamma_i``.
        beta: EMA coefficient beta of gamma_i, ``0 <= beta < 1``.
        warmup_steps: T_start, the number of finite steps of global-norm clipping first.
        lambda_abs: the warmup's max global norm (> 0), like ``clip_by_global_norm``'s.
        eps: added to norms in denominators (> 0).
        granularity: ``"tensor"`` (AdaGC) or ``"global"`` (the AdaGC-Global ablation).
        shard_mode: with ``axis_name``: ``"exact"`` clips by full-tensor norms (all per-leaf
            partial sums of squares reduced in ONE ``psum``), ``"local"`` is AdaGC-Shard (each
            device clips its shard by the shard's own norm and keeps its own gamma; only the
            warmup global norm and the non-finite flag ride in one 2-element ``psum``, so every
            device makes the same phase and non-finite decision).
        nonfinite: ``"propagate"`` (default: NaN/Inf updates pass through, for
            ``optax.apply_if_finite``), ``"zero"``, or ``"raise"`` (eager calls only: it needs
            a host read, which ``jax.jit`` cannot do). The state never changes on such a step.
        warmup_gamma: ``"clipped"`` (default; paper Algorithm 1, Megatron: gamma_i starts at
            the warmup minimum of clipped norms h * n_i) or ``"raw"`` (of unclipped norms n_i,
            as Paddle's ``ClipGradByAdaptiveNorm`` and ERNIE do); docs/spec.md §1.1.
        config: an ``adagc.AdaGCConfig`` instead of the keyword arguments above.
        axis_name: inside ``shard_map``, the mesh axis name (or tuple of names) the gradients
            are sharded over. ``None`` (default) for whole arrays: plain ``jax.jit``, also with
            ``NamedSharding``-sharded arrays (XLA then computes full-tensor norms itself), or
            data parallel after the gradient ``pmean``.
        param_specs: with ``axis_name`` and ``"exact"``, the ``PartitionSpec`` pytree of the
            gradients (the ``in_specs`` given to ``shard_map``), so that a leaf replicated over
            some of the axes counts once in its norm. ``None``: every leaf is sharded over
            every axis of ``axis_name``. (``"local"`` ignores it: its warmup global norm sums
            every device's shards, replicated leaves once per device.)

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is an
        ``AdaGCTransformState``.
    """
    if config is None:
        config = AdaGCConfig(
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
    elif not isinstance(config, AdaGCConfig):
        raise TypeError(f"config must be an adagc.AdaGCConfig, got {type(config).__name__}")
    cfg = config
    axes = _axes(axis_name)

    def init_fn(params: Any) -> AdaGCTransformState:
        leaves = [x for _, x in _flat(_unwrap(params))[0]]
        _check_leaves(leaves, leaf_names(params))
        core = _adagc.init(leaves, cfg, backend=_BACKEND)
        return _state(core, None, len(leaves), cfg)

    def update_fn(
        updates: Any, state: AdaGCTransformState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, AdaGCTransformState]:
        del params, extra_args
        pairs, treedef = _flat(updates)
        leaves = [x for _, x in pairs]
        names = [keystr(p, simple=True, separator=".") for p, _ in pairs]
        _check_leaves(leaves, names)
        if cfg.nonfinite == "raise" and any(is_traced(x) for x in leaves):
            raise ValueError(
                "nonfinite='raise' needs a host read, which jax.jit cannot do; call "
                "tx.update outside jit, or use nonfinite='propagate' with "
                "optax.apply_if_finite (or nonfinite='zero') inside jit"
            )
        reducer = None if axes is None else _ShardMapReducer(axes, param_specs, updates)
        if not isinstance(state, AdaGCTransformState):
            raise TypeError(
                f"state must be the AdaGCTransformState from this transformation's init, got "
                f"{type(state).__name__}"
            )
        clipped, new, stats = _adagc.update(
            leaves, state.core, cfg, backend=_BACKEND, reducer=reducer, names=names
        )
        return treedef.unflatten(clipped), _state(new, stats, len(leaves), cfg)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _axes(axis_name: AxisName | None) -> tuple[Hashable, ...] | None:
    if axis_name is None:
        return None
    axes = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)
    if not axes or not all(isinstance(a, Hashable) for a in axes):
        raise TypeError(f"axis_name must be a mesh axis name or a tuple of them, got {axis_name!r}")
    return axes


def _check_leaves(leaves: Sequence[Any], names: Sequence[str]) -> None:
    """Leaves must be arrays (of one framework: JAX); the core checks their dtypes."""
    for name, x in zip(names, leaves):
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise TypeError(
                f"adagc got a leaf {name!r} of type {type(x).__name__}; every leaf of the "
                "gradient pytree must be an array (None and optax.MaskedNode are skipped)"
            )


class _ShardMapReducer:
    """Collectives inside ``shard_map`` (spec §2). ``sum_squares``: ONE ``psum`` over all of
    ``axis_name`` of the per-leaf partial sums of squares. A leaf replicated over some of those
    axes holds the same partial sum on each of their devices, so its entry is divided by their
    size first: it counts once (exactly so for power-of-two axis sizes; Paddle's fleet does the
    same). Summing every entry over every axis also makes the result the same on all devices
    by construction, which ``shard_map``'s replication check needs."""

    def __init__(self, axes: tuple[Hashable, ...], specs: Any, updates: Any) -> None:
        self.axes = axes
        n = len(_flat(updates)[0])
        if specs is None:
            self.unsharded: list[tuple[Hashable, ...]] = [()] * n
        else:
            self.unsharded = [
                tuple(a for a in axes if a not in _spec_axes(spec))
                for spec in _spec_leaves(specs, n)
            ]

    def sum_squares(self, sq: jax.Array) -> jax.Array:
        if any(self.unsharded):
            size = {a: _axis_size(a) for a in self.axes}  # static inside shard_map
            weight = np.array([1.0 / math.prod(size[a] for a in u) for u in self.unsharded])
            sq = sq * weight.astype(sq.dtype)
        return jax.lax.psum(sq, self.axes)

    def sum(self, x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, self.axes)


def _axis_size(axis: Hashable) -> int:
    """The size of a mapped mesh axis, a static int (``psum(1)`` where older JAX lacks
    ``lax.axis_size``)."""
    fn = getattr(jax.lax, "axis_size", None)
    return int(fn(axis) if fn is not None else jax.lax.psum(1, axis))


def _spec_leaves(specs: Any, n: int) -> list[Any]:
    leaves = jax.tree_util.tree_leaves(
        specs, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None
    )
    if len(leaves) != n:
        raise ValueError(
            f"param_specs has {len(leaves)} PartitionSpec leaves but the gradients have {n} "
            "array leaves; pass the same spec pytree given to shard_map's in_specs"
        )
    return leaves


def _spec_axes(spec: Any) -> set[Hashable]:
    if spec is None:
        return set()
    if not isinstance(spec, PartitionSpec):
        raise TypeError(f"param_specs leaves must be PartitionSpec, got {type(spec).__name__}")
    used: set[Hashable] = set()
    for entry in spec:
        if entry is None:
            continue
        used.update(entry if isinstance(entry, tuple) else (entry,))
    return used


# -- checkpoints and stats ---------------------------------------------------------------------


def _is_state(x: Any) -> bool:
    return isinstance(x, AdaGCTransformState)


def _find_state(opt_state: Any) -> tuple[AdaGCTransformState, Callable[[Any], Any]]:
    """The one ``AdaGCTransformState`` inside an optimizer state (of ``optax.chain``,
    ``MultiSteps``, ``masked``, ...; an ``nnx.Optimizer`` or its ``opt_state``; a Linen
    ``TrainState``), and a function that returns ``opt_state`` with it replaced."""
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_state) if _is_state(x)]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one AdaGCTransformState in the optimizer state, found "
            f"{len(found)}; pass the state of the optimizer that has one adagc(...) in it "
            "(optax: opt_state; Flax NNX: optimizer.opt_state; Linen: train_state.opt_state)"
        )

    def replace(new: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda x: new if _is_state(x) else x, opt_state, is_leaf=_is_state
        )

    return found[0], replace


def _fields(state: AdaGCTransformState) -> tuple[Any, ...]:
    """The seven array fields (NNX variables in an ``nnx.Optimizer``), without the config."""
    return tuple(state)[:_ARRAYS]


def _with_arrays(state: AdaGCTransformState, arrays: Sequence[Any]) -> AdaGCTransformState:
    """``state`` with its seven array fields replaced (the config kept)."""
    return state._replace(**dict(zip(AdaGCTransformState._fields[:_ARRAYS], arrays)))


def _arrays(state: AdaGCTransformState) -> AdaGCTransformState:
    """The state with NNX variables replaced by their arrays."""
    return _with_arrays(state, [_value(x) for x in _fields(state)])


def _live_config(state: AdaGCTransformState, config: AdaGCConfig | None) -> AdaGCConfig:
    """The config of the transformation whose state this is; ``config`` (if given) must be
    the same one."""
    if config is not None and not isinstance(config, AdaGCConfig):
        raise TypeError(f"config must be an adagc.AdaGCConfig, got {type(config).__name__}")
    own = state.config
    if own is None:
        if config is None:
            raise ValueError(
                "this AdaGCTransformState carries no config (it was not made by an "
                "adagc(...) transformation's init or update); pass config=, the AdaGCConfig "
                "the transformation was built with"
            )
        return config
    if config is not None and config != own:
        diff = "; ".join(
            f"{f.name}={getattr(config, f.name)!r} passed, {getattr(own, f.name)!r} in the "
            "transformation"
            for f in dataclasses.fields(AdaGCConfig)
            if getattr(config, f.name) != getattr(own, f.name)
        )
        raise ValueError(
            f"config= does not match the config of the adagc(...) transformation this state "
            f"belongs to ({diff}); leave config= out (the state carries its own) or pass the "
            "same config"
        )
    return own


def to_portable(opt_state: Any, params: Any, config: AdaGCConfig | None = None) -> dict[str, Any]:
    """The ``adagc/1`` checkpoint (JSON-ready) of the AdaGC state inside ``opt_state``, keyed
    by the key paths of ``params`` (the tree the transformation sees; with Flax NNX
    ``nnx.state(model, nnx.Param)``, the ``wrt`` of the optimizer). The config recorded is
    the transformation's own, which the state carries; ``config``, if given, must equal it
    (a ``ValueError`` otherwise)."""
    state, _ = _find_state(opt_state)
    cfg = _live_config(state, config)
    return _adagc.to_portable(_arrays(state).core, cfg, leaf_names(params))


def from_portable(
    checkpoint: Mapping[str, Any],
    opt_state: Any,
    params: Any,
    config: AdaGCConfig | None = None,
) -> Any:
    """``opt_state`` with its AdaGC state loaded from an ``adagc/1`` checkpoint (written by any
    framework), matched by the key paths of ``params``. The live config (the one the state
    carries; ``config``, if given, must equal it) wins over the checkpoint's, except that a
    granularity mismatch is an error. Raises ``CheckpointMismatchError`` naming
    missing/unexpected leaves; nothing is half-loaded.

    ``opt_state`` may be any pytree holding the state: an optax chain's state, a Linen
    ``TrainState`` (a new one is returned). In an ``nnx.Optimizer`` (``optimizer.opt_state``
    or the optimizer itself) the state's variables are written in place, where NNX keeps
    them, and ``opt_state`` itself is returned."""
    state, replace = _find_state(opt_state)
    cfg = _live_config(state, config)
    arrays = _arrays(state)
    core = _adagc.from_portable(checkpoint, arrays.core, cfg, leaf_names(params))
    new = _state(core, None, arrays.norms.shape[0], state.config)
    types = _variable_types()
    fields: tuple[Any, ...] = _fields(state)
    if types and any(isinstance(x, types) for x in fields):
        if not all(isinstance(x, types) for x in fields):
            raise TypeError(
                "the AdaGCTransformState mixes NNX variables and arrays; pass "
                "optimizer.opt_state of an nnx.Optimizer, or a plain optax state"
            )
        for var, x in zip(fields, _fields(new)):
            if hasattr(var, "set_value"):
                var.set_value(x)
            else:
                var.value = x
        return opt_state
    return replace(new)


def stats(opt_state: Any) -> AdaGCStats:
    """What the last update of the ``adagc(...)`` inside ``opt_state`` did, as arrays (no
    device-to-host read): call it inside a jitted train step for its metrics.

    ``opt_state`` is any optimizer state holding one ``AdaGCTransformState``: of
    ``optax.chain``, ``optax.MultiSteps``, ``optax.masked``, ``apply_if_finite``; an
    ``nnx.Optimizer`` or its ``opt_state``; a Linen ``TrainState``.

    Returns:
        ``adagc.AdaGCStats``: ``norms`` and ``coefficients`` ``[T]``, ``global_norm`` and
        ``clipped_global_norm`` ``[]``, ``num_clipped`` (int ``[]``), ``nonfinite`` (bool
        ``[]``) and ``warmup`` (bool ``[]``: the update was a warmup step; ``None`` for a
        state that carries no config). Before the first update: norms 0, coefficients 1.
    """
    state, _ = _find_state(opt_state)
    s = _arrays(state)
    hn = s.coefficients * s.norms
    warmup = None
    if s.config is not None:
        # k before the last update: step - 1 after a finite one, step after a skipped one.
        before = jnp.where(s.nonfinite, s.step, s.step - 1)
        warmup = before < s.config.warmup_steps
    return AdaGCStats(
        norms=s.norms,
        coefficients=s.coefficients,
        global_norm=s.global_norm,
        clipped_global_norm=jnp.sqrt(jnp.sum(hn * hn)),
        num_clipped=s.num_clipped,
        nonfinite=s.nonfinite,
        warmup=warmup,
    )
