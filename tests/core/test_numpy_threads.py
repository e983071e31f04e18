"""The NumPy backend spreads large tensors' chunks over threads: the results must be
bit-identical to one thread, for every dtype and layout, and survive a fork."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import adagc
from adagc.backends import numpy as nb


def _grads(dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((3000, 2100)).astype(dtype)  # 6.3e6 elements: threads on
    strided = rng.standard_normal((2100, 1200)).astype(dtype).T  # not contiguous
    return [big, rng.standard_normal(500).astype(dtype), strided, None]


@pytest.fixture
def threads(monkeypatch):
    def use(n: int) -> None:
        monkeypatch.setenv("ADAGC_NUMPY_THREADS", str(n))

    return use


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("inplace", [True, False])
def test_threads_give_the_one_thread_result_bit_for_bit(threads, dtype, inplace) -> None:
    cfg = adagc.AdaGCConfig(warmup_steps=1)
    results = []
    for n in (1, 2, 3):
        threads(n)
        grads = [None if g is None else g.copy() for g in _grads(dtype)]
        state = adagc.init(grads, cfg)
        state = adagc.update(grads, state, cfg, inplace=inplace)[1]  # warmup step
        out, state, stats = adagc.update(
            [g if g is None else g * 3 for g in grads], state, cfg, inplace=inplace
        )
        assert int(stats.num_clipped) >= 1  # the large tensors were scaled
        results.append((out, stats.norms, state.gamma))
    one = results[0]
    for other in results[1:]:
        for a, b in zip(one[0], other[0]):
            assert (a is None and b is None) or np.array_equal(a, b)
        np.testing.assert_array_equal(one[1], other[1])
        np.testing.assert_array_equal(one[2], other[2])
    assert nb._pool() is not None  # the last run used threads


def test_a_bad_thread_count_says_what_to_set(threads) -> None:
    threads(1)
    assert nb._pool() is None
    os.environ["ADAGC_NUMPY_THREADS"] = "two"
    with pytest.raises(ValueError, match="ADAGC_NUMPY_THREADS must be a whole number"):
        nb.BACKEND.sum_squares(_grads(np.float32), "float32")


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_a_forked_child_gets_its_own_threads(threads) -> None:
    threads(2)
    grads = _grads(np.float32)
    want = nb.BACKEND.sum_squares(grads, "float32")  # the parent's pool exists now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: would hang on the parent's thread-less pool
        try:
            got = nb.BACKEND.sum_squares(grads, "float32")
            os.write(write, b"ok" if np.array_equal(got, want) else b"differs")
        finally:
            os._exit(0)
    os.close(write)
    import select

    ready, _, _ = select.select([read], [], [], 60)
    os.waitpid(pid, 0)
    assert ready and os.read(read, 16) == b"ok"
