"""AdaGC, written once against the array protocol (spec §1-3).

Every decision that depends on array values (warmup or adaptive phase, clip or not,
non-finite step) is a ``where`` on arrays, never a Python ``if``, so this code runs under
``jax.jit`` and makes no device-to-host read on accelerators. Python ``if`` appears only on
static facts: the config, which gradients are ``None``/empty/repeated, array shapes and dtypes.

Paper symbols: lambda_abs (warmup max norm), T_start = ``warmup_steps``, lambda_rel (relative
threshold), beta (EMA coefficient), gamma_i (EMA of tensor i's clipped norm), h_i (clip
coefficient).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from ._config import AdaGCConfig
from ._dispatch import backend_for, check_owner, get_backend
from ._errors import NonFiniteGradientError, NotWritableError, StateMismatchError
from ._protocol import Array, ArrayBackend, DType, Reducer
from ._types import AdaGCState, AdaGCStats

__all__ = ["generic_update", "init", "update"]

_FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


@dataclass(frozen=True)
class Layout:
    """Static facts about one list of gradients (no array values are read)."""

    used: list[Array | None]
    """The gradients that take part: ``None`` for absent and repeated (tied) ones."""
    ties: list[tuple[int, int]]
    """``(j, i)``: position j holds the same object as the earlier position i."""
    all_float64: bool
    """Every present gradient is float64 (decides gamma's dtype at ``init``)."""


def _as_list(grads: Any) -> list[Any]:
    if isinstance(grads, (list, tuple)):
        return list(grads)
    kind = type(grads).__name__
    hint = ""
    if isinstance(grads, dict):
        hint = " For a pytree of gradients use adagc.adapters.jax.adagc (optax)."
    elif hasattr(grads, "shape"):
        hint = " Wrap a single array in a list: [grad]."
    raise TypeError(f"grads must be a list or tuple of arrays (or None), got {kind}.{hint}")


def _never() -> bool:
    return False


def inspect_gradients(xp: ArrayBackend, grads: Sequence[Array | None]) -> Layout:
    """Classify gradients without reading their values (spec §3: absent, empty, tied)."""
    used: list[Array | None] = []
    ties: list[tuple[int, int]] = []
    first: dict[int, int] = {}
    by_dtype: dict[Any, int] = {}
    # One tight loop: with thousands of small tensors this runs on every step. Empty tensors
    # need no case of their own: their sum of squares is 0, so they are "not observed".
    setdefault, dtype_first = first.setdefault, by_dtype.setdefault
    # Under a graph compiler (torch.compile) identities are not looked at: a guard on each
    # gradient's id() would recompile every step. Adapters pass each parameter once.
    ties_checked = not getattr(xp, "compiling", _never)()
    for j, g in enumerate(grads):
        if g is None:
            used.append(None)
            continue
        i = setdefault(id(g), j) if ties_checked else j
        if i != j:
            ties.append((j, i))
            used.append(None)
            continue
        dtype_first(g.dtype, j)  # names are looked up once per distinct dtype, below
        used.append(g)
    names = {xp.dtype_name(grads[j]): j for j in by_dtype.values()}
    bad = set(names) - _FLOAT_DTYPES
    if bad:
        j = min(names[n] for n in bad)
        raise TypeError(
            f"gradient {j} has dtype {xp.dtype_name(grads[j])}; AdaGC clips floating-point "
            f"gradients ({', '.join(sorted(_FLOAT_DTYPES))})"
        )
    return Layout(used, ties, set(names) == {"float64"})


def _resolve_backend(
    backend: str | ArrayBackend | None, grads: Sequence[Any], state: AdaGCState | None
) -> ArrayBackend:
    if backend is not None:
        if isinstance(backend, str):
            check_owner(backend, grads, None if state is None else state.gamma)
        return get_backend(backend)
    fallback = () if state is None else (state.gamma,)
    # The state must come from the same framework as the gradients.
    arrays = list(grads) if state is None else [*grads, state.gamma]
    return backend_for(arrays, fallback)


def init(
    grads: Sequence[Array | None],
    cfg: AdaGCConfig | None = None,
    *,
    backend: str | ArrayBackend | None = None,
) -> AdaGCState:
    """A fresh state for this list of gradients: k = 0, no gamma seen yet.

    gamma is float64 when every gradient is float64 and float32 otherwise; it lives on the
    first gradient's device. Only shapes and dtypes are read, so placeholder arrays do.
    """
    cfg = AdaGCConfig() if cfg is None else cfg
    _check_config(cfg)
    grads = _as_list(grads)
    xp = _resolve_backend(backend, grads, None)
    layout = inspect_gradients(xp, grads)
    like = next((g for g in grads if g is not None), None)
    n = 1 if cfg.granularity == "global" else len(grads)
    dtype: DType = "float64" if layout.all_float64 and like is not None else "float32"
    return AdaGCState(
        step=xp.asarray(0, "int", like=like),
        gamma=xp.asarray([0.0] * n, dtype, like=like),
        seen=xp.asarray([False] * n, "bool", like=like),
    )


def update(
    grads: Sequence[Array | None],
    state: AdaGCState,
    cfg: AdaGCConfig | None = None,
    *,
    backend: str | ArrayBackend | None = None,
    inplace: bool = False,
    reducer: Reducer | None = None,
    names: Sequence[str] | None = None,
    fused: bool | None = None,
) -> tuple[list[Array | None], AdaGCState, AdaGCStats]:
    """One AdaGC step: returns ``(clipped_grads, new_state, stats)``.

    Args:
        grads: a list/tuple of gradient arrays of one framework; ``None`` for absent ones.
        state: from ``init`` (or a previous ``update``) for the same list of tensors.
        cfg: the hyper-parameters; ``AdaGCConfig()`` (the paper's defaults) when omitted.
        backend: force a backend by name, module path or object (default: from the arrays).
        inplace: write the clipped values into ``grads`` (not for JAX). Otherwise inputs are
            never written; an output may be the input itself where its coefficient is 1.
        reducer: collectives for sharded gradients (set by the framework adapters).
        names: tensor names, used in error messages.
        fused: ``None`` uses the backend's fused fast path when it has one, ``False`` forces
            the generic path (the fast path's oracle), ``True`` requires the fast path.
    """
    cfg = AdaGCConfig() if cfg is None else cfg
    _check_config(cfg)
    grads = _as_list(grads)
    if not isinstance(state, AdaGCState):
        raise TypeError(
            f"state must be an AdaGCState from adagc.init(...), got {type(state).__name__}"
        )
    if names is not None and len(names) != len(grads):
        raise ValueError(
            f"got {len(names)} names for {len(grads)} gradients; give one per gradient"
        )
    xp = _resolve_backend(backend, grads, state)
    if inplace and not xp.supports_inplace:
        raise TypeError(
            f"the {xp.name} backend has immutable arrays; call update(..., inplace=False)"
        )
    check_state(xp, state, len(grads), cfg)  # before any fast path sees the state
    fast = getattr(xp, "fused_update", None)
    if fused and fast is None:
        raise ValueError(f"the {xp.name} backend has no fused fast path; use fused=None/False")
    if fast is not None and fused is not False:
        result = fast(grads, state, cfg, inplace=inplace, reducer=reducer, names=names)
        if result is not None:  # None: the fast path declined (e.g. an unsupported layout)
            return result  # type: ignore[no-any-return]
        if fused:
            raise ValueError(f"the {xp.name} fused fast path cannot handle this call")
    return generic_update(grads, state, cfg, xp, inplace=inplace, reducer=reducer, names=names)


def check_state(xp: ArrayBackend, state: AdaGCState, n_grads: int, cfg: AdaGCConfig) -> None:
    """Raise ``StateMismatchError`` if ``state`` was built for another list of tensors."""
    expected = 1 if cfg.granularity == "global" else n_grads
    got = xp.size(state.gamma)
    if got != expected or xp.size(state.seen) != got or xp.size(state.step) != 1:
        if cfg.granularity == "global":
            what = "granularity='global' keeps 1 gamma"
        else:
            what = f"granularity='tensor' keeps one gamma per tensor, {expected} here"
        raise StateMismatchError(
            f"the AdaGC state has {got} gamma entries but {what} ({n_grads} gradients). "
            "The state was built for other tensors or another granularity; build a new one "
            "with adagc.init(grads, cfg) or load the matching checkpoint."
        )


def generic_update(
    grads: Sequence[Array | None],
    state: AdaGCState,
    cfg: AdaGCConfig,
    xp: ArrayBackend,
    *,
    inplace: bool = False,
    reducer: Reducer | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[Array | None], AdaGCState, AdaGCStats]:
    """The generic algorithm over any backend; fused fast paths are tested against it."""
    # Non-finite steps compute with NaN/Inf on purpose; a backend may silence its warnings.
    with getattr(xp, "quiet", nullcontext)():
        return _generic_update(grads, state, cfg, xp, inplace, reducer, names)


def _generic_update(
    grads: Sequence[Array | None],
    state: AdaGCState,
    cfg: AdaGCConfig,
    xp: ArrayBackend,
    inplace: bool,
    reducer: Reducer | None,
    names: Sequence[str] | None,
) -> tuple[list[Array | None], AdaGCState, AdaGCStats]:
    grads = list(grads)
    check_state(xp, state, len(grads), cfg)
    layout = inspect_gradients(xp, grads)
    step, gamma, seen = state
    dtype: DType = "float64" if xp.dtype_name(gamma) == "float64" else "float32"
    eps, beta = cfg.eps, cfg.beta

    # Norms. Absent, empty and repeated tensors count 0, which makes them "not observed".
    if any(u is not None for u in layout.used):
        sq = xp.sum_squares(layout.used, dtype)
    else:  # every gradient absent: the zeros must live where the state lives
        sq = xp.asarray([0.0] * len(grads), dtype, like=gamma)
    if reducer is not None and cfg.shard_mode == "exact":
        sq = reducer.sum_squares(sq)  # one collective per process group: full-tensor norms
    g2 = xp.sum(sq)
    bad = xp.logical_not(xp.logical_and(xp.all(xp.isfinite(sq)), xp.isfinite(g2)))
    if reducer is not None and (cfg.shard_mode == "local" or getattr(reducer, "stages", False)):
        # AdaGC-Shard: per-shard norms, but the warmup global norm and the non-finite
        # decision must agree across ranks: both ride in one 2-element SUM all-reduce.
        # Pipeline stages (``reducer.stages``) hold different tensors: in exact mode too, G
        # and the flag are summed over the stages, so every stage keeps the same k.
        total = reducer.sum(xp.stack([g2, xp.astype(bad, dtype)]))
        g2 = total[0]
        bad = xp.logical_or(total[1] > 0, xp.logical_not(xp.isfinite(g2)))
    norms = xp.sqrt(sq)
    global_norm = xp.sqrt(g2)
    observed = sq > 0  # False for NaN too; non-finite steps are masked below anyway
    warm = step < cfg.warmup_steps
    h_warm = xp.minimum(cfg.lambda_abs / (global_norm + eps), 1.0)

    if cfg.granularity == "tensor":
        # Warmup: global-norm clipping; gamma_i = running minimum of the clipped norms
        # h * n_i (warmup_gamma="clipped") or of the raw norms n_i ("raw").
        c = norms if cfg.warmup_gamma == "raw" else h_warm * norms
        gamma_w = xp.where(seen, xp.minimum(gamma, c), c)
        # Adaptive: clip n_i above t_i = lambda_rel * gamma_i; EMA of min(n_i, t_i).
        t = cfg.lambda_rel * gamma
        clip = xp.logical_and(xp.logical_and(observed, seen), norms > t)
        h_adapt = xp.where(clip, t / (norms + eps), 1.0)
        gamma_a = xp.where(seen, beta * gamma + (1.0 - beta) * xp.minimum(norms, t), norms)
        coef = xp.where(observed, xp.where(warm, h_warm, h_adapt), 1.0)
        gamma_new = xp.where(observed, xp.where(warm, gamma_w, gamma_a), gamma)
        seen_new = xp.logical_or(seen, observed)
    else:
        # AdaGC-Global: one gamma for the global norm G (the authors' code). Its warmup
        # minimum is of the clipped G, min(G, lambda_abs), or of the raw G.
        g_obs = global_norm > 0
        m = global_norm if cfg.warmup_gamma == "raw" else xp.minimum(global_norm, cfg.lambda_abs)
        gamma_w = xp.where(seen, xp.minimum(gamma, m), m)
        t = cfg.lambda_rel * gamma
        clip = xp.logical_and(xp.logical_and(g_obs, seen), global_norm > t)
        h_adapt = xp.where(clip, t / (global_norm + eps), 1.0)
        gamma_a = xp.where(
            seen, beta * gamma + (1.0 - beta) * xp.minimum(global_norm, t), global_norm
        )
        coef = xp.where(observed, xp.where(warm, h_warm, h_adapt), 1.0)
        gamma_new = xp.where(g_obs, xp.where(warm, gamma_w, gamma_a), gamma)
        seen_new = xp.logical_or(seen, g_obs)

    # The one device-to-host read AdaGC makes, and only because the user asked for it.
    if cfg.nonfinite == "raise" and bool(xp.to_numpy(bad)):
        raise NonFiniteGradientError.from_finite(xp.to_numpy(xp.isfinite(sq)).tolist(), names)
    applied = xp.where(bad, 0.0 if cfg.nonfinite == "zero" else 1.0, coef)
    num_clipped = xp.sum(xp.astype(xp.logical_and(coef < 1.0, xp.logical_not(bad)), "int"))
    new_state = AdaGCState(
        step=xp.where(bad, step, step + 1),
        gamma=xp.where(bad, gamma, gamma_new),
        seen=xp.where(bad, seen, seen_new),
    )
    zero = bad if cfg.nonfinite == "zero" else None
    try:
        clipped = xp.scale(layout.used, applied, zero, inplace)
    except NotWritableError as exc:  # raised before anything was written: add the name
        if names is None or exc.index >= len(names):
            raise
        raise NotWritableError(exc.index, exc.why, names[exc.index]) from None
    out: list[Array | None] = [
        c if u is not None else g for c, u, g in zip(clipped, layout.used, grads)
    ]
    for j, i in layout.ties:
        out[j] = out[i]
    hn = applied * norms
    stats = AdaGCStats(
        norms=norms,
        coefficients=applied,
        global_norm=global_norm,
        clipped_global_norm=xp.sqrt(xp.sum(hn * hn)),
        num_clipped=num_clipped,
        nonfinite=bad,
        warmup=warm,
    )
    return out, new_state, stats


def _check_config(cfg: Any) -> None:
    if not isinstance(cfg, AdaGCConfig):
        raise TypeError(f"cfg must be an adagc.AdaGCConfig, got {type(cfg).__name__}")
