"""AdaGC in PaddlePaddle: a small byte-level language model (embeddings of the last 8 bytes,
a two-layer MLP) trained with AdamW and ``grad_clip=ClipGradByAdaGC(...)`` on a file of the
Python standard library. At step 250 one tensor's gradient is multiplied by 1e3 (a transient
"hardware fault", injected by a gradient hook): AdaGC clips that tensor alone back to its own
history while the others train on. Runs in well under a minute on a laptop CPU.

With the paper's defaults the per-tensor thresholds follow a rising gradient norm slowly (at
most a factor beta + (1 - beta) * lambda_rel = 1.0004 per step), so in this short run most
tensors are clipped a little on most steps (h of 0.4..0.9): that is the method, and with AdamW
it barely matters, since Adam's update is nearly invariant to the gradient's scale.

    python examples/paddle_train.py
"""

from __future__ import annotations

import math
import pathlib
import sysconfig
import tempfile

import numpy as np
import paddle

from adagc.adapters.paddle import ClipGradByAdaGC

CONTEXT, STEPS, BATCH, FAULT_STEP = 8, 400, 128, 250

text = pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_bytes()
data = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
split = int(0.9 * len(data))
train, val = data[:split], data[split:]
rng = np.random.default_rng(0)


def batch(source: np.ndarray, size: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    start = rng.integers(0, len(source) - CONTEXT - 1, size)
    idx = start[:, None] + np.arange(CONTEXT + 1)
    window = source[idx]
    return paddle.to_tensor(window[:, :-1]), paddle.to_tensor(window[:, -1])


class ByteMLP(paddle.nn.Layer):
    def __init__(self, dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.embed = paddle.nn.Embedding(256, dim)
        self.fc1 = paddle.nn.Linear(CONTEXT * dim, hidden)
        self.norm = paddle.nn.LayerNorm(hidden)
        self.fc2 = paddle.nn.Linear(hidden, 256)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.embed(x).flatten(1)
        return self.fc2(paddle.nn.functional.gelu(self.norm(self.fc1(h))))


paddle.seed(0)
model = ByteMLP()
names = {p.name: n for n, p in model.named_parameters()}  # structured names for printing
clip = ClipGradByAdaGC(lambda_rel=1.04, beta=0.99, warmup_steps=50, lambda_abs=1.0)
opt = paddle.optimizer.AdamW(3e-3, parameters=model.parameters(), grad_clip=clip)

step_now = 0
model.fc1.weight.register_hook(lambda g: g * 1e3 if step_now == FAULT_STEP else g)

for step_now in range(STEPS):
    x, y = batch(train, BATCH)
    loss = paddle.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.clear_grad()
    if step_now % 50 == 0 or step_now in (FAULT_STEP - 1, FAULT_STEP, FAULT_STEP + 1):
        stats = clip.last_stats
        h = dict(zip((names[n] for n in clip.last_names), stats.coefficients.numpy().tolist()))
        others = [c for n, c in h.items() if n != "fc1.weight"]
        phase = "warmup  " if bool(stats.warmup) else "adaptive"
        print(
            f"step {step_now:3d}  loss {float(loss):.3f}  {phase}  h(fc1.weight) "
            f"{h['fc1.weight']:.4f}  h(others) {min(others):.3f}..{max(others):.3f}"
        )

model.eval()
with paddle.no_grad():
    x, y = batch(val, 4096)
    vloss = float(paddle.nn.functional.cross_entropy(model(x), y))
print(f"validation loss {vloss:.3f} (uniform guess: {math.log(256):.3f})")

# The clipper's state is checkpointed with the model, keyed by param.name ...
with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp, "adagc.pdparams")
    paddle.save(clip.state_dict(), str(path))
    resumed = ClipGradByAdaGC(warmup_steps=50, parameters=model.parameters())
    resumed.set_state_dict(paddle.load(str(path)))
# ... and in the framework-neutral adagc/1 format, e.g. to continue the run in PyTorch or JAX.
portable = clip.to_portable(names)
print(f"adagc/1 checkpoint: step {portable['step']}, gamma of {len(portable['gamma'])} tensors")
