"""Pipeline and expert parallelism over real torch.distributed (gloo, spawned ranks):
``torch.distributed.pipelining`` stages, FSDP2 per stage, EP x FSDP placements."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from . import _pp_workers  # noqa: E402
from ._workers import STEPS  # noqa: E402
from .test_distributed import _spawn  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def test_two_stages_equal_the_single_process_through_warmup_and_after(tmp_path) -> None:
    out = tmp_path / "pp.json"
    _spawn(_pp_workers.pipeline_worker, 2, 1, "exact", str(out))
    data = json.loads(out.read_text())
    # exact per-tensor norms need nothing from the other stage: one [G^2, flag] all-reduce.
    assert data["collectives_per_step"] == [[[2]]] * STEPS
    assert data["global_per_step"] == [[[]]] * STEPS  # torchtitan-style: the scalar over PP
    # Without pp_mesh a stage's G is its own: the warmup would clip by the wrong norm.
    assert all(data["alone_global_norm_differs"])


def test_nonfinite_on_one_stage_skips_every_stage(tmp_path) -> None:
    out = tmp_path / "inf.json"
    _spawn(_pp_workers.nonfinite_worker, 2, str(out))
    data = json.loads(out.read_text())
    bad = data["bad_step"]
    first, last = data["ranks"]
    for rank in (first, last):
        assert rank["flags"] == [k == bad for k in range(STEPS)]
        assert rank["steps"] == [k + (k < bad) for k in range(STEPS)]
    assert first["steps"] == last["steps"]
    assert "another rank" in first["message"] and "4.weight" in last["message"]
    # What pp_mesh prevents: without it only the stage with the Inf skips, k drifts apart.
    assert first["alone"][-1] == last["alone"][-1] + 1


def test_pipeline_times_fsdp2_equals_the_single_process(tmp_path) -> None:
    out = tmp_path / "ppdp.json"
    _spawn(_pp_workers.pipeline_worker, 4, 2, "exact", str(out))
    data = json.loads(out.read_text())
    # rank 0 is stage 0 (4 tensors): one [4] over dp for full norms, one [2] over pp.
    assert data["collectives_per_step"] == [[[4], [2]]] * STEPS
    assert data["global_per_step"] == [[[4], []]] * STEPS


def test_pipeline_times_fsdp2_local_mode_makes_one_collective(tmp_path) -> None:
    out = tmp_path / "ppdp_local.json"
    _spawn(_pp_workers.pipeline_worker, 4, 2, "local", str(out))
    data = json.loads(out.read_text())
    assert data["collectives_per_step"] == [[[2]]] * STEPS  # over pp x dp, flattened


def test_experts_over_ep_and_dense_over_dp_give_single_process_norms(tmp_path) -> None:
    out = tmp_path / "ep.json"
    _spawn(_pp_workers.expert_worker, 4, str(out))
    data = json.loads(out.read_text())
    # One [5] per process group: dp (router, out, and the experts' rows), then ep.
    assert data["collectives_per_step"] == [[[5], [5]]] * STEPS, data
    assert data["global_per_step"] == [[[5], [5]]] * STEPS  # clip_grad_norm_: the same


def test_dcp_on_pipeline_times_fsdp2_resumes_bit_identically(tmp_path) -> None:
    out = tmp_path / "dcp.json"
    _spawn(_pp_workers.dcp_worker, 4, str(tmp_path / "ckpt"), str(out))
    data = json.loads(out.read_text())
    assert data["resumed_bit_identical"] is True
    first, _, last, _ = data["wrong_stage_errors"]  # ranks 0, 1: stage 0; 2, 3: stage 1
    assert first == "" and "stage 0's AdaGC state; this clipper is stage 1" in last
