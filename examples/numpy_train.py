"""AdaGC on a small real training loop, NumPy only: a byte-level next-character model trained
with SGD on a file of the Python standard library. Gradients are computed by hand, clipped by
``adagc.update`` in place, and applied. At step 150 one tensor's gradient is multiplied by 1e3
(a "hardware fault"): AdaGC clips that tensor alone back to its own history.

    python examples/numpy_train.py
"""

from __future__ import annotations

import pathlib
import sysconfig

import numpy as np

import adagc

text = pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_bytes()
data = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
split = int(0.9 * len(data))
train, val = data[:split], data[split:]

rng = np.random.default_rng(0)
V, D = 256, 48
params = {
    "embed": rng.normal(0, 0.1, (V, D)).astype(np.float32),
    "proj": rng.normal(0, 0.1, (D, V)).astype(np.float32),
    "bias": np.zeros(V, np.float32),
}
names = list(params)


def loss_and_grads(x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    h = params["embed"][x]  # (B, D)
    logits = h @ params["proj"] + params["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    d = p
    d[np.arange(len(y)), y] -= 1.0
    d /= len(y)
    g_proj = h.T @ d
    g_bias = d.sum(axis=0)
    g_embed = np.zeros_like(params["embed"])
    np.add.at(g_embed, x, d @ params["proj"].T)
    return loss, [g_embed, g_proj.astype(np.float32), g_bias.astype(np.float32)]


cfg = adagc.AdaGCConfig(warmup_steps=20, lambda_abs=1.0)
state = None
lr, batch = 0.5, 256
for step in range(300):
    idx = rng.integers(0, len(train) - 1, batch)
    loss, grads = loss_and_grads(train[idx], train[idx + 1])
    if step == 150:
        grads[1] *= 1e3  # transient fault in one tensor
    if state is None:
        state = adagc.init(grads, cfg)
    grads, state, stats = adagc.update(grads, state, cfg, inplace=True, names=names)
    for name, g in zip(names, grads):
        params[name] -= lr * g
    if step % 50 == 0 or step in (149, 150, 151):
        coef = ", ".join(f"{n}={c:.3f}" for n, c in zip(names, stats.coefficients))
        phase = "warmup" if stats.warmup else "adaptive"
        print(f"step {step:3d}  loss {loss:.3f}  {phase:8s}  h: {coef}")

vloss, _ = loss_and_grads(val[:-1], val[1:])
print(f"validation loss {vloss:.3f} (uniform guess: {np.log(256):.3f})")
