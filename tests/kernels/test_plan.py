"""The host-side planner (no device): chunk tables, alignment flags, launch splitting, dense
layouts, aliasing, output layout and the occupancy arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adagc.backends import _cupy_plan as P

F32, F16, BF16, F64 = (P.DTYPE_CODES[k] for k in ("float32", "float16", "bfloat16", "float64"))


def _owner(start: np.ndarray, c: int) -> int:
    """The kernels' ``tensor_of``: the largest i with start[i] <= c (binary search)."""
    lo, hi = 0, len(start) - 2
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if start[mid] <= c:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _check_table(numels: list[int]) -> np.ndarray:
    start = P.chunk_table(numels)
    assert start.dtype == np.int64 and len(start) == len(numels) + 1 and start[0] == 0
    counts = np.diff(start)
    expected = [-(-n // P.CHUNK) for n in numels]
    assert counts.tolist() == expected
    # Every chunk belongs to exactly the tensor the binary search finds, and covers
    # [k*CHUNK, min((k+1)*CHUNK, n)) of it: together the chunks tile every tensor once.
    covered = [0] * len(numels)
    for c in range(int(start[-1])):
        i = _owner(start, c)
        assert start[i] <= c < start[i + 1]
        k = c - start[i]
        lo, hi = k * P.CHUNK, min((k + 1) * P.CHUNK, numels[i])
        assert lo < hi
        covered[i] += hi - lo
    assert covered == numels
    return start


@pytest.mark.parametrize("count", [1, 110, 111, 400, 401, 770, 771, 4000, 4001, 10_000])
def test_chunk_table_for_many_tensors(count: int) -> None:
    """Tensor counts around the per-launch limits of kernel-argument-packed designs (110, 400,
    770 ...) and past 4,000: one table, one launch, no per-launch tensor limit."""
    rng = np.random.default_rng(count)
    numels = rng.integers(0, 3 * P.CHUNK, size=count).tolist()
    numels[::7] = [0] * len(numels[::7])  # absent / empty / tied tensors take no part
    start = _check_table(numels)
    plan = P.build_plan([256 * (i + 1) for i in range(count)], numels, [F32] * count)
    assert (plan.T, plan.n_chunks) == (count, int(start[-1]))
    assert plan.launches == ([(0, plan.n_chunks)] if plan.n_chunks else [])
    assert plan.meta.shape == (5 * count + 1,)
    np.testing.assert_array_equal(plan.meta[4 * count :], start)


def test_chunk_table_edges() -> None:
    C = P.CHUNK
    _check_table([0, 1, C - 1, C, C + 1, 2 * C, 0, 3 * C - 1, 7])
    assert P.chunk_table([]).tolist() == [0]
    assert P.chunk_table([0, 0]).tolist() == [0, 0, 0]
    # The binary search never lands on a tensor without chunks, wherever they sit.
    start = P.chunk_table([0, 5, 0, 0, C + 3, 0])
    assert [_owner(start, c) for c in range(int(start[-1]))] == [1, 4, 4]


@pytest.mark.parametrize(
    ("ptr", "code", "head", "vec"),
    [
        (0x1000, F32, 0, True),
        (0x1004, F32, 3, True),  # a view starting one float32 in: 3 scalars, then vectors
        (0x1008, F32, 2, True),
        (0x100C, F32, 1, True),
        (0x1002, F16, 7, True),
        (0x100E, BF16, 1, True),
        (0x1008, F64, 1, True),
        (0x1001, F32, 0, False),  # not even element-aligned: all scalar
        (0x1004, F64, 0, False),
    ],
)
def test_alignment_flags(ptr: int, code: int, head: int, vec: bool) -> None:
    assert P.alignment(ptr, code) == (head, vec)
    if vec:
        assert (ptr + head * P.ITEMSIZE[code]) % 16 == 0
        assert head < 16 // P.ITEMSIZE[code]
    info = P.pack_info(code, head, vec)
    assert P.unpack_info(info) == (code, head, vec)


def test_plan_matches_alignment_for_misaligned_views() -> None:
    base = np.zeros(1000, dtype=np.float32)
    views = [base[k:] for k in range(4)] + [base[1:], base[2:9]]
    ptrs = [v.ctypes.data for v in views]
    plan = P.build_plan(ptrs, [v.size for v in views], [F32] * len(views))
    for i, p in enumerate(ptrs):
        code, head, vec = P.unpack_info(int(plan.meta[2 * plan.T + i]))
        assert (code, head, vec) == (F32, *P.alignment(p, F32))
        assert (head, vec) == (int(plan.heads[i]), bool(plan.vec[i]))
    assert len({int(h) for h in plan.heads[:4]}) == 4  # four different phases


def test_split_launches() -> None:
    assert P.split_launches(0) == []
    assert P.split_launches(5) == [(0, 5)]
    assert P.split_launches(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert P.split_launches(9, 3) == [(0, 3), (3, 6), (6, 9)]
    with pytest.raises(ValueError, match="max_chunks"):
        P.split_launches(3, 0)
    # Split plans cover every chunk exactly once, across tensor boundaries.
    numels = [P.CHUNK * 3 + 5, 17, 0, P.CHUNK * 2]
    plan = P.build_plan(
        [4096 * (i + 1) for i in range(4)], numels, [F16] * 4, max_chunks_per_launch=2
    )
    flat = [c for b, e in plan.launches for c in range(b, e)]
    assert flat == list(range(plan.n_chunks)) and plan.n_chunks == 4 + 1 + 0 + 2
    assert max(e - b for b, e in plan.launches) == 2


def test_persistent_grid_and_occupancy() -> None:
    assert P.persistent_grid(0, 132, 5) == 1  # a launch always has a block
    assert P.persistent_grid(3, 132, 5) == 3
    assert P.persistent_grid(100_000, 132, 5) == 660
    h100 = dict(
        max_threads_per_sm=2048,
        max_regs_per_sm=65536,
        max_smem_per_sm=233472,
        max_blocks_per_sm=32,
    )
    assert P.blocks_per_sm(256, 32, 0, **h100) == 8  # thread-limited
    assert P.blocks_per_sm(256, 44, 96, **h100) == 5  # 44 regs -> 48 per thread allocated
    assert P.blocks_per_sm(256, 64, 0, **h100) == 4
    assert P.blocks_per_sm(256, 255, 0, **h100) == 1
    assert P.blocks_per_sm(256, 32, 100_000, **h100) == 2  # shared-memory-limited


@pytest.mark.parametrize(
    ("shape", "strides", "offset"),
    [
        ((3, 4), (4, 1), 0),  # C
        ((3, 4), (1, 3), 0),  # Fortran
        ((2, 3, 4), (12, 1, 3), 0),  # permuted
        ((3, 4), (-4, 1), -8),  # reversed rows: the lowest address is the last row
        ((5,), (-1,), -4),
        ((1, 4), (99, 1), 0),  # size-1 dims may have any stride
        ((0, 3), (3, 1), 0),
        ((), (), 0),
        ((3, 4), (8, 1), None),  # every other row: gaps
        ((3, 4), (1, 1), None),  # overlapping
        ((4,), (2,), None),
    ],
)
def test_dense_offset(shape, strides, offset) -> None:
    assert P.dense_offset(shape, strides) == offset


def test_dense_offset_agrees_with_numpy_views() -> None:
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    for v in (a, a.T, a.transpose(1, 0, 2), a[::-1], a[:, ::-1, :], a[1:2], a[:, :2]):
        off = P.dense_offset(v.shape, [s // 4 for s in v.strides])
        assert (off is not None) == _covers_consecutive(v), (v.shape, v.strides)
        if off is not None:
            addresses = _addresses(v)
            assert addresses.min() == v.ctypes.data + off * 4


def _addresses(v: np.ndarray) -> np.ndarray:
    idx = np.indices(v.shape).reshape(v.ndim, -1)
    return v.ctypes.data + (np.array(v.strides)[:, None] * idx).sum(axis=0)


def _covers_consecutive(v: np.ndarray) -> bool:
    addr = np.sort(_addresses(v))
    return bool(np.all(np.diff(addr) == v.itemsize))


def test_first_overlap() -> None:
    assert P.first_overlap([]) is None
    assert P.first_overlap([(0, 16), (16, 16), (64, 8)]) is None
    assert P.first_overlap([(0, 16), (100, 0), (100, 4)]) is None  # empty ranges never clash
    assert P.first_overlap([(64, 16), (0, 16), (70, 4)]) == (0, 2)
    assert P.first_overlap([(0, 100), (200, 8), (50, 4)]) == (0, 2)


def test_output_layout_keeps_each_inputs_phase() -> None:
    ptrs = [0x1004, 0x2000, 0, 0x300E, 0x4008]
    nbytes = [40, 3, 0, 6, 16]
    offsets, total = P.output_layout(ptrs, nbytes)
    live = [i for i in range(5) if nbytes[i]]
    for i in live:
        assert offsets[i] % 16 == ptrs[i] % 16
    spans = sorted((int(offsets[i]), int(offsets[i]) + nbytes[i]) for i in live)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no output overlaps another
    assert total >= spans[-1][1]
    assert offsets[2] == 0


def test_build_plan_metadata_layout() -> None:
    ptrs = [0x1004, 0, 0x20000, 0x3002]
    numels = [P.CHUNK + 3, 0, 10, 7]
    codes = [F32, F32, F64, BF16]
    plan = P.build_plan(ptrs, numels, codes)
    T = 4
    m = plan.meta
    assert m[:T].tolist() == ptrs and m[T : 2 * T].tolist() == numels
    assert [P.unpack_info(int(x)) for x in m[2 * T : 3 * T]] == [
        (F32, 3, True),
        (F32, 0, True),
        (F64, 0, True),
        (BF16, 7, True),
    ]
    assert m[4 * T :].tolist() == [0, 2, 2, 3, 4]
    assert plan.dst_bytes >= sum(n * P.ITEMSIZE[c] for n, c in zip(numels, codes))
    assert plan.norm_partials == 4


def test_build_plan_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one entry per tensor"):
        P.build_plan([0], [1, 2], [F32])
    with pytest.raises(ValueError, match="dtype codes"):
        P.build_plan([0], [1], [9])
    with pytest.raises(ValueError, match=">= 0"):
        P.build_plan([0], [-1], [F32])
    with pytest.raises(ValueError, match="tensor info"):
        P.pack_info(F32, 300, True)


def test_compile_defines_are_the_planner_constants() -> None:
    d = dict(x.removeprefix("-D").split("=") for x in P.compile_defines())
    assert d == {
        "ADAGC_BLOCK": str(P.BLOCK),
        "ADAGC_CHUNK": str(P.CHUNK),
        "ADAGC_FINALIZE_BLOCK": str(P.FINALIZE_BLOCK),
        "ADAGC_UNROLL": str(P.UNROLL),
    }
    assert P.CHUNK % 8 == 0 and P.BLOCK % 32 == 0 and P.FINALIZE_BLOCK % 32 == 0


def test_planner_imports_no_cupy(run_python) -> None:
    proc = run_python(
        "-c",
        "import sys, adagc.backends._cupy_plan as p; p.build_plan([16], [5], [0]); "
        "print('cupy' in sys.modules)",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
