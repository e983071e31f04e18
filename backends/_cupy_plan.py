"""Host-side planner of the CUDA fast path: pure Python and NumPy, no CuPy, no device.

It turns one list of gradients (pointers, sizes, dtype codes; ``None``, empty and tied tensors
are "not taking part") into the metadata the kernels in ``_cuda/adagc_kernels.cu`` read:

- a cumulative **chunk table**: tensor i owns chunks ``[start[i], start[i+1])`` of ``CHUNK``
  elements each, so one launch covers every tensor and a block finds its tensor by a binary
  search over the table;
- **alignment flags**: ``head`` (elements before the first 16-byte aligned element) and whether
  16-byte vector loads are possible at all, so misaligned views and odd sizes get scalar heads
  and tails;
- **launch splitting**: the persistent grid size per launch and the chunk ranges of the
  launches (the metadata lives in device memory, so there is no per-launch limit on the number
  of tensors, unlike kernel-argument-packed multi-tensor kernels);
- the **output layout** of out-of-place scaling (one buffer, each tensor at an offset in the
  same 16-byte phase as its input, so vector stores stay aligned).

A ``HostPlan`` is built once per parameter set; the backends cache it (with its device copy)
under the key of the gradients' storage and rebuild it only when pointers, sizes or dtypes
change. Nothing here reads array values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BLOCK",
    "CHUNK",
    "DTYPE_CODES",
    "FINALIZE_BLOCK",
    "ITEMSIZE",
    "KERNEL_NAMES",
    "MAX_CHUNKS_PER_LAUNCH",
    "MAX_TENSORS",
    "UNROLL",
    "VECTOR_BYTES",
    "Declined",
    "HostPlan",
    "alignment",
    "blocks_per_sm",
    "build_plan",
    "chunk_table",
    "compile_defines",
    "dense_offset",
    "first_overlap",
    "output_layout",
    "pack_info",
    "persistent_grid",
    "split_launches",
    "unpack_info",
]

CHUNK = 65536
"""Elements per chunk (a multiple of every vector width, so all chunks of a tensor share its
alignment ``head``)."""
BLOCK = 256
"""Threads per block of the sum-of-squares and scale kernels."""
FINALIZE_BLOCK = 512
"""Threads of the single finalize block."""
UNROLL = 4
"""16-byte vectors in flight per thread in the streaming loops."""
VECTOR_BYTES = 16
MAX_TENSORS = 2**31 - 2
"""Tensor indices are 32-bit ints in the kernels."""
MAX_CHUNKS_PER_LAUNCH = 2**31 - 1
"""Chunk ids are 64-bit in the kernels; a launch covers at most this many (never reached in
practice: 2**31 chunks are 1.4e14 elements)."""

DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}
"""The kernels' dtype codes (``ADAGC_F32`` ... in the CUDA source)."""
ITEMSIZE = {0: 4, 1: 2, 2: 2, 3: 8}

KERNEL_NAMES = (
    "adagc_sumsq",
    "adagc_finalize_f32",
    "adagc_finalize_f64",
    "adagc_scale_f32",
    "adagc_scale_f64",
)


class Declined(Exception):
    """The fused path cannot run this call (the reason is the message); nothing was modified.
    Callers fall back to the generic path, or turn it into a ``ValueError`` when the user
    required the fast path."""


def compile_defines() -> tuple[str, ...]:
    """The ``-D`` options the CUDA source needs: this module is the one place the constants
    are defined (the source has no defaults)."""
    return (
        f"-DADAGC_BLOCK={BLOCK}",
        f"-DADAGC_CHUNK={CHUNK}",
        f"-DADAGC_FINALIZE_BLOCK={FINALIZE_BLOCK}",
        f"-DADAGC_UNROLL={UNROLL}",
    )


# -- per-tensor facts ------------------------------------------------------------------------


