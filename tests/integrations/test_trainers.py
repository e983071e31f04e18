"""HF Trainer and Lightning: one-line callbacks, bit-identical resume, guards, metrics."""

from __future__ import annotations

import pytest
import torch

from .conftest import assert_same_params, lm_rows, tiny_gpt2

transformers = pytest.importorskip("transformers")


def _hf_trainer(out, steps: int, before=(), **kw):
    """Trainer with AdaGCCallback after ``before`` (reporting callbacks come first, as
    Trainer puts TensorBoard/W&B before the user's callbacks)."""
    from adagc.adapters.transformers import AdaGCCallback

    cb = AdaGCCallback(warmup_steps=2)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        save_steps=3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **kw,
    )  # max_grad_norm stays at its default 1.0: the callback turns it off
    with pytest.warns(UserWarning, match="max_grad_norm"):
        trainer = transformers.Trainer(
            model=tiny_gpt2(), args=args, train_dataset=lm_rows(), callbacks=[*before, cb]
        )
    return trainer, cb


def test_hf_trainer_resume_is_bit_identical_with_default_arguments(tmp_path) -> None:
    ref, ref_cb = _hf_trainer(tmp_path / "a", 6)
    ref.train()
    assert int(ref_cb.clipper.state.step) == 6
    logs = [h for h in ref.state.log_history if "loss" in h]
    assert all("adagc/clipped_fraction" in h and "adagc/global_norm" in h for h in logs)
    assert ref.args.max_grad_norm == 0.0

    # the same 6-step run, resumed from the checkpoint it wrote at step 3
    resumed, cb = _hf_trainer(tmp_path / "b", 6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert int(cb.clipper.state.step) == 6
    assert torch.equal(cb.clipper.state.gamma, ref_cb.clipper.state.gamma)
    assert_same_params(resumed.model, ref.model)


class _Reporter(transformers.TrainerCallback):
    """Stands for TensorBoard/W&B: records the log entries it is given."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs or {}))


def test_hf_trainer_bf16_and_reporters_get_the_metrics(tmp_path) -> None:
    reporter = _Reporter()
    trainer, cb = _hf_trainer(tmp_path, 3, before=[reporter], bf16=True)
    trainer.train()
    assert int(cb.clipper.state.step) == 3
    assert torch.isfinite(cb.clipper.state.gamma).all()
    losses = [e for e in reporter.seen if "loss" in e]
    assert len(losses) == 3
    assert all(0.0 <= e["adagc/clipped_fraction"] <= 1.0 for e in losses)
    assert all(e["adagc/global_norm"] > 0 for e in losses)


L = pytest.importorskip("lightning.pytorch")


class LitLM(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_gpt2()

    def training_step(self, batch, _i):
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)

    def train_dataloader(self):
        rows = lm_rows(rows=12)  # 3 steps an epoch
        return torch.utils.data.DataLoader(rows, batch_size=4, shuffle=False)


def _lit(steps: int, cb, **kw):
    return L.Trainer(
        max_steps=steps,
        callbacks=[cb],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kw,
    )


def test_lightning_resume_is_bit_identical_and_metrics_are_logged(tmp_path) -> None:
    from adagc.adapters.lightning import AdaGCCallback

    torch.manual_seed(0)
    ref_cb = AdaGCCallback(warmup_steps=2)
    ref = LitLM()
    t = _lit(6, ref_cb)
    t.fit(ref)
    assert int(ref_cb.clipper.state.step) == 6
    assert {"adagc/clipped_fraction", "adagc/min_coefficient", "adagc/global_norm"} <= set(
        t.callback_metrics
    )

    cb = AdaGCCallback(warmup_steps=2)
    t = _lit(3, cb)
    t.fit(LitLM())
    t.save_checkpoint(tmp_path / "c.ckpt")
    # restored exactly: a fit that is already at max_steps only restores
    restored = AdaGCCallback(warmup_steps=2)
    _lit(3, restored).fit(LitLM(), ckpt_path=tmp_path / "c.ckpt")
    for a, b in zip(restored.clipper.state, cb.clipper.state):
        assert torch.equal(a, b)
    # and continues from there (Lightning's own resume of this loop is not bit-identical
    # even without AdaGC: its parameters differ by ~5e-3, so only the state is compared)
    cb2 = AdaGCCallback(warmup_steps=2)
    _lit(6, cb2).fit(LitLM(), ckpt_path=tmp_path / "c.ckpt")
    assert int(cb2.clipper.state.step) == 6


def test_lightning_bf16_mixed_and_the_gradient_clip_val_guard() -> None:
    from adagc.adapters.lightning import AdaGCCallback

    cb = AdaGCCallback(warmup_steps=1)
    _lit(2, cb, precision="bf16-mixed").fit(LitLM())
    assert int(cb.clipper.state.step) == 2
    with pytest.raises(ValueError, match="gradient_clip_val"):
        _lit(1, AdaGCCallback(), gradient_clip_val=1.0).fit(LitLM())
