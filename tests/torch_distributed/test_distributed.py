"""AdaGC under real torch.distributed (gloo on the CPU, ranks spawned by the test)."""

from __future__ import annotations

import json
import socket

import pytest

torch = pytest.importorskip("torch")
import torch.multiprocessing as mp  # noqa: E402

from . import _workers  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, world: int, *args) -> None:
    mp.spawn(fn, args=(world, _port(), *args), nprocs=world, join=True)


def test_ddp_needs_no_collective_and_matches_single_process(tmp_path) -> None:
    out = tmp_path / "ddp.json"
    _spawn(_workers.ddp_worker, 2, str(out))
    counts = json.loads(out.read_text())["all_reduce_sizes_per_step"]
    assert counts == [[]] * _workers.STEPS


@pytest.mark.parametrize("world", [2, 4])
def test_fsdp2_exact_matches_unsharded_with_one_collective_per_step(tmp_path, world: int) -> None:
    out = tmp_path / "fsdp.json"
    _spawn(_workers.fsdp_worker, world, "exact", str(out))
    counts = json.loads(out.read_text())["all_reduce_sizes_per_step"]
    n_tensors = 4
    assert counts == [[n_tensors]] * _workers.STEPS  # one all_reduce of the stacked norms


def test_fsdp2_local_mode_only_reduces_the_flag(tmp_path) -> None:
    out = tmp_path / "local.json"
    _spawn(_workers.fsdp_worker, 2, "local", str(out))
    counts = json.loads(out.read_text())["all_reduce_sizes_per_step"]
    assert counts == [[2]] * _workers.STEPS  # [G^2, non-finite flag]: no per-tensor norms


def test_tensor_parallel_matches_unsharded(tmp_path) -> None:
    out = tmp_path / "tp.json"
    _spawn(_workers.tp_worker, 2, str(out))
    data = json.loads(out.read_text())
    assert data["all_reduce_sizes_per_step"] == [[4]] * _workers.STEPS
    assert any("Shard(dim=1)" in p for p in data["placements"])
    assert any("Replicate" in p for p in data["placements"])


def test_dcp_checkpoint_resumes_bit_identically(tmp_path) -> None:
    out = tmp_path / "dcp.json"
    _spawn(_workers.dcp_worker, 2, str(tmp_path / "ckpt"), str(out))
    assert json.loads(out.read_text())["resumed_bit_identical"] is True