def alignment(ptr: int, code: int) -> tuple[int, bool]:
    """``(head, vec)`` of a tensor starting at address ``ptr``.

    ``head`` is the number of elements before the first 16-byte aligned one (0 when ``ptr``
    is aligned); ``vec`` is False when the address is not even a multiple of the element size
    (then every element is loaded as a scalar).
    """
    size = ITEMSIZE[code]
    if ptr % size:
        return 0, False
    return ((-ptr) % VECTOR_BYTES) // size, True


def pack_info(code: int, head: int, vec: bool) -> int:
    """The kernels' per-tensor info word: code | head << 8 | vec << 16."""
    if not 0 <= head < 256 or code not in ITEMSIZE:
        raise ValueError(f"bad tensor info: code={code} head={head}")
    return code | (head << 8) | (int(vec) << 16)


def unpack_info(info: int) -> tuple[int, int, bool]:
    """Inverse of ``pack_info``."""
    return info & 0xFF, (info >> 8) & 0xFF, bool((info >> 16) & 1)


def dense_offset(shape: Sequence[int], strides: Sequence[int]) -> int | None:
    """For an array of ``shape`` with ``strides`` in elements: the offset (in elements) from
    its data pointer to the lowest address it covers, when its elements fill exactly
    ``numel`` consecutive slots in some dimension order (C, Fortran, permuted, reversed);
    ``None`` when there are gaps or overlaps. Both the sum of squares and the elementwise scale
    are order-independent, so such an array is handled as one flat range."""
    dims = [(abs(st), n, st) for n, st in zip(shape, strides) if n != 1]
    if any(n == 0 for n in shape):
        return 0
    dims.sort()
    expected = 1
    offset = 0
    for mag, n, st in dims:
        if mag != expected:
            return None
        if st < 0:
            offset += (n - 1) * st
        expected *= n
    return offset


