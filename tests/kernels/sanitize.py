"""Every fused kernel variant on small inputs, for NVIDIA compute-sanitizer::

    compute-sanitizer --tool memcheck  --error-exitcode 1 python tests/kernels/sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tests/kernels/sanitize.py
    compute-sanitizer --tool initcheck --error-exitcode 1 python tests/kernels/sanitize.py
    compute-sanitizer --tool synccheck --error-exitcode 1 python tests/kernels/sanitize.py

(``tests/kernels/gpu_check.sh`` runs all four.) Covered: float32 and float64 norms (finalize
and scale in both variants), float16 and float32 and float64 gradients (bfloat16 too when torch
with CUDA is installed), sizes below, at and above the vector width and the chunk, misaligned
and dense non-contiguous views, absent, empty and tied tensors, in-place and out-of-place
scaling, coefficient-1 skipping, both granularities, a non-finite step under "zero", split
launches, and an in-place step replayed from a CUDA graph. Exits 0 when every step ran; the
sanitizer's exit code reports what it found. Only the fused path runs (no generic CuPy ops,
whose library kernels would add noise).
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import cupy

    import adagc
    from adagc import AdaGCConfig
    from adagc.backends import _cupy_engine as engine
    from adagc.backends import cupy as cb
    from adagc.backends._cupy_plan import CHUNK

    if not cb.device_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)

    def arr(n: int, dtype: str, off: int = 0) -> cupy.ndarray:
        return cupy.asarray(rng.normal(0, 3, size=n + off).astype(dtype))[off:]

    sizes = [1, 3, 8, 9, 4097, CHUNK, CHUNK + 1, 2 * CHUNK + 13]
    mixed = [
        arr(n, dt, off)
        for n, dt, off in zip(
            sizes, ["float32", "float16", "float64"] * 3, [0, 1, 2, 3, 1, 0, 2, 1]
        )
    ]
    square = cupy.asarray(rng.normal(size=(17, 33)).astype(np.float32))
    mixed += [square.T, square[::-1], None, cupy.zeros(0, np.float32), mixed[2]]
    all64 = [arr(n, "float64", n % 2) for n in (5, CHUNK + 3, 2)]
    runs = 0
    for grads in (mixed, all64):
        for granularity in ("tensor", "global"):
            for inplace in (True, False):
                cfg = AdaGCConfig(warmup_steps=1, granularity=granularity)
                state = adagc.init(grads, cfg)
                for _ in range(3):  # warmup, then adaptive (some h_i == 1 chunks skipped)
                    _, state, _ = adagc.update(grads, state, cfg, inplace=inplace)
                    runs += 1
    # A non-finite step under "zero" (exact zeros written), with split launches.
    engine.PLANS.clear()
    engine.LAUNCH_CHUNKS = 2
    bad = [arr(3 * CHUNK + 5, "float32", 1), arr(10, "float16")]
    bad[0][7] = np.inf
    cfg = AdaGCConfig(warmup_steps=0, nonfinite="zero")
    adagc.update(bad, adagc.init(bad, cfg), cfg, inplace=True)
    runs += 1
    engine.LAUNCH_CHUNKS = engine.MAX_CHUNKS_PER_LAUNCH
    # The graph-capturable in-place step.
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        grads = [arr(CHUNK + 7, "float32", 3), arr(11, "float32")]
        step = cb.InplaceStep(grads, AdaGCConfig(warmup_steps=1))
        step(grads)
        stream.begin_capture()
        step(grads)
        graph = stream.end_capture()
        for _ in range(3):
            graph.launch(stream)
        stream.synchronize()
        runs += 4
    runs += _torch_bfloat16()
    cupy.cuda.Device().synchronize()
    print(f"sanitize: {runs} fused steps ran")
    return 0


def _torch_bfloat16() -> int:
    """bfloat16 through the torch entry point, when torch has CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    if not torch.cuda.is_available():
        return 0
    import adagc
    from adagc import AdaGCConfig

    base = torch.randn(70_001, device="cuda").to(torch.bfloat16)
    grads = [base[1:], torch.randn(5, 3, device="cuda", dtype=torch.bfloat16).t()]
    cfg = AdaGCConfig(warmup_steps=1)
    state = adagc.init(grads, cfg)
    for inplace in (True, False, True):
        _, state, _ = adagc.update(grads, state, cfg, inplace=inplace)
    torch.cuda.synchronize()
    return 3


if __name__ == "__main__":
    sys.exit(main())
