"""A NumPy mirror of ``backends/_cuda/adagc_kernels.cu``, loop by loop.

Every float32 operation of the kernels is a separate IEEE mul/add/div/sqrt without
flush-to-zero (written as inline PTX there), and NumPy's float32 scalar and array operations are
the same IEEE operations, so this mirror reproduces the kernels' results bit for bit when it
follows their order: the same chunk boundaries (the planner's table), the same thread-to-element
assignment (scalar head, 16-byte vectors, scalar tail), the same warp and block reduction trees,
and the finalize kernel's per-tensor logic line by line. On a GPU the tests compare the kernels
with this mirror exactly; on the CPU they compare this mirror with the reference and with
``adagc.update`` on NumPy.

bfloat16 tensors are given as float32 arrays of bfloat16-representable values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adagc import AdaGCConfig, NonFiniteGradientError
from adagc.backends._cupy_plan import (
    BLOCK,
    CHUNK,
    DTYPE_CODES,
    FINALIZE_BLOCK,
    ITEMSIZE,
    HostPlan,
    build_plan,
)

F32, F16, BF16, F64 = (DTYPE_CODES[k] for k in ("float32", "float16", "bfloat16", "float64"))


def acc_dtype(code: int) -> type:
    """The kernels' accumulation type: float64 for float64 tensors, float32 otherwise."""
    return np.float64 if code == F64 else np.float32


def warp_sum(lanes: np.ndarray) -> Any:
    """``warp_sum`` of 32 lanes: lane l adds lane l+off for off = 16, 8, 4, 2, 1 (lane 0's
    result depends only on these valid lanes)."""
    a = np.asarray(lanes)
    assert a.shape == (32,)
    for off in (16, 8, 4, 2, 1):
        a = a[:off] + a[off : 2 * off]
    return a[0]