def first_overlap(spans: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """Positions ``(i, j)`` of two byte ranges ``(start, nbytes)`` that overlap, or ``None``.
    Empty ranges never overlap. Two views of one memory (not the same object, hence not a tie)
    cannot be scaled in place by independent blocks; the caller declines them."""
    order = sorted((s, s + n, k) for k, (s, n) in enumerate(spans) if n > 0)
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(order):
        if start_b < end_a:
            return (min(a, b), max(a, b))
    return None


# -- tables and launches ---------------------------------------------------------------------


def chunk_table(numels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Cumulative chunk table, ``int64[T+1]``: tensor i owns chunks ``[start[i], start[i+1])``;
    tensors with no elements taking part own none."""
    n = np.asarray(numels, dtype=np.int64)
    counts = (n + (CHUNK - 1)) // CHUNK
    start = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    return start


def blocks_per_sm(
    block: int,
    regs_per_thread: int,
    static_smem: int,
    *,
    max_threads_per_sm: int,
    max_regs_per_sm: int,
    max_smem_per_sm: int,
    max_blocks_per_sm: int,
) -> int:
    """Resident blocks per SM for a kernel (the occupancy calculator's limits: threads,
    registers allocated per warp in units of 256, shared memory, blocks). At least 1."""
    warps = math.ceil(block / 32)
    regs_per_warp = math.ceil(max(regs_per_thread, 1) * 32 / 256) * 256
    by_regs = max_regs_per_sm // (regs_per_warp * warps)
    by_threads = max_threads_per_sm // block
    by_smem = max_smem_per_sm // static_smem if static_smem > 0 else max_blocks_per_sm
    return max(1, min(by_regs, by_threads, by_smem, max_blocks_per_sm))


def persistent_grid(n_chunks: int, sm_count: int, per_sm: int) -> int:
    """Blocks of a persistent launch: enough to fill the device once, never more than there
    are chunks (and at least 1, so an empty launch is still a valid one)."""
    return max(1, min(n_chunks, sm_count * per_sm))


def split_launches(n_chunks: int, max_chunks: int = MAX_CHUNKS_PER_LAUNCH) -> list[tuple[int, int]]:
    """Chunk ranges ``[begin, end)`` of the launches covering ``n_chunks`` chunks. A range may
    end inside a tensor: chunks are independent, each writes its own partial."""
    if max_chunks < 1:
        raise ValueError("max_chunks must be >= 1")
    return [(b, min(b + max_chunks, n_chunks)) for b in range(0, n_chunks, max_chunks)]


def output_layout(ptrs: Sequence[int], nbytes: Sequence[int]) -> tuple[np.ndarray, int]:
    """Byte offsets of out-of-place outputs in one buffer (whose base is 16-byte aligned) and
    the buffer's size. Each output starts in its input's 16-byte phase, so the scale kernel's
    vector loads and stores are aligned together; tensors not taking part get no space."""
    offsets = np.zeros(len(ptrs), dtype=np.int64)
    cursor = 0
    for i, (p, n) in enumerate(zip(ptrs, nbytes)):
        if n <= 0:
            continue
        cursor += (p - cursor) % VECTOR_BYTES
        offsets[i] = cursor
        cursor += n
    return offsets, max(cursor, VECTOR_BYTES)


@dataclass(frozen=True)
class HostPlan:
    """The metadata of one parameter set, ready to be copied to the device once.

    ``meta`` is the ``int64[5T+1]`` array the kernels read (layout in the CUDA source's
    header). ``launches`` are the chunk ranges of the streaming kernels.
    """

    T: int
    meta: np.ndarray
    n_chunks: int
    launches: list[tuple[int, int]]
    dst_bytes: int
    ptrs: np.ndarray = field(repr=False)
    numels: np.ndarray = field(repr=False)
    codes: np.ndarray = field(repr=False)
    heads: np.ndarray = field(repr=False)
    vec: np.ndarray = field(repr=False)
    start: np.ndarray = field(repr=False)
    dst_offsets: np.ndarray = field(repr=False)

    @property
    def norm_partials(self) -> int:
        """Length of the partials buffer (at least 1, so it always has an address)."""
        return max(self.n_chunks, 1)


def build_plan(
    ptrs: Sequence[int],
    numels: Sequence[int],
    codes: Sequence[int],
    *,
    max_chunks_per_launch: int = MAX_CHUNKS_PER_LAUNCH,
) -> HostPlan:
    """The plan of T positions: ``ptrs[i]`` the lowest address of tensor i's memory (0 when it
    takes no part), ``numels[i]`` its element count taking part (0 for absent, empty and
    repeated tensors), ``codes[i]`` its dtype code (``DTYPE_CODES``; any for non-participants).
    """
    T = len(ptrs)
    if not len(numels) == len(codes) == T:
        raise ValueError("ptrs, numels and codes must have one entry per tensor")
    if T > MAX_TENSORS:
        raise ValueError(f"at most {MAX_TENSORS} tensors per call")
    p = np.asarray(ptrs, dtype=np.int64).reshape(T)
    n = np.asarray(numels, dtype=np.int64).reshape(T)
    c = np.asarray(codes, dtype=np.int64).reshape(T)
    if np.any(n < 0):
        raise ValueError("numels must be >= 0")
    bad = sorted(set(c.tolist()) - set(ITEMSIZE))
    if bad:
        raise ValueError(f"unknown dtype codes {bad}")
    size = np.vectorize(ITEMSIZE.__getitem__, otypes=[np.int64])(c) if T else c
    misaligned = (p % size) != 0 if T else np.zeros(0, dtype=bool)
    heads = np.where(misaligned, 0, ((-p) % VECTOR_BYTES) // np.maximum(size, 1))
    vec = ~misaligned
    info = c | (heads << 8) | (vec.astype(np.int64) << 16)
    start = chunk_table(n)
    dst_offsets, dst_bytes = output_layout(p.tolist(), (n * size).tolist())
    meta = np.concatenate([p, n, info, dst_offsets, start]).astype(np.int64)
    n_chunks = int(start[-1])
    return HostPlan(
        T=T,
        meta=meta,
        n_chunks=n_chunks,
        launches=split_launches(n_chunks, max_chunks_per_launch),
        dst_bytes=dst_bytes,
        ptrs=p,
        numels=n,
        codes=c,
        heads=heads.astype(np.int64),
        vec=vec,
        start=start,
        dst_offsets=dst_offsets,
    )
