"""The fused kernels on a real GPU. Skipped, with the reason shown, where CuPy finds no CUDA
device (``cupy.cuda.runtime.getDeviceCount()`` fails or is 0). ``tests/kernels/gpu_check.sh``
runs these with the conformance suites, the sanitizers and the benchmark in one go.

- the kernels equal their NumPy mirror bit for bit (partials, finalize, scale);
- fused == generic on CuPy arrays for odd sizes, misaligned and dense views, empty, absent and
  tied tensors, more than 4,000 tensors, split launches, every non-finite policy;
- coefficient-1 tensors come back bit-identical;
- a captured CUDA graph replayed k steps equals k eager steps (CuPy ``InplaceStep`` and the
  torch adapter);
- torch CUDA tensors through the fast path equal the generic torch path (float32 rtol 1e-6,
  bfloat16 within bfloat16 rounding), including >4,000 tensors, misaligned views, streams;
- Paddle GPU tensors through ``paddle_update`` equal the generic Paddle path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import adagc
from adagc import AdaGCConfig, NonFiniteGradientError

cupy = pytest.importorskip("cupy", reason="the kernels session installs adagc[cupy]")

from adagc.backends import _cupy_engine as engine  # noqa: E402
from adagc.backends import cupy as cb  # noqa: E402
from adagc.backends._cupy_plan import CHUNK  # noqa: E402

from . import emulate as em  # noqa: E402

pytestmark = pytest.mark.skipif(
    not cb.device_available(),
    reason="no CUDA device: cupy.cuda.runtime.getDeviceCount() failed or is 0",
)


@pytest.fixture(autouse=True)
def _fresh_plans() -> Any:
    engine.PLANS.clear()
    yield
    engine.PLANS.clear()
    engine.LAUNCH_CHUNKS = engine.MAX_CHUNKS_PER_LAUNCH


def _cupy_grads(seed: int, dtypes: list[str], sizes: list[int], offsets: list[int]) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = []
    for dt, n, off in zip(dtypes, sizes, offsets):
        base = cupy.asarray(rng.normal(0, 10 ** rng.uniform(-2, 1), size=n + off).astype(dt))
        out.append(base[off:])  # off > 0: a view whose start is not 16-byte aligned
    return out


def _host(xs: list[Any]) -> list[Any]:
    return [None if x is None else cupy.asnumpy(x) for x in xs]


# -- bit for bit against the NumPy mirror --------------------------------------------------


# lambda_abs=0.5: the warmup global norm exceeds it, so "raw" and "clipped" gammas differ.
@pytest.mark.parametrize(
    ("warmup_gamma", "lambda_abs"), [("clipped", 5.0), ("clipped", 0.5), ("raw", 0.5)]
)
@pytest.mark.parametrize("norm64", [False, True])
def test_kernels_equal_the_numpy_mirror_bit_for_bit(
    norm64: bool, warmup_gamma: str, lambda_abs: float
) -> None:
    dtypes = ["float64"] * 5 if norm64 else ["float32", "float16", "float64", "float32", "float16"]
    sizes = [1, 7, CHUNK + 3, 3 * CHUNK + 5, 4099]
    grads: list[Any] = _cupy_grads(0, dtypes, sizes, [0, 1, 3, 1, 5])
    grads += [None, cupy.zeros(0, dtype=dtypes[0]), grads[1]]  # absent, empty, tie
    cfg = AdaGCConfig(warmup_steps=2, lambda_abs=lambda_abs, warmup_gamma=warmup_gamma)
    state = adagc.init(grads, cfg)
    for k in range(5):
        step, gamma, seen = int(state.step), cupy.asnumpy(state.gamma), cupy.asnumpy(state.seen)
        scaled = [None if g is None else g * (1 + k % 3) for g in grads[:7]] + [None]
        scaled[7] = scaled[1]
        out, state, stats = adagc.update(scaled, state, cfg)  # functional: inputs kept
        layout = cb._inspect(cb._CUPY, scaled)
        plan = engine.PLANS.get(layout.key)
        assert plan is not None
        flats = [
            None if n == 0 else em.memory_order(cupy.asnumpy(g))
            for g, n in zip(scaled, layout.numels)
        ]
        partials = em.sumsq_partials(plan.host, flats)
        np.testing.assert_array_equal(cupy.asnumpy(plan.partials), partials)
        fin = em.finalize(plan.host, partials, step, gamma, seen, cfg, norm64)
        np.testing.assert_array_equal(cupy.asnumpy(stats.norms), fin.norms)
        np.testing.assert_array_equal(cupy.asnumpy(stats.coefficients), fin.coefficients)
        assert float(stats.global_norm) == fin.global_norm
        assert float(stats.clipped_global_norm) == fin.clipped_global_norm
        assert int(stats.num_clipped) == fin.num_clipped
        np.testing.assert_array_equal(cupy.asnumpy(state.gamma), fin.gamma)
        np.testing.assert_array_equal(cupy.asnumpy(state.seen), fin.seen)
        assert int(state.step) == fin.step
        for j, (o, g) in enumerate(zip(out, scaled)):
            if g is None or layout.numels[j] == 0:
                continue
            code = layout.codes[j]
            want, _ = em.scale(cupy.asnumpy(g), code, fin.coefficients[j], False, False)
            np.testing.assert_array_equal(cupy.asnumpy(o), want, err_msg=f"tensor {j}")


# -- fused == generic on CuPy arrays -----------------------------------------------------


def _fused_vs_generic(make: Any, cfg: AdaGCConfig, steps: int = 4, rtol: float = 1e-6) -> None:
    """``make(k)`` builds step k's gradients (fresh arrays, views and ties as wanted); it is
    called twice per step, for the fused and for the generic path, both in place."""
    first = make(0)
    s_f, s_g = adagc.init(first, cfg), adagc.init(first, cfg)
    for k in range(steps):
        a, b = make(k), make(k)
        out_f, s_f, st_f = adagc.update(a, s_f, cfg, inplace=True)
        assert engine.PLANS.get(cb._inspect(cb._CUPY, a).key) is not None  # it was fused
        out_g, s_g, st_g = adagc.update(b, s_g, cfg, inplace=True, fused=False)
        for j, (x, y) in enumerate(zip(_host(out_f), _host(out_g))):
            if y is None:
                assert x is None
                continue
            scale = float(np.max(np.abs(y.astype(np.float64)), initial=0))
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=f"{k}/{j}")
        for name in ("norms", "coefficients", "global_norm", "clipped_global_norm"):
            np.testing.assert_allclose(
                cupy.asnumpy(getattr(st_f, name)),
                cupy.asnumpy(getattr(st_g, name)),
                rtol=rtol,
                err_msg=name,
            )
        assert int(st_f.num_clipped) == int(st_g.num_clipped)
        assert bool(st_f.nonfinite) == bool(st_g.nonfinite)
        np.testing.assert_allclose(cupy.asnumpy(s_f.gamma), cupy.asnumpy(s_g.gamma), rtol=rtol)
        assert int(s_f.step) == int(s_g.step)


@pytest.mark.parametrize("granularity", ["tensor", "global"])
def test_odd_sizes_misaligned_empty_absent_tied(granularity: str) -> None:
    sizes = [1, 2, 3, 5, 8, 9, 15, 17, 31, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7]
    offsets = [i % 4 for i in range(len(sizes))]

    def make(k: int) -> list[Any]:
        grads: list[Any] = _cupy_grads(k, ["float32"] * len(sizes), sizes, offsets)
        base = cupy.asarray(np.random.default_rng(k).normal(size=(33, 65)).astype(np.float32))
        other = cupy.asarray(np.random.default_rng(k + 50).normal(size=(9, 7)).astype(np.float32))
        # F-order and reversed views (dense, not C-contiguous), absent, empty, a tie
        return [*grads, base.T, other[::-1], None, cupy.zeros((0, 3), np.float32), grads[0]]

    _fused_vs_generic(make, AdaGCConfig(warmup_steps=1, granularity=granularity))
    # warmup_gamma="raw" with the warmup global norm above lambda_abs (spec §1).
    raw = AdaGCConfig(warmup_steps=2, lambda_abs=0.1, granularity=granularity, warmup_gamma="raw")
    _fused_vs_generic(make, raw)


def test_more_than_4000_tensors_and_split_launches() -> None:
    def many(k: int) -> list[Any]:
        rng = np.random.default_rng(k)
        return [
            cupy.asarray(rng.normal(size=1 + (i * 41) % 700).astype(np.float32))
            for i in range(4500)
        ]

    _fused_vs_generic(many, AdaGCConfig(warmup_steps=1), steps=3)
    engine.PLANS.clear()
    engine.LAUNCH_CHUNKS = 7  # many launches per kernel, boundaries inside tensors

    def big(k: int) -> list[Any]:
        return _cupy_grads(k, ["float32", "float16"], [5 * CHUNK + 3, 3 * CHUNK], [1, 2])

    # float16 outputs: the generic path rounds h to float16 before multiplying
    _fused_vs_generic(big, AdaGCConfig(warmup_steps=1), steps=3, rtol=2.0**-10)
    assert all(len(p.host.launches) > 1 for p in engine.PLANS._plans.values())


@pytest.mark.parametrize("policy", ["propagate", "zero", "raise"])
def test_nonfinite_policies(policy: str) -> None:
    cfg = AdaGCConfig(warmup_steps=0, nonfinite=policy)
    grads = _cupy_grads(5, ["float32"] * 3, [10, CHUNK + 9, 4], [0, 1, 2])
    state = adagc.init(grads, cfg)
    _, state, _ = adagc.update(grads, state, cfg, inplace=True)
    grads[1][17] = np.inf
    before = _host(grads)
    old = (int(state.step), cupy.asnumpy(state.gamma), cupy.asnumpy(state.seen))
    if policy == "raise":
        with pytest.raises(NonFiniteGradientError) as info:
            adagc.update(grads, state, cfg, inplace=True, names=["a", "b", "c"])
        assert info.value.tensors == ["b"]
        for b, g in zip(before, _host(grads)):
            np.testing.assert_array_equal(b, g)  # nothing was scaled
        return
    out, new, stats = adagc.update(grads, state, cfg, inplace=True)
    assert bool(stats.nonfinite) and int(stats.num_clipped) == 0
    assert (int(new.step), *map(list, (cupy.asnumpy(new.gamma), cupy.asnumpy(new.seen)))) == (
        old[0],
        list(old[1]),
        list(old[2]),
    )
    for b, o in zip(before, _host(out)):
        if policy == "zero":
            assert np.all(o == 0) and not np.any(np.signbit(o))  # exact +0.0, no NaN
        else:
            np.testing.assert_array_equal(b, o)


def test_coefficient_one_tensors_come_back_bit_identical() -> None:
    cfg = AdaGCConfig(warmup_steps=0)
    grads = _cupy_grads(6, ["float32", "float16", "float64"], [CHUNK + 11, 999, 77], [1, 3, 0])
    norms = [float(cupy.linalg.norm(g.astype(np.float64))) for g in grads]
    # tensor 0 clipped (1% above its threshold), 1 and 2 not (25% below)
    gamma = [norms[0] / 1.04 * 0.99, norms[1] / 1.04 * 1.25, norms[2] / 1.04 * 1.25]
    state = adagc.AdaGCState(
        cupy.asarray(np.int64(5)), cupy.asarray(np.float32(gamma)), cupy.ones(3, dtype=bool)
    )
    raw = [cupy.asnumpy(g).view(np.uint8).copy() for g in grads]
    _, _, stats = adagc.update(grads, state, cfg, inplace=True)
    h = cupy.asnumpy(stats.coefficients)
    assert h[0] < 1 and h[1] == 1 and h[2] == 1
    assert not np.array_equal(cupy.asnumpy(grads[0]).view(np.uint8), raw[0])
    for j in (1, 2):
        np.testing.assert_array_equal(cupy.asnumpy(grads[j]).view(np.uint8), raw[j])


# -- CUDA graphs ---------------------------------------------------------------------------


def test_cupy_inplace_step_graph_replay_equals_eager() -> None:
    cfg = AdaGCConfig(warmup_steps=2)
    rng = np.random.default_rng(7)
    shapes = [(300, 7), (CHUNK + 5,), (13,)]
    values = [
        [rng.normal(0, 1 + k % 3, size=s).astype(np.float32) for s in shapes] for k in range(6)
    ]
    static = [cupy.asarray(v) for v in values[0]]
    eager = [cupy.asarray(v) for v in values[0]]
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        captured_step = cb.InplaceStep(static, cfg)
        eager_step = cb.InplaceStep(eager, cfg)
        captured_step(static)  # first call builds the plan: not capturable
        eager_step(eager)
        stream.begin_capture()
        captured_step(static)
        graph = stream.end_capture()
        for k in range(1, 6):
            for s, e, v in zip(static, eager, values[k]):
                s.set(v, stream=stream)
                e.set(v, stream=stream)
            graph.launch(stream)
            eager_step(eager)
            stream.synchronize()
            for s, e in zip(static, eager):
                np.testing.assert_array_equal(cupy.asnumpy(s), cupy.asnumpy(e))
            for a, b in zip(captured_step.state, eager_step.state):
                np.testing.assert_array_equal(cupy.asnumpy(a), cupy.asnumpy(b))
            for a, b in zip(captured_step.stats, eager_step.stats):
                np.testing.assert_array_equal(cupy.asnumpy(a), cupy.asnumpy(b))
        # One eager step, then five replays: capturing records the kernels without running them.
        assert int(captured_step.state.step) == int(eager_step.state.step) == 6


# -- torch CUDA tensors --------------------------------------------------------------------


def _torch() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device (a CPU build of torch?)")
    return torch


def _model(torch: Any, dtype: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Embedding(1000, 64),
        torch.nn.Linear(64, 257),
        torch.nn.LayerNorm(257),
        torch.nn.Linear(257, 3),
    )
    return model.to(device="cuda", dtype=dtype)


def _set_grads(torch: Any, models: list[Any], k: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(100 + k)
    for ps in zip(*(m.parameters() for m in models)):
        g = torch.randn(ps[0].shape, generator=gen, device="cuda") * (0.1 + k % 4)
        for p in ps:
            p.grad = g.to(p.dtype).clone()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_fast_path_equals_the_generic_torch_path(dtype: str) -> None:
    torch = _torch()
    from adagc.adapters.torch import AdaGC

    dt = getattr(torch, dtype)
    fast_model, slow_model = _model(torch, dt), _model(torch, dt)
    fast = AdaGC(fast_model.named_parameters(), warmup_steps=3, fast_path=True)
    slow = AdaGC(slow_model.named_parameters(), warmup_steps=3, fast_path=False)
    # float32: rtol 1e-6; bfloat16: the two paths may round h_i * g_i differently by one
    # bfloat16 ulp (2**-7 relative), the fused path rounding once from float32.
    rtol = 1e-6 if dtype == "float32" else 2.0**-7
    for k in range(8):
        _set_grads(torch, [fast_model, slow_model], k)
        sf, ss = fast.clip_(), slow.clip_()
        for pf, ps in zip(fast_model.parameters(), slow_model.parameters()):
            torch.testing.assert_close(pf.grad, ps.grad, rtol=rtol, atol=1e-30)
        for name in ("norms", "coefficients", "global_norm", "clipped_global_norm"):
            torch.testing.assert_close(getattr(sf, name), getattr(ss, name), rtol=1e-6, atol=0)
        assert int(sf.num_clipped) == int(ss.num_clipped)
        torch.testing.assert_close(fast.state.gamma, slow.state.gamma, rtol=1e-6, atol=0)
        assert int(fast.state.step) == int(slow.state.step)


def test_torch_core_update_takes_the_fast_path_for_views_and_many_tensors() -> None:
    torch = _torch()
    sizes = [1 + (i * 13) % 60 for i in range(4500)] + [2 * CHUNK + 5]

    def make(k: int) -> list[Any]:
        gen = torch.Generator(device="cuda").manual_seed(k)
        flat = torch.randn(sum(sizes) + len(sizes) + 1, generator=gen, device="cuda")
        views, off = [], 1  # odd offsets: starts not 16-byte aligned
        for n in sizes:
            views.append(flat[off : off + n])
            off += n + 1
        views.append(torch.randn(40, 30, generator=gen, device="cuda").t())  # dense view
        return views

    cfg = AdaGCConfig(warmup_steps=1)
    s_f, s_g = adagc.init(make(0), cfg), adagc.init(make(0), cfg)
    for k in range(3):
        a, b = make(k), make(k)
        _, s_f, st_f = adagc.update(a, s_f, cfg, inplace=True)
        assert engine.PLANS.get(cb._inspect(cb._frame("torch"), a).key) is not None
        _, s_g, st_g = adagc.update(b, s_g, cfg, inplace=True, fused=False)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-30)
        torch.testing.assert_close(st_f.coefficients, st_g.coefficients, rtol=1e-6, atol=0)
        torch.testing.assert_close(s_f.gamma, s_g.gamma, rtol=1e-6, atol=0)


def test_torch_runs_on_the_current_stream() -> None:
    torch = _torch()
    from adagc.adapters.torch import AdaGC

    models = [_model(torch, torch.float32, 1), _model(torch, torch.float32, 1)]
    clippers = [AdaGC(m.parameters(), warmup_steps=1, fast_path=True) for m in models]
    side = torch.cuda.Stream()
    for k in range(3):
        _set_grads(torch, models, k)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            clippers[0].clip_()  # queued on the side stream, after the gradients were written
        torch.cuda.current_stream().wait_stream(side)
        clippers[1].clip_()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(a.grad, b.grad)


def test_torch_cuda_graph_replay_equals_eager() -> None:
    torch = _torch()
    from adagc.adapters.torch import AdaGC

    graph_model, eager_model = _model(torch, torch.float32, 2), _model(torch, torch.float32, 2)
    _set_grads(torch, [graph_model, eager_model], 0)
    static = [p.grad for p in graph_model.parameters()]  # the graph's inputs, kept in place
    captured = AdaGC(graph_model.parameters(), warmup_steps=2, fast_path=True)
    eager = AdaGC(eager_model.parameters(), warmup_steps=2, fast_path=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up builds the plan, as torch.cuda.graphs asks
        captured.clip_()
        eager.clip_()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        stats = captured.clip_()
    for k in range(1, 7):
        gen = torch.Generator(device="cuda").manual_seed(500 + k)
        for g, pe in zip(static, eager_model.parameters()):
            new = torch.randn(g.shape, generator=gen, device="cuda") * (0.1 + k % 3)
            g.copy_(new)
            pe.grad.copy_(new)
        graph.replay()
        ref = eager.clip_()
        torch.cuda.synchronize()
        for g, pe in zip(static, eager_model.parameters()):
            assert torch.equal(g, pe.grad)
        for a, b in zip(captured.state, eager.state):
            assert torch.equal(a, b)
        assert torch.equal(stats.coefficients, ref.coefficients)
    assert int(captured.state.step) == int(eager.state.step) == 7


# -- Paddle GPU tensors ----------------------------------------------------------------------


def test_paddle_gpu_fast_path_equals_the_generic_path() -> None:
    paddle = pytest.importorskip("paddle")
    if not paddle.device.is_compiled_with_cuda():
        pytest.skip("Paddle is a CPU build (install paddlepaddle-gpu)")
    from adagc.adapters.paddle import ClipGradByAdaGC

    paddle.set_device("gpu")
    paddle.seed(0)
    fast_model = paddle.nn.Sequential(paddle.nn.Linear(64, 300), paddle.nn.Linear(300, 5))
    slow_model = paddle.nn.Sequential(paddle.nn.Linear(64, 300), paddle.nn.Linear(300, 5))
    slow_model.set_state_dict(fast_model.state_dict())
    fast = ClipGradByAdaGC(warmup_steps=2, fast_path=True)
    slow = ClipGradByAdaGC(warmup_steps=2, fast_path=False)
    rng = np.random.default_rng(0)
    for k in range(6):
        x = paddle.to_tensor(rng.normal(0, 1 + k, size=(16, 64)).astype(np.float32))
        pairs = []
        for model in (fast_model, slow_model):
            model.clear_gradients()
            (model(x) ** 2).sum().backward()
            pairs.append([(p, p.grad) for p in model.parameters()])
        out_f, out_s = fast(pairs[0]), slow(pairs[1])
        for (_, gf), (_, gs) in zip(out_f, out_s):
            np.testing.assert_allclose(gf.numpy(), gs.numpy(), rtol=1e-6, atol=1e-30)
        np.testing.assert_allclose(
            fast.last_stats.coefficients.numpy(), slow.last_stats.coefficients.numpy(), rtol=1e-6
        )
