"""AdaGC in a small real JAX training loop: a byte-level MLP language model trained with
``optax.chain(adagc(...), optax.adamw(...))`` on a file of the Python standard library.
At step 250 one tensor's gradient is multiplied by 1e3 (a transient "hardware fault"); AdaGC
clips that tensor back to its own history and leaves the others alone. The clipping record
(``coefficients``, ``num_clipped``) is read from the optax state of the jitted train step.

    python examples/jax_train.py
"""

from __future__ import annotations

import json
import math
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adagc
from adagc.adapters.jax import adagc as adagc_clip
from adagc.adapters.jax import from_portable, leaf_names, to_portable

CONTEXT, BATCH, STEPS, FAULT_STEP = 8, 64, 400, 250
text = pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_bytes()
data = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
split = int(0.9 * len(data))
train, val = data[:split], data[split:]
rng = np.random.default_rng(0)


def batch(src: np.ndarray, n: int) -> tuple[jax.Array, jax.Array]:
    i = rng.integers(0, len(src) - CONTEXT - 1, size=n)
    window = src[i[:, None] + np.arange(CONTEXT + 1)]
    return jnp.asarray(window[:, :-1]), jnp.asarray(window[:, -1])


def init(key: jax.Array, dim: int = 32, hidden: int = 256) -> dict:
    k = jax.random.split(key, 3)
    fan_in = CONTEXT * dim
    return {
        "embed": jax.random.normal(k[0], (256, dim)) * 0.1,
        "fc1": {
            "kernel": jax.random.normal(k[1], (fan_in, hidden)) / math.sqrt(fan_in),
            "bias": jnp.zeros(hidden),
        },
        "norm": {"scale": jnp.ones(hidden), "bias": jnp.zeros(hidden)},
        "fc2": {
            "kernel": jax.random.normal(k[2], (hidden, 256)) / math.sqrt(hidden),
            "bias": jnp.zeros(256),
        },
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    h = params["embed"][x].reshape(x.shape[0], -1) @ params["fc1"]["kernel"]
    h = h + params["fc1"]["bias"]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(var + 1e-5) * params["norm"]["scale"] + params["norm"]["bias"]
    logits = jax.nn.gelu(h) @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


config = adagc.AdaGCConfig(lambda_rel=1.04, beta=0.99, warmup_steps=50, lambda_abs=1.0)
tx = optax.chain(adagc_clip(config=config), optax.adamw(3e-3, b1=0.9, b2=0.95))
params = init(jax.random.PRNGKey(0))
opt_state = tx.init(params)
names = leaf_names(params)  # "fc1.kernel", ...: the order of the AdaGC state
fault = names.index("fc1.kernel")


@jax.jit
def train_step(params: dict, opt_state: tuple, x: jax.Array, y: jax.Array, boost: jax.Array):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    grads["fc1"]["kernel"] = grads["fc1"]["kernel"] * boost  # the injected fault (1 = none)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


for step in range(STEPS):
    x, y = batch(train, BATCH)
    boost = jnp.float32(1e3 if step == FAULT_STEP else 1.0)
    params, opt_state, loss = train_step(params, opt_state, x, y, boost)
    if step % 50 == 0 or step in (FAULT_STEP - 1, FAULT_STEP, FAULT_STEP + 1):
        record = opt_state[0]  # the AdaGC state, with what the last update did
        h = np.asarray(record.coefficients)
        others = np.delete(h, fault)
        phase = "warmup  " if step < config.warmup_steps else "adaptive"
        print(
            f"step {step:3d}  loss {float(loss):.3f}  {phase}  "
            f"clipped {int(record.num_clipped)}/{len(names)}  h(fc1.kernel) {h[fault]:.4f}  "
            f"h(others) {others.min():.3f}..{others.max():.3f}"
        )

x, y = batch(val, 4096)
print(f"validation loss {float(loss_fn(params, x, y)):.3f} (uniform guess: {math.log(256):.3f})")

# The optax state is a pytree (orbax saves it as is); the framework-neutral adagc/1 format
# moves the AdaGC state to PyTorch or Paddle, keyed by the same dotted names.
portable = json.loads(json.dumps(to_portable(opt_state, params, config)))
resumed = from_portable(portable, tx.init(params), params, config)
assert np.array_equal(resumed[0].gamma, opt_state[0].gamma)
print(f"adagc/1 checkpoint: step {portable['step']}, gamma of {len(portable['gamma'])} tensors")
