"""Dispatch to the fused path, on the CPU: which calls take it, which decline (and how), the
torch adapter's ``fast_path`` switch, the Paddle adapter's plug point, and the layout
inspection the fused path runs before anything is launched."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig

pytest.importorskip("cupy", reason="the kernels session installs adagc[cupy]")

from adagc.backends import _cupy_plan as P
from adagc.backends import cupy as cb


def test_import_makes_no_device_call(run_python) -> None:
    """Importing the backend (and asking for it by name) works on a machine without a GPU;
    ``device_available`` answers instead of raising."""
    proc = run_python(
        "-c",
        "import adagc, adagc.backends.cupy as c; b = adagc.get_backend('cupy'); "
        "print(b is c.BACKEND, b.name, type(c.device_available()).__name__)",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "cupy", "bool"]


def test_the_backend_declines_a_reducer() -> None:
    """Sharded norms need a collective between the norm and finalize kernels: declined (the
    generic path runs), before any array is looked at."""
    state = adagc.AdaGCState(step=None, gamma=None, seen=None)
    got = cb.BACKEND.fused_update(
        [None], state, AdaGCConfig(), inplace=True, reducer=object(), names=None
    )
    assert got is None


# -- layout inspection, with NumPy arrays standing in for device arrays -----------------------


class _NumpyFrame(cb._Frame):
    """``_Frame`` for NumPy arrays: the production inspection code runs on host pointers."""

    name = "numpy-test"

    def __init__(self) -> None:
        self.codes = {np.dtype(k): v for k, v in P.DTYPE_CODES.items() if k != "bfloat16"}

    def describe(self, g: Any, j: int) -> tuple[int, int, int, int]:
        code = self.codes.get(g.dtype)
        if code is None:
            raise P.Declined(f"gradient {j} has dtype {g.dtype}")
        size = P.ITEMSIZE[code]
        off = P.dense_offset(g.shape, [s // size for s in g.strides])
        if off is None:
            raise P.Declined(f"gradient {j} is not dense")
        return g.ctypes.data + off * size, int(g.size), code, self.device_of(g)

    def device_of(self, x: Any) -> int:
        return int(getattr(x, "_dev", 0))

    def is_contiguous(self, x: Any) -> bool:
        return bool(x.flags.c_contiguous)

    def ptr(self, x: Any) -> int:
        return int(x.ctypes.data)

    def numel(self, x: Any) -> int:
        return int(x.size)

    def bool_code(self, x: Any) -> bool:
        return bool(x.dtype == np.bool_)

    def int64_code(self, x: Any) -> bool:
        return bool(x.dtype == np.int64)


def test_inspect_absent_empty_tied_and_misaligned() -> None:
    base = np.zeros(100, np.float32)
    a, b = base[1:40], np.ones((3, 5), np.float64)
    empty = np.zeros(0, np.float16)
    layout = cb._inspect(_NumpyFrame(), [a, None, b, empty, a, b.T])
    assert layout.ties == [(4, 0)]
    assert layout.numels == [39, 0, 15, 0, 0, 15]
    assert layout.ptrs[0] == a.ctypes.data and layout.ptrs[1] == 0 and layout.ptrs[3] == 0
    assert layout.codes[0] == P.DTYPE_CODES["float32"] and layout.codes[2] == 3
    # The key is the storage: same arrays -> same key; a new array at a new address -> new key.
    again = cb._inspect(_NumpyFrame(), [a, None, b, empty, a, b.T])
    assert again.key == layout.key
    moved = cb._inspect(_NumpyFrame(), [base[2:41], None, b, empty, base[2:41], b.T])
    assert moved.key != layout.key


def test_inspect_declines_what_the_kernels_cannot_take() -> None:
    fw = _NumpyFrame()
    with pytest.raises(P.Declined, match="not dense"):
        cb._inspect(fw, [np.zeros((4, 4), np.float32)[:, ::2]])
    with pytest.raises(P.Declined, match="dtype int64"):
        cb._inspect(fw, [np.zeros(3, np.int64)])
    other = np.zeros(3, np.float32).view(type("OnDevice1", (np.ndarray,), {"_dev": 1}))
    with pytest.raises(P.Declined, match="several devices"):
        cb._inspect(fw, [np.zeros(3, np.float32), other])


def test_state_pointers_check_dtypes_and_sizes() -> None:
    fw = _NumpyFrame()
    cfg = AdaGCConfig()
    good = adagc.AdaGCState(np.array(3), np.zeros(2, np.float64), np.zeros(2, bool))
    norm64, step, gamma, _ = cb._state_pointers(fw, good, cfg, 2, 0)
    assert norm64 and step == good.step.ctypes.data and gamma == good.gamma.ctypes.data
    bad_gamma = good._replace(gamma=np.zeros(2, np.float16))
    with pytest.raises(P.Declined, match="float32 or float64"):
        cb._state_pointers(fw, bad_gamma, cfg, 2, 0)
    with pytest.raises(P.Declined, match="int64"):
        cb._state_pointers(fw, good._replace(step=np.array(3, np.int32)), cfg, 2, 0)
    with pytest.raises(P.Declined, match="does not match"):
        cb._state_pointers(fw, good, cfg, 3, 0)
    with pytest.raises(P.Declined, match="another device"):
        cb._state_pointers(fw, good, cfg, 2, 1)


# -- PyTorch: the backend and the adapter's fast_path switch on the CPU -------------------


def _torch_model(torch: Any) -> Any:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    loss = model(torch.randn(8, 6)).square().sum() * 50
    loss.backward()
    return model


def test_torch_fast_path_true_on_cpu_raises_and_changes_nothing() -> None:
    torch = pytest.importorskip("torch")
    from adagc.adapters.torch import AdaGC

    model = _torch_model(torch)
    clipper = AdaGC(model.parameters(), warmup_steps=1, fast_path=True)
    before = [p.grad.clone() for p in model.parameters()]
    state = [t.clone() for t in clipper.state]
    with pytest.raises(ValueError, match=r"fast_path=True.*cpu.*fast_path=None"):
        clipper.clip_()
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.grad)
    for s, t in zip(state, clipper.state):
        assert torch.equal(s, t)
    assert clipper.last_stats is None


@pytest.mark.parametrize("fast_path", [None, False])
def test_torch_fast_path_none_and_false_run_the_generic_path_on_cpu(fast_path: Any) -> None:
    torch = pytest.importorskip("torch")
    from adagc.adapters.torch import AdaGC

    model = _torch_model(torch)
    grads = [p.grad.clone() for p in model.parameters()]
    clipper = AdaGC(model.parameters(), warmup_steps=1, fast_path=fast_path)
    stats = clipper.clip_()
    cfg = clipper.config
    expected, state, ref = adagc.update(grads, adagc.init(grads, cfg), cfg, fused=False)
    for e, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, e, rtol=0, atol=0)
    torch.testing.assert_close(stats.coefficients, ref.coefficients, rtol=0, atol=0)
    assert int(clipper.state.step) == int(state.step) == 1


def test_torch_backend_declines_cpu_tensors() -> None:
    torch = pytest.importorskip("torch")
    from adagc.backends import torch as tb

    g = [torch.ones(3), None]
    state = adagc.init(g)
    assert (
        tb.BACKEND.fused_update(g, state, AdaGCConfig(), inplace=True, reducer=None, names=None)
        is None
    )
    assert "cpu" in tb.fused_unavailable(g, state, None)
    assert "DTensor" in tb.fused_unavailable(g, state, object())
    with pytest.raises(ValueError, match="fused fast path cannot handle"):
        adagc.update(g, state, fused=True)
    with pytest.raises(P.Declined, match="not on a CUDA device"):
        cb.torch_update(g, state, AdaGCConfig())
    assert torch.equal(g[0], torch.ones(3))  # declined before anything was written


# -- Paddle: the adapter's plug point ----------------------------------------------------------


def test_paddle_adapter_finds_the_cupy_fast_update() -> None:
    pytest.importorskip("paddle")
    from adagc.adapters import paddle as pa

    pa._cupy_fast_update.cache_clear()
    assert pa._cupy_fast_update() is cb.paddle_update


def test_paddle_update_falls_back_to_the_generic_path_off_the_gpu() -> None:
    """On CPU tensors (and with a reducer) ``paddle_update`` runs the generic Paddle path, so
    the adapter never fails where the fused kernels cannot run."""
    paddle = pytest.importorskip("paddle")
    rng = np.random.default_rng(0)
    arrays = [rng.normal(0, s, size=n).astype(np.float32) for s, n in ((3.0, 7), (0.1, 5))]
    cfg = AdaGCConfig(warmup_steps=1)
    grads = [paddle.to_tensor(a) for a in arrays]
    state = adagc.init(grads, cfg, backend="paddle")
    out, new, stats = cb.paddle_update(grads, state, cfg, names=["a", "b"])
    ref = [paddle.to_tensor(a) for a in arrays]
    exp, ref_state, ref_stats = adagc.update(
        ref, adagc.init(ref, cfg, backend="paddle"), cfg, inplace=True, fused=False
    )
    for o, e in zip(out, exp):
        np.testing.assert_array_equal(o.numpy(), e.numpy())
    np.testing.assert_array_equal(stats.coefficients.numpy(), ref_stats.coefficients.numpy())
    assert int(new.step) == 1 and math.isclose(float(new.gamma[0]), float(ref_state.gamma[0]))


def test_paddle_update_required_raises_instead_of_falling_back() -> None:
    """``ClipGradByAdaGC(fast_path=True)`` passes ``required=True``: where the fused kernels
    cannot run, a ValueError says why and nothing is modified."""
    paddle = pytest.importorskip("paddle")
    arrays = [np.full(4, 3.0, np.float32), np.full(3, 0.5, np.float32)]
    cfg = AdaGCConfig(warmup_steps=1)
    grads = [paddle.to_tensor(a) for a in arrays]
    state = adagc.init(grads, cfg, backend="paddle")
    with pytest.raises(ValueError, match="fast_path=True but the CuPy fast path cannot run"):
        cb.paddle_update(grads, state, cfg, names=["a", "b"], required=True)
    for g, a in zip(grads, arrays):
        np.testing.assert_array_equal(g.numpy(), a)
    assert int(state.step) == 0 and not bool(state.seen.any())


# -- the benchmark plug-in --------------------------------------------------------------------


def test_bench_without_a_gpu_fails_with_a_clear_message(run_python) -> None:
    if cb.device_available():
        pytest.skip("a CUDA device is present: the benchmark would run")
    proc = run_python("-m", "adagc.bench", "--backend", "cupy", "--sets", "gpt2")
    assert proc.returncode == 2
    assert "CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_torch_frame_declines_what_has_no_plain_dense_cuda_memory() -> None:
    torch = pytest.importorskip("torch")
    fw = cb._frame("torch")
    with pytest.raises(P.Declined, match="dtype torch.int64"):
        fw.describe(torch.ones(3, dtype=torch.int64), 0)
    with pytest.raises(P.Declined, match="layout torch.sparse_coo"):
        fw.describe(torch.eye(3).to_sparse(), 1)
    with pytest.raises(P.Declined, match="gradient 2 is on cpu"):
        fw.describe(torch.ones(3), 2)
    with pytest.raises(P.Declined, match="state is on cpu"):
        fw.device_of(torch.ones(1))
