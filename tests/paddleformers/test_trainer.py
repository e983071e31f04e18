"""PaddleFormers Trainer + AdaGCCallback: a config-built Llama trains on the CPU with the
Trainer's LR schedule, logs the AdaGC metrics, and resumes bit-identically in both checkpoint
formats that run on one CPU process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("paddleformers")


def _run(run_python, out: Path, phase: str, fmt: str = "") -> dict:
    done = run_python("-m", "tests.paddleformers._run", str(out), phase, fmt, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / f"{phase}.json").read_text())


def _params(out: Path, phase: str) -> dict[str, np.ndarray]:
    return dict(np.load(out / f"{phase}.npz"))


@pytest.mark.parametrize("fmt", ["", "unified_checkpoint"], ids=["flex", "unified"])
def test_resume_is_bit_identical(run_python, tmp_path, fmt: str) -> None:
    full = _run(run_python, tmp_path, "full", fmt)
    assert full["grad_clip"] == "ClipGradByAdaGC" and full["max_grad_norm"] == 0.0
    assert any("max_grad_norm=1.0" in w for w in full["warnings"])  # disabled, said so
    assert full["optimizer_keys_with_adagc"] == []  # the formats map keys to parameters
    assert (tmp_path / "checkpoint-3" / "adagc_state_0.pdparams").is_file()
    resumed = _run(run_python, tmp_path, "resume", fmt)
    a, b = _params(tmp_path, "full"), _params(tmp_path, "resume")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), "resumed training differs"
    assert not any("restarts in warmup" in w for w in resumed["warnings"])

    # Without the AdaGC file the resume warns and AdaGC restarts in warmup: not identical.
    os.remove(tmp_path / "checkpoint-3" / "adagc_state_0.pdparams")
    lost = _run(run_python, tmp_path, "resume", fmt)
    assert any("restarts in warmup" in w for w in lost["warnings"])
    c = _params(tmp_path, "resume")
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_schedule_kept_metrics_logged_and_not_global_clipping(run_python, tmp_path) -> None:
    adagc = _run(run_python, tmp_path, "full")
    entries = [e for e in adagc["logs"] if "loss" in e]
    assert len(entries) == 6
    lrs = [e["learning_rate"] for e in entries]
    assert lrs[0] < lrs[1] > lrs[-1]  # linear warmup then decay: the Trainer's schedule
    for e in entries:  # logged before the recording callback reads the entry
        assert 0.0 <= e["adagc/clipped_fraction"] <= 1.0
        assert 0.0 < e["adagc/min_coefficient"] <= 1.0
        assert e["adagc/global_norm"] > 0.0
    plain = _run(run_python, tmp_path / "plain", "plain")
    assert plain["grad_clip"] == "ClipGradByGlobalNorm"
    a, b = _params(tmp_path, "full"), _params(tmp_path / "plain", "plain")
    assert not all(np.array_equal(a[k], b[k]) for k in a)  # AdaGC did clip differently


def test_refuses_an_optimizer_that_already_clips(tmp_path) -> None:
    import paddle
    from paddleformers.trainer import Trainer, TrainingArguments

    from adagc.adapters.paddle import ClipGradByAdaGC
    from adagc.adapters.paddleformers import AdaGCCallback

    from ._run import Tokens, model

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        report_to=[],
        disable_tqdm=True,
        amp_master_grad=False,
        per_device_train_batch_size=4,
    )
    for clip in (paddle.nn.ClipGradByGlobalNorm(1.0), ClipGradByAdaGC()):
        m = model()
        opt = paddle.optimizer.AdamW(1e-3, parameters=m.parameters(), grad_clip=clip)
        trainer = Trainer(
            model=m,
            args=args,
            train_dataset=Tokens(),
            optimizers=(opt, None),
            callbacks=[AdaGCCallback()],
        )
        with pytest.raises(ValueError, match="already clips gradients"):
            trainer.train()


def test_bad_config_fails_at_construction() -> None:
    from adagc.adapters.paddleformers import AdaGCCallback

    with pytest.raises(ValueError, match="lambda_rel"):
        AdaGCCallback(lambda_rel=-1.0)
