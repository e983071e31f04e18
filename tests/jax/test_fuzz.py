"""Hypothesis over the optax adapter's checkpoint loader (``from_portable``): a valid state
or a ``CheckpointMismatchError``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given

from adagc import AdaGCConfig
from adagc.adapters.jax import adagc as adagc_tx
from adagc.adapters.jax import from_portable, to_portable

from ..fuzz import check_loaded_or_rejected, edited_portable, fuzz

CFG = AdaGCConfig(warmup_steps=1)
TREE = {"w": jnp.ones((2, 3)), "b": jnp.full(3, 0.5), "e": [jnp.ones(2)]}
TX = adagc_tx(config=CFG)
STATE = TX.init(TREE)
for k in range(3):
    _, STATE = TX.update({"w": TREE["w"] * k, "b": TREE["b"], "e": [TREE["e"][0] * 2]}, STATE)
PORTABLE = to_portable(STATE, TREE, CFG)


@fuzz(150)
@given(ckpt=edited_portable(PORTABLE))
def test_fuzz_optax_from_portable(ckpt) -> None:
    box = {"state": TX.init(TREE)}

    def load() -> None:
        box["state"] = from_portable(ckpt, box["state"], TREE, CFG)

    def host():
        s = box["state"]
        return int(s.step), np.asarray(s.gamma), np.asarray(s.seen)

    check_loaded_or_rejected(load, host)
