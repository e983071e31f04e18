"""NumPy backend (float16, float32, float64; bfloat16 through ml_dtypes when installed).

On the CPU there is nothing to sync, so ``scale`` reads the coefficients on the host and
skips tensors whose coefficient is exactly 1 (spec §3 "skipping is allowed"). Norms: one BLAS
dot per tensor, in 262,144-element chunks added in float64 for large tensors (relative error
about 1e-7 at 1.3e8 float32 elements, against 1e-6 required). A step with more than 4M
elements in large tensors spreads their chunks (dots, then the clipped ones' multiplies) over
a few threads (``ADAGC_NUMPY_THREADS``; 1 turns them off), bit-identical to one thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from adagc._errors import NotWritableError
from adagc._protocol import DType

__all__ = ["BACKEND", "NumpyBackend"]

_DTYPES: dict[str, Any] = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
    "int": np.int64,
}


_NAMES: dict[Any, str] = {}
_BLAS_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})


# Large tensors are summed in chunks of this many elements, each a BLAS dot in the tensor's
# precision, the partial sums added in float64: one BLAS dot over 1.3e8 float32 elements is
# off by ~4e-3 (relative), 262,144-element chunks by ~1e-7 (65,536: 1.6e-8, with 4x the
# Python calls: ~2 ms more per GPT-2 step; 2**20: 9e-7, too close to the 1e-6 bound).
_CHUNK = 1 << 18


def _chunk_dot(c: np.ndarray) -> float:
    """A chunk's sum of squares: a BLAS dot, half precision converted to float32 first (one
    chunk at a time: no full-size temporary). Not rescaled: beyond float32 it is Inf."""
    if c.dtype not in _BLAS_DTYPES:
        c = c.astype(np.float32)
    return float(np.vdot(c, c))


def _chunks(g: np.ndarray) -> list[np.ndarray]:
    flat = g.reshape(-1)  # a view of a contiguous array (read-only use: a copy is fine too)
    return [flat[i : i + _CHUNK] for i in range(0, flat.size, _CHUNK)]


def _chunked_sum_squares(g: np.ndarray) -> float:
    """Sum of squares of a large tensor: float32 (or float64) chunk dots, float64 total."""
    total = 0.0
    for c in _chunks(g):
        total += _chunk_dot(c)
    return total


# -- threads for large tensors -------------------------------------------------------------
# NumPy's dots of one chunk and its multiplies run on one core; BLAS and ufunc loops release
# the GIL, so chunks of large tensors are spread over a few threads once a step has this many
# elements of them (on 2 cores: GPT-2's norm pass 32.6 -> 18.9 ms, the clipped tensors'
# multiply 14.1 -> 8.0 ms). Each chunk's result is the serial one and the float64 partials are
# added in the serial order, so the results are bit-identical to one thread.
_PARALLEL_MIN = 1 << 22
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def _threads() -> int:
    """``ADAGC_NUMPY_THREADS`` (1 turns threads off), else the cores, at most 8."""
    env = os.environ.get("ADAGC_NUMPY_THREADS")
    if env is not None:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(
                f"ADAGC_NUMPY_THREADS must be a whole number (1 turns threads off), got {env!r}"
            ) from None
    return min(os.cpu_count() or 1, 8)


def _pool() -> tuple[int, ThreadPoolExecutor] | None:
    """``(threads, pool)`` of the backend (``None`` with one thread); rebuilt in a forked
    child, whose copy of the parent's pool has no threads."""
    global _POOL
    n = _threads()
    if n < 2:
        return None
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != n:
        _POOL = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="adagc-numpy"))
    return n, _POOL[2]


