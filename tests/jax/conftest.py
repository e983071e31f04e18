"""Shared pieces of the JAX/optax adapter tests: real text and a tiny byte-level model."""

from __future__ import annotations

import pathlib
import sysconfig

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402


@pytest.fixture(scope="session")
def tokens() -> np.ndarray:
    """Real text: a file of the Python standard library, as byte tokens."""
    data = pathlib.Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_bytes()
    return np.frombuffer(data[:20000], dtype=np.uint8).astype(np.int32)


def init_params(seed: int = 0, d: int = 32) -> dict:
    """A byte-level next-token model: embedding -> tanh MLP -> LayerNorm-free logits.
    Nested dicts, as flax and haiku produce them."""
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "embed": jax.random.normal(k[0], (256, d)) * 0.1,
        "hidden": {
            "kernel": jax.random.normal(k[1], (2 * d, d)) / np.sqrt(2 * d),
            "bias": jnp.zeros(d),
        },
        "out": {"kernel": jax.random.normal(k[2], (d, 256)) / np.sqrt(d), "bias": jnp.zeros(256)},
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    e = params["embed"][x].reshape(x.shape[0], -1)  # (B, 2d): the two previous bytes
    h = jnp.tanh(e @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    logits = h @ params["out"]["kernel"] + params["out"]["bias"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def batches(tokens: np.ndarray, n: int, batch: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        i = rng.integers(0, len(tokens) - 3, size=batch)
        yield jnp.asarray(np.stack([tokens[i], tokens[i + 1]], axis=1)), jnp.asarray(tokens[i + 2])
