"""One PaddleFormers training run in its own process (Paddle names parameters and optimizer
accumulators from a process-wide counter, so a resumed run must be a fresh process, as it
is in real use).

    python -m tests.paddleformers._run OUT full|resume|plain [FORMAT]

``full`` trains 6 steps with ``AdaGCCallback`` (checkpoints at 3 and 6) and writes the final
parameters and the logged entries; ``resume`` resumes from ``checkpoint-3`` to step 6 and writes
the same, plus the warnings seen; ``plain`` is ``full`` without AdaGC (global clipping).
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import paddle
from paddle.distributed import fleet

STEPS, SAVE = 6, 3


def model():
    from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        fuse_rms_norm=False,  # the fused kernel has no CPU build
    )
    with paddle.utils.unique_name.guard():
        return LlamaForCausalLM(config)


class Tokens(paddle.io.Dataset):
    """Random token sequences (language modelling on noise: the loss only has to move)."""

    def __init__(self) -> None:
        self.x = np.random.default_rng(0).integers(0, 128, size=(64, 16))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def main() -> None:
    from paddleformers.trainer import Trainer, TrainerCallback, TrainingArguments

    from adagc.adapters.paddleformers import AdaGCCallback

    out, phase = sys.argv[1], sys.argv[2]
    fmt = sys.argv[3] if len(sys.argv) > 3 else ""
    fleet.init(is_collective=True)  # the flex checkpoint loader asks fleet for its groups

    class Record(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append({k: v for k, v in (logs or {}).items() if isinstance(v, float)})

    formats = {"save_checkpoint_format": fmt, "load_checkpoint_format": fmt} if fmt else {}
    args = TrainingArguments(
        output_dir=out,
        max_steps=STEPS,
        save_steps=SAVE,
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        warmup_steps=2,
        seed=0,
        report_to=[],
        disable_tqdm=True,
        amp_master_grad=False,
        **formats,
    )
    record = Record()
    callbacks = [record] if phase == "plain" else [record, AdaGCCallback(warmup_steps=2, beta=0.9)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer = Trainer(model=model(), args=args, train_dataset=Tokens(), callbacks=callbacks)
        trainer.train(
            resume_from_checkpoint=f"{out}/checkpoint-{SAVE}" if phase == "resume" else None
        )
    params = {k: v.numpy() for k, v in trainer.model.state_dict().items()}
    np.savez(f"{out}/{phase}.npz", **params)
    clip = trainer.optimizer._grad_clip
    report = {
        "logs": record.logs,
        "warnings": [str(w.message) for w in seen if "AdaGC" in str(w.message)],
        "grad_clip": type(clip).__name__,
        "max_grad_norm": args.max_grad_norm,
        "optimizer_keys_with_adagc": [k for k in trainer.optimizer.state_dict() if "adagc" in k],
    }
    with open(f"{out}/{phase}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