def block_sum(values: np.ndarray, block: int) -> Any:
    """``block_sum``: each warp's tree, then one tree over the warp sums padded to 32."""
    v = np.asarray(values)
    assert v.shape == (block,)
    warps = np.array([warp_sum(w) for w in v.reshape(block // 32, 32)], dtype=v.dtype)
    lanes = np.zeros(32, dtype=v.dtype)
    lanes[: block // 32] = warps
    return warp_sum(lanes)


def chunk_sumsq(x: np.ndarray, code: int, head: int, vec: bool) -> Any:
    """One block's sum of squares of one chunk ``x`` (the chunk's elements in memory order)."""
    A = acc_dtype(code)
    vw = 16 // ITEMSIZE[code]
    v = np.asarray(x).astype(A)  # exact for float16/bfloat16 -> float32
    sq = v * v
    n = len(v)
    h = min(head, n) if vec else n
    acc = np.zeros(BLOCK, dtype=A)
    for k0 in range(0, h, BLOCK):  # thread t: head element t (all of it when not vectorized)
        part = sq[k0 : min(h, k0 + BLOCK)]
        acc[: len(part)] = acc[: len(part)] + part
    nv = (n - h) // vw
    body = sq[h : h + nv * vw].reshape(nv, vw)
    for j0 in range(0, nv, BLOCK):  # thread t: vectors t, t + BLOCK, ... elementwise in order
        rows = body[j0 : j0 + BLOCK]
        for e in range(vw):
            acc[: len(rows)] = acc[: len(rows)] + rows[:, e]
    tail = sq[h + nv * vw :]
    for k0 in range(0, len(tail), BLOCK):
        part = tail[k0 : k0 + BLOCK]
        acc[: len(part)] = acc[: len(part)] + part
    return block_sum(acc, BLOCK)


def sumsq_partials(plan: HostPlan, flats: Sequence[np.ndarray | None]) -> np.ndarray:
    """``adagc_sumsq``: one float64 partial per chunk (float32 sums widened exactly)."""
    partials = np.zeros(plan.norm_partials, dtype=np.float64)
    for i in range(plan.T):
        c0, c1 = int(plan.start[i]), int(plan.start[i + 1])
        x = flats[i]
        for c in range(c0, c1):
            assert x is not None
            lo = (c - c0) * CHUNK
            chunk = x[lo : min(lo + CHUNK, int(plan.numels[i]))]
            r = chunk_sumsq(chunk, int(plan.codes[i]), int(plan.heads[i]), bool(plan.vec[i]))
            partials[c] = np.float64(r)
    return partials


def _min_nan(a: Any, b: Any) -> Any:
    return a if (a < b or a != a) else b


@dataclass
class Finalized:
    """What ``adagc_finalize_*`` writes."""

    norms: np.ndarray
    coefficients: np.ndarray
    global_norm: Any
    clipped_global_norm: Any
    num_clipped: int
    nonfinite: bool
    warmup: bool
    step: int
    gamma: np.ndarray
    seen: np.ndarray


def finalize(
    plan: HostPlan,
    partials: np.ndarray,
    step: int,
    gamma_in: np.ndarray,
    seen_in: np.ndarray,
    cfg: AdaGCConfig,
    norm64: bool,
) -> Finalized:
    """``adagc_finalize_{f32,f64}``, line by line (pass 1: warp i % (FB // 32) owns tensor i;
    pass 2: thread t owns tensors t, t+FB, ...)."""
    N = np.float64 if norm64 else np.float32
    FB = FINALIZE_BLOCK
    T = plan.T
    lam_rel, beta, omb = N(cfg.lambda_rel), N(cfg.beta), N(1.0 - cfg.beta)
    lam_abs, eps = N(cfg.lambda_abs), N(cfg.eps)
    one, zero = N(1), N(0)
    gamma_in = np.asarray(gamma_in, dtype=N)
    seen_in = np.asarray(seen_in, dtype=bool)
    warm = step < cfg.warmup_steps
    global_mode = cfg.granularity == "global"
    raw = cfg.warmup_gamma == "raw"  # the kernel's raw_warmup_gamma
    gamma_g = gamma_in[0] if global_mode else zero
    seen_g = bool(seen_in[0]) if global_mode else False

    norms = np.zeros(T, dtype=N)
    g2_local = np.zeros(FB, dtype=N)
    bad_local = False
    warps = FB // 32
    for i in range(T):  # pass 1: warp i % warps; lane l adds chunks c0+l, c0+l+32, ...
        c0, c1 = int(plan.start[i]), int(plan.start[i + 1])
        acc = np.float64 if int(plan.codes[i]) == F64 else np.float32
        lanes = np.zeros(32, dtype=acc)
        for c in range(c0, c1):
            lanes[(c - c0) % 32] = lanes[(c - c0) % 32] + acc(partials[c])
        sq = N(warp_sum(lanes))
        norms[i] = np.sqrt(sq)
        t = (i % warps) * 32  # lane 0 of that warp keeps the running sum
        g2_local[t] = g2_local[t] + sq
        bad_local = bad_local or not np.isfinite(sq)
    g2 = block_sum(g2_local, FB)
    bad = bad_local or not np.isfinite(g2)
    g_norm = np.sqrt(g2)
    h_warm = _min_nan(lam_abs / (g_norm + eps), one)
    g_obs = g_norm > zero
    t_g = lam_rel * gamma_g
    clip_g = g_obs and seen_g and g_norm > t_g
    h_adapt_g = t_g / (g_norm + eps) if clip_g else one
    fill = zero if cfg.nonfinite == "zero" else one

    coef = np.zeros(T, dtype=N)
    gamma_out = gamma_in.copy()
    seen_out = seen_in.copy()
    cg2_local = np.zeros(FB, dtype=N)
    clipped = 0
    for i in range(T):
        n = norms[i]
        observed = n > zero
        if not global_mode:
            gamma, seen = gamma_in[i], bool(seen_in[i])
            cw = n if raw else h_warm * n
            gamma_w = _min_nan(gamma, cw) if seen else cw
            t = lam_rel * gamma
            clip = observed and seen and n > t
            h_adapt = t / (n + eps) if clip else one
            gamma_a = beta * gamma + omb * _min_nan(n, t) if seen else n
            c = (h_warm if warm else h_adapt) if observed else one
            gamma_new = (gamma_w if warm else gamma_a) if observed else gamma
            seen_new = seen or observed
            gamma_out[i] = gamma if bad else gamma_new
            seen_out[i] = seen if bad else seen_new
        else:
            c = (h_warm if warm else h_adapt_g) if observed else one
        applied = fill if bad else c
        coef[i] = applied
        clipped += int(c < one and not bad)
        hn = applied * n
        k = i % FB
        cg2_local[k] = cg2_local[k] + hn * hn
    cg2 = block_sum(cg2_local, FB)
    if global_mode:
        mg = g_norm if raw else _min_nan(g_norm, lam_abs)
        gamma_w = _min_nan(gamma_g, mg) if seen_g else mg
        gamma_a = beta * gamma_g + omb * _min_nan(g_norm, t_g) if seen_g else g_norm
        gamma_new = (gamma_w if warm else gamma_a) if g_obs else gamma_g
        seen_new = seen_g or g_obs
        gamma_out[0] = gamma_g if bad else gamma_new
        seen_out[0] = seen_g if bad else seen_new
    return Finalized(
        norms=norms,
        coefficients=coef,
        global_norm=g_norm,
        clipped_global_norm=np.sqrt(cg2),
        num_clipped=clipped,
        nonfinite=bool(bad),
        warmup=bool(warm),
        step=step if bad else step + 1,
        gamma=gamma_out,
        seen=seen_out,
    )


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32 (``__float2bfloat16_rn``
    for finite values and infinities; NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, out).astype(np.float32)


def scale(x: np.ndarray, code: int, h: Any, zero: bool, inplace: bool) -> tuple[np.ndarray, bool]:
    """``adagc_scale_*`` on one tensor: ``(result, written)``. In place, h == 1 is skipped."""
    if not zero and inplace and h == 1:
        return x, False
    if zero:
        return np.zeros_like(x), True
    if h == 1:
        return x.copy(), True
    A = acc_dtype(code)
    prod = np.asarray(x).astype(A) * A(h)
    if code == F16:
        return prod.astype(np.float16), True
    if code == BF16:
        return round_bf16(prod), True
    return prod.astype(x.dtype), True


def lowest_address(a: np.ndarray) -> int:
    """The lowest byte address an array covers (its data pointer for positive strides)."""
    low = a.ctypes.data
    for n, s in zip(a.shape, a.strides):
        if s < 0 and n > 0:
            low += (n - 1) * s
    return int(low)


def memory_order(a: np.ndarray) -> np.ndarray:
    """The elements of a dense array in the order they lie in memory."""
    order = np.argsort([abs(s) for s in a.strides])[::-1] if a.ndim else []
    b = a
    for ax, s in enumerate(a.strides):
        if s < 0:
            b = np.flip(b, axis=ax)
    return np.ascontiguousarray(np.transpose(b, order) if a.ndim else b).ravel()


@dataclass
class Emulated:
    clipped: list[Any]
    step: int
    gamma: np.ndarray
    seen: np.ndarray
    stats: Finalized
    plan: HostPlan
    partials: np.ndarray
    written: list[bool]


def emulated_update(
    grads: Sequence[np.ndarray | None],
    step: int,
    gamma: np.ndarray,
    seen: np.ndarray,
    cfg: AdaGCConfig,
    *,
    codes: Sequence[int] | None = None,
    inplace: bool = True,
    names: Sequence[str] | None = None,
) -> Emulated:
    """The whole fused step in NumPy, as ``backends/cupy._fused_step`` runs the kernels:
    layout (``None``, ties by identity, empty tensors take no part), plan, sum of squares,
    finalize, the ``raise`` check, scale. Pointers are the arrays' real host addresses, so
    misaligned views and odd sizes exercise the same heads and tails as on the device.
    ``codes`` overrides the dtype codes (``BF16`` for float32 arrays of bfloat16 values)."""
    with np.errstate(all="ignore"):  # non-finite steps compute with Inf/NaN on purpose
        return _emulated_update(grads, step, gamma, seen, cfg, codes, inplace, names)


def _emulated_update(
    grads: Sequence[np.ndarray | None],
    step: int,
    gamma: np.ndarray,
    seen: np.ndarray,
    cfg: AdaGCConfig,
    codes: Sequence[int] | None,
    inplace: bool,
    names: Sequence[str] | None,
) -> Emulated:
    T = len(grads)
    ptrs, numels, cds, flats = [], [], [], []
    first: dict[int, int] = {}
    ties = []
    for j, g in enumerate(grads):
        if g is None:
            ptrs.append(0), numels.append(0), cds.append(0), flats.append(None)
            continue
        i = first.setdefault(id(g), j)
        if i != j:
            ties.append((j, i))
            ptrs.append(0), numels.append(0), cds.append(0), flats.append(None)
            continue
        code = codes[j] if codes is not None else DTYPE_CODES[g.dtype.name]
        n = int(g.size)
        ptrs.append(lowest_address(g) if n else 0)
        numels.append(n)
        cds.append(code)
        flats.append(memory_order(g) if n else None)
    norm64 = np.asarray(gamma).dtype == np.float64
    plan = build_plan(ptrs, numels, cds)
    partials = sumsq_partials(plan, flats)
    fin = finalize(plan, partials, step, gamma, seen, cfg, norm64)
    if cfg.nonfinite == "raise" and fin.nonfinite:
        labels = list(names) if names is not None else [str(i) for i in range(T)]
        bad = [labels[i] for i in range(T) if not math.isfinite(fin.norms[i])]
        raise NonFiniteGradientError(bad)
    zero = cfg.nonfinite == "zero" and fin.nonfinite
    out: list[Any] = list(grads)
    written = [False] * T
    for j, g in enumerate(grads):
        if g is None or numels[j] == 0:
            continue
        res, w = scale(np.asarray(g), cds[j], fin.coefficients[j], zero, inplace)
        out[j], written[j] = res, w
    for j, i in ties:
        out[j] = out[i]
    return Emulated(out, fin.step, fin.gamma, fin.seen, fin, plan, partials, written)
