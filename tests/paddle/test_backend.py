"""The Paddle backend beyond the shared conformance suite: half precision, the two scaling
paths (host skip on CPU, the sync-free device path), and Paddle's quirks."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

import adagc
from adagc import AdaGCConfig
from adagc.backends.paddle import BACKEND, PaddleBackend, make_like

DEVICE_PATH = PaddleBackend(host_skip=False)


def _t(values, dtype: str) -> paddle.Tensor:
    return BACKEND.asarray(np.asarray(values, dtype=np.float64), dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_gradients_accumulate_in_float32(dtype: str) -> None:
    """300**2 * 4 = 360000 > 65504: a float16 sum of squares would overflow to Inf."""
    g = _t(np.full(4, 300.0), dtype)
    sq = BACKEND.sum_squares([g, None], "float32")
    assert BACKEND.dtype_name(sq) == "float32"
    assert sq.shape == [2]
    np.testing.assert_allclose(BACKEND.to_numpy(sq), [360000.0, 0.0], rtol=1e-6)


def test_float32_overflow_is_inf_not_rescaled() -> None:
    sq = BACKEND.sum_squares([_t([1e20, 1.0], "float32")], "float32")
    assert np.isinf(BACKEND.to_numpy(sq)[0])


def test_bfloat16_round_trips_through_numpy() -> None:
    g = _t([1.5, -2.0, 0.25], "bfloat16")
    assert BACKEND.dtype_name(g) == "bfloat16"
    out = BACKEND.to_numpy(g)
    assert out.dtype == np.float32  # not the raw uint16 bits paddle's .numpy() returns
    np.testing.assert_array_equal(out, [1.5, -2.0, 0.25])


def test_reductions_are_zero_dimensional() -> None:
    v = _t([1.0, 2.0], "float32")
    assert BACKEND.sum(v).shape == []
    assert BACKEND.all(BACKEND.isfinite(v)).shape == []
    assert BACKEND.stack([BACKEND.sum(v), BACKEND.sum(v)]).shape == [2]


def test_where_keeps_float64_with_python_scalars() -> None:
    v = _t([0.5, 2.0], "float64")
    out = BACKEND.where(v > 1.0, 1.0, v)
    assert BACKEND.dtype_name(out) == "float64"
    np.testing.assert_array_equal(BACKEND.to_numpy(out), [0.5, 1.0])
    assert BACKEND.dtype_name(BACKEND.minimum(v, 1.0)) == "float64"
    both = BACKEND.where(v > 1.0, 0.0, 1.0)
    np.testing.assert_array_equal(BACKEND.to_numpy(both), [1.0, 0.0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("inplace", [False, True])
def test_host_and_device_scaling_agree(dtype: str, inplace: bool) -> None:
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(3, 4)), rng.normal(size=5), np.array(2.0), rng.normal(size=2)]
    coef = _t([0.5, 1.0, 0.25, 0.125, 1.0], "float64" if dtype == "float64" else "float32")
    outs = []
    for backend in (BACKEND, DEVICE_PATH):
        grads = [_t(d, dtype) for d in data] + [None]
        res = backend.scale(grads, coef, None, inplace)
        assert res[-1] is None
        if inplace:
            assert all(r is g for r, g in zip(res[:-1], grads[:-1], strict=True))
        outs.append([BACKEND.to_numpy(r) for r in res[:-1]])
        assert [BACKEND.dtype_name(r) for r in res[:-1]] == [dtype] * 4
    for a, b, d, h in zip(outs[0], outs[1], data, [0.5, 1.0, 0.25, 0.125], strict=True):
        np.testing.assert_array_equal(a, b)
        ref = BACKEND.to_numpy(_t(d, dtype)) * h  # powers of two: exact in every dtype
        np.testing.assert_array_equal(a, ref.astype(a.dtype))


def test_host_path_skips_unit_coefficients() -> None:
    g = [_t([1.0, 2.0], "float32"), _t([3.0], "float32")]
    out = BACKEND.scale(g, _t([1.0, 0.5], "float32"), None, inplace=False)
    assert out[0] is g[0]  # h == 1: returned as is, not copied
    assert out[1] is not g[1]


@pytest.mark.parametrize("backend", [BACKEND, DEVICE_PATH], ids=["host", "device"])
def test_zero_policy_gives_exact_zeros_over_inf(backend: PaddleBackend) -> None:
    g = [_t([np.inf, 1.0], "float32"), _t([np.nan], "float64")]
    zero = paddle.to_tensor(True)
    out = backend.scale(g, _t([0.0, 0.0], "float32"), zero, inplace=True)
    for r in out:
        assert np.all(BACKEND.to_numpy(r) == 0)


class _NoHostReads:
    """Make every device-to-host read of a paddle.Tensor raise while active."""

    METHODS = ("numpy", "item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mp = monkeypatch

    def __enter__(self) -> None:
        for m in self.METHODS:
            self.mp.setattr(paddle.Tensor, m, self._boom(m), raising=False)

    def __exit__(self, *exc: object) -> None:
        self.mp.undo()

    @staticmethod
    def _boom(name: str):
        def read(self, *a, **k):
            raise AssertionError(f"device-to-host read: Tensor.{name} during a step")

        return read


@pytest.mark.parametrize("policy", ["propagate", "zero"])
@pytest.mark.parametrize("granularity", ["tensor", "global"])
def test_device_path_makes_no_host_read(
    monkeypatch: pytest.MonkeyPatch, policy: str, granularity: str
) -> None:
    """The accelerator path (forced on the CPU) reads no value on the host in a step, in
    warmup and in the adaptive phase, finite or not (spec §3 "sync-free")."""
    cfg = AdaGCConfig(warmup_steps=1, nonfinite=policy, granularity=granularity)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    grads = [_t(rng.normal(size=(4, 4)) * 5, "float32"), None, _t(rng.normal(size=3), "float32")]
    state = adagc.init(grads, cfg, backend=DEVICE_PATH)
    for k in range(3):
        if k == 2:
            grads[0] = _t(np.full((4, 4), np.inf), "float32")
        with _NoHostReads(monkeypatch):
            _, state, stats = adagc.update(grads, state, cfg, backend=DEVICE_PATH, inplace=True)
    assert int(state.step.numpy()) == 2  # the non-finite third step did not advance k
    assert bool(stats.nonfinite.numpy())


def test_make_like() -> None:
    like = make_like("cpu")
    assert like.place.is_cpu_place()
    with pytest.raises(ValueError, match="unknown Paddle device"):
        make_like("tpu")


def test_registered_and_detected() -> None:
    g = [paddle.ones([2])]
    assert adagc.get_backend("paddle") is BACKEND
    state = adagc.init(g)
    assert isinstance(state.gamma, paddle.Tensor)
    with pytest.raises(TypeError, match="several frameworks"):
        adagc.update([g[0], np.ones(2)], state)
