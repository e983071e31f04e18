"""Real two-process ``paddle.distributed`` runs (gloo on the CPU) against single-process runs:
data parallel, sharded gradients with exact norms (one all-reduce per step), AdaGC-Shard
(``shard_mode="local"``), and fleet hybrid parallelism's model-parallel group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

import adagc
from adagc.adapters.paddle import ClipGradByAdaGC
from adagc.backends.numpy import BACKEND as NP

from . import _dist_workers as W


def _spawn(run_python, scenario: str, outdir: Path) -> list[dict[str, np.ndarray]]:
    proc = run_python("-m", "tests.paddle._dist_workers", scenario, str(outdir), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = []
    for r in range(2):
        with np.load(outdir / f"{scenario}-rank{r}.npz") as f:
            ranks.append(dict(f))
    return ranks


@pytest.fixture(scope="module")
def run_python_module():
    """``tests/conftest.py``'s ``run_python``, module-scoped (one spawn serves several tests)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def run(*args: str, timeout: float = 300):
        env = {**os.environ, "PYTHONPATH": str(root)}
        return subprocess.run(
            [sys.executable, *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    return run


@pytest.fixture(scope="module")
def plain(run_python_module, tmp_path_factory) -> list[dict[str, np.ndarray]]:
    return _spawn(run_python_module, "plain", tmp_path_factory.mktemp("plain"))


def _reference_full(prefix: str) -> list[list[np.ndarray]]:
    """Single process: the same steps on the full (unsharded) gradients."""
    params = [
        paddle.create_parameter(list(s), "float32", name=f"{prefix}{i}")
        for i, s in enumerate(W.SHAPES)
    ]
    clip = ClipGradByAdaGC(warmup_steps=W.WARMUP)
    outs = []
    for step in range(W.STEPS):
        pairs = [
            (p, paddle.to_tensor(g)) for p, g in zip(params, W.sharded_grads(step), strict=True)
        ]
        outs.append([g.numpy() for _, g in clip(pairs)])
    return outs


def _assert_shards_match(ranks, key: str, reference) -> None:
    for step in range(W.STEPS):
        for r, res in enumerate(ranks):
            expect = W.shard(reference[step], r)
            for i, e in enumerate(expect):
                got = res[f"{key}_s{step}_t{i}"]
                np.testing.assert_allclose(
                    got, e, rtol=1e-5, atol=1e-7, err_msg=f"{key} step {step} tensor {i} rank {r}"
                )


def test_data_parallel_equals_single_process(plain) -> None:
    model = W.dp_model()
    clip = ClipGradByAdaGC(warmup_steps=W.WARMUP, lambda_abs=0.5)
    W.dp_train(model, W.STEPS, None, clip)
    for r, res in enumerate(plain):
        assert int(res["dp_allreduce_calls"]) == 0  # replicated gradients: no communication
        for i, p in enumerate(model.parameters()):
            np.testing.assert_allclose(
                res[f"dp_param{i}"], p.numpy(), rtol=1e-4, atol=1e-6, err_msg=f"rank {r} param {i}"
            )
        np.testing.assert_allclose(res["dp_gamma"], clip._groups[0].state.gamma.numpy(), rtol=1e-4)


def test_sharded_exact_norms_equal_unsharded(plain) -> None:
    _assert_shards_match(plain, "exact", _reference_full("ref_exact"))
    for res in plain:
        # one collective per step for all three tensors (one process group), not one per tensor
        assert int(res["exact_allreduce_calls"]) == W.STEPS
    np.testing.assert_array_equal(plain[0]["exact_gamma"], plain[1]["exact_gamma"])


def test_shard_local_mode_clips_each_shard_by_its_own_norm(plain) -> None:
    """AdaGC-Shard oracle: the core on NumPy per rank, whose reducer adds the other rank's
    [G^2, non-finite flag] (what the SUM all-reduce returns)."""
    cfg = adagc.AdaGCConfig(warmup_steps=W.WARMUP, shard_mode="local")

    class Other:
        def __init__(self, vec: np.ndarray) -> None:
            self.vec = vec

        def sum(self, v: np.ndarray) -> np.ndarray:
            return v + self.vec

        def sum_squares(self, v: np.ndarray) -> np.ndarray:
            raise AssertionError("local mode reduces no per-tensor norms")

    states = [None, None]
    for step in range(W.STEPS):
        full = W.sharded_grads(step)
        g2 = [float(np.sum(NP.sum_squares(W.shard(full, r), "float32"))) for r in range(2)]
        for r, res in enumerate(plain):
            grads = [g.copy() for g in W.shard(full, r)]
            states[r] = states[r] or adagc.init(grads, cfg)
            other = np.array([g2[1 - r], 0.0], np.float32)
            out, states[r], _ = adagc.update(grads, states[r], cfg, reducer=Other(other))
            for i, e in enumerate(out):
                np.testing.assert_allclose(res[f"local_s{step}_t{i}"], e, rtol=1e-5, atol=1e-7)
    for res in plain:
        assert int(res["local_allreduce_calls"]) == W.STEPS


def test_fleet_model_parallel_group(run_python_module, tmp_path) -> None:
    ranks = _spawn(run_python_module, "fleet", tmp_path)
    assert all(int(r["sum_groups"]) == 1 for r in ranks)  # the model-parallel group
    _assert_shards_match(ranks, "fleet", _reference_full("ref_fleet"))


def test_pipeline_stages_equal_the_single_process(run_python_module, tmp_path) -> None:
    """``pp_group``: two ranks holding different whole tensors (as pipeline stages do) clip
    exactly as one process with all tensors, through warmup and after, with one all-reduce
    per step; an Inf on stage 1 only makes both stages skip (the step counters stay equal)."""
    ranks = _spawn(run_python_module, "stages", tmp_path)
    params = [
        paddle.create_parameter(list(s), "float32", name=f"ref_stages{i}")
        for i, s in enumerate(W.SHAPES)
    ]
    clip = ClipGradByAdaGC(warmup_steps=W.WARMUP)
    for step in range(W.STEPS):
        pairs = [(p, paddle.to_tensor(g)) for p, g in zip(params, W.stage_grads(step), strict=True)]
        want = [g.numpy() for _, g in clip(pairs)]
        for res in ranks:
            assert bool(res[f"stages_nonfinite_s{step}"]) == (step == W.INF_STEP)
            np.testing.assert_allclose(
                res[f"stages_global_norm_s{step}"], clip.last_stats.global_norm.numpy(), rtol=1e-6
            )
            for i in res["tensors"]:
                np.testing.assert_allclose(
                    res[f"stages_s{step}_t{i}"],
                    want[i],
                    rtol=1e-6,
                    atol=1e-7,
                    err_msg=f"{step} {i}",
                )
    gamma, step = clip._groups[0].state.gamma.numpy(), int(clip._groups[0].state.step.numpy())
    for res in ranks:
        assert int(res["stages_allreduce_calls"]) == W.STEPS  # [G^2, flag] only
        assert int(res["stages_step"]) == step == W.STEPS - 1  # the Inf step was skipped
        np.testing.assert_allclose(res["stages_gamma"], gamma[res["tensors"]], rtol=1e-6)