def _in_threads(
    pool: tuple[int, ThreadPoolExecutor], fn: Callable[[Any], Any], items: list[Any]
) -> list[Any]:
    """``[fn(x) for x in items]``, in contiguous batches on the pool (order kept)."""
    threads, executor = pool
    if not items:
        return []
    size = -(-len(items) // (2 * threads))

    def batch(part: list[Any]) -> list[Any]:
        with np.errstate(over="ignore", invalid="ignore"):  # per thread: not inherited
            return [fn(x) for x in part]

    out: list[Any] = []
    for part in executor.map(batch, [items[i : i + size] for i in range(0, len(items), size)]):
        out += part
    return out


def _mul_chunk(job: tuple[np.ndarray, np.ndarray, Any]) -> None:
    """``dst = src * h`` for one chunk: a Python float keeps float32/float64 (NEP 50); a
    float32 h multiplies half precision in float32, rounded once (as the serial path)."""
    src, dst, h = job
    np.multiply(src, h, out=dst, casting="unsafe")


class NumpyBackend:
    """The ``ArrayBackend`` protocol for ``numpy.ndarray``."""

    name = "numpy"
    supports_inplace = True

    def quiet(self) -> Any:
        """Silence NumPy's NaN/Inf warnings during a step (non-finite steps are expected)."""
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def asarray(self, data: Any, dtype: DType, like: Any = None) -> np.ndarray:
        return np.array(data, dtype=_DTYPES[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def dtype_name(self, x: np.ndarray) -> str:
        dt = x.dtype
        name = _NAMES.get(dt)
        if name is None:  # ``dtype.name`` is slow; cache it per dtype
            name = _NAMES[dt] = str(dt.name)
        return name

    def size(self, x: np.ndarray) -> int:
        return int(x.size)

    def device(self, x: np.ndarray) -> str:
        return "cpu"

    def sum_squares(self, tensors: Sequence[np.ndarray | None], dtype: DType) -> np.ndarray:
        sums: list[Any] = []
        vdot, native, chunk = np.vdot, _BLAS_DTYPES, _CHUNK
        big = [g for g in tensors if g is not None and g.size > chunk]
        pool = _pool() if sum(g.size for g in big) >= _PARALLEL_MIN else None
        large: dict[int, float] = {}
        if pool is not None:
            pieces = [(k, c) for k, g in enumerate(big) for c in _chunks(g)]
            for (k, _), part in zip(pieces, _in_threads(pool, _chunk_dot, [c for _, c in pieces])):
                large[k] = large.get(k, 0.0) + part  # in the serial order: same float64 sum
        k = 0
        with np.errstate(over="ignore", invalid="ignore"):
            for g in tensors:
                if g is None:
                    sums.append(0.0)
                elif g.size > chunk:
                    sums.append(large[k] if pool is not None else _chunked_sum_squares(g))
                    k += 1
                elif g.dtype in native:
                    sums.append(vdot(g, g))  # BLAS dot: no temporary, no rescaling
                else:  # float16 / bfloat16 accumulate in float32
                    flat = g.astype(np.float32)
                    sums.append(vdot(flat, flat))
            return np.array(sums, dtype=_DTYPES[dtype])

    def scale(
        self,
        tensors: Sequence[np.ndarray | None],
        coefficients: np.ndarray,
        zero: np.ndarray | None,
        inplace: bool,
    ) -> list[np.ndarray | None]:
        zero_all = zero is not None and bool(zero)
        blas, f32 = _BLAS_DTYPES, np.float32
        h_list = coefficients.tolist()
        if inplace:  # check every array to be written before writing any
            for i, (g, h) in enumerate(zip(tensors, h_list)):
                if g is not None and (zero_all or h != 1.0) and not g.flags.writeable:
                    raise NotWritableError(i, "the NumPy array is read-only (a broadcast view?)")
        out: list[np.ndarray | None] = []
        chunk = _CHUNK
        pool = None
        if not zero_all:
            work = sum(
                g.size
                for g, h in zip(tensors, h_list)
                if g is not None and h != 1.0 and g.size > chunk
            )
            pool = _pool() if work >= _PARALLEL_MIN else None
        jobs: list[tuple[np.ndarray, np.ndarray, Any]] = []  # (source, destination, factor)
        with np.errstate(over="ignore", invalid="ignore"):
            for g, h in zip(tensors, h_list):
                if g is None:
                    out.append(None)
                elif pool is not None and h != 1.0 and g.size > chunk and g.flags.c_contiguous:
                    dst = g if inplace else np.empty_like(g)
                    jobs.append((g, dst, h if g.dtype in blas else f32(h)))
                    out.append(dst)
                elif zero_all:
                    if inplace:
                        g[...] = 0
                        out.append(g)
                    else:
                        out.append(np.zeros_like(g))
                elif h == 1.0:
                    out.append(g)  # nothing to do: not read, not written
                elif g.dtype not in blas:
                    # float16/bfloat16: h in float32, rounded once with the product (a
                    # float16 h flushes small coefficients to 0); buffered, no full temporary.
                    out.append(
                        np.multiply(
                            g, f32(h), out=g if inplace else np.empty_like(g), casting="unsafe"
                        )
                    )
                elif inplace:
                    g *= h  # a Python float keeps g's dtype (NEP 50) and is the fastest form
                    out.append(g)
                else:
                    out.append(g * h)
        if jobs:  # large tensors: their chunks multiplied on the pool, in place in dst
            assert pool is not None
            parts = [
                (a, b, h)
                for src, dst, h in jobs
                for a, b in zip(_chunks(src), _chunks(dst), strict=True)
            ]
            _in_threads(pool, _mul_chunk, parts)
        return out

    def sqrt(self, x: Any) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.asarray(np.sqrt(x))

    def minimum(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(np.minimum(a, b))

    def where(self, cond: Any, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    def sum(self, x: Any) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(np.sum(x))

    def all(self, x: Any) -> np.ndarray:
        return np.asarray(np.all(x))

    def isfinite(self, x: Any) -> np.ndarray:
        return np.asarray(np.isfinite(x))

    def logical_and(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(np.logical_and(a, b))

    def logical_or(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(np.logical_or(a, b))

    def logical_not(self, a: Any) -> np.ndarray:
        return np.asarray(np.logical_not(a))

    def astype(self, x: Any, dtype: DType) -> np.ndarray:
        return np.asarray(x).astype(_DTYPES[dtype])

    def stack(self, xs: Sequence[Any]) -> np.ndarray:
        return np.stack([np.asarray(x) for x in xs])


BACKEND = NumpyBackend()
