"""Benchmark plug-in for JAX (the default JAX device: CPU here).

Baseline: ``optax.clip_by_global_norm(max_norm).update`` under ``jax.jit``, the transformation
an optax user chains before the optimizer. AdaGC: the optax adapter's ``update`` under
``jax.jit`` (``adagc.adapters.jax.adagc``), which is what the same user would chain instead.
Both are compiled ahead of the timed rounds (``lower().compile()``); compile times are
reported separately, as notes under the table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adagc import AdaGCConfig, AdaGCState
from adagc.adapters.jax import AdaGCTransformState, _state
from adagc.adapters.jax import adagc as adagc_tx
from adagc.backends.jax import BACKEND

from .gradsets import GradSet
from .harness import CFG


class JaxPlugin:
    name = "jax"
    baseline_name = "jax.jit(optax.clip_by_global_norm(max_norm).update)"

    def __init__(self) -> None:
        self.device = str(jax.devices()[0])
        self._last: Any = None
        self._base: Any = None
        self._step: Any = None
        self._notes: list[str] = []
        self._compiled: dict[Any, tuple[Any, Any]] = {}

    def make_grads(self, shapes: Any, seed: int) -> list[jax.Array]:
        rng = np.random.default_rng(seed)
        grads = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
        total = math.sqrt(sum(n * n for n in self.norms(grads)))
        key = (tuple(shapes), seed)  # the same set in another scenario: compiled already
        if key not in self._compiled:
            clip = optax.clip_by_global_norm(0.99 * total)  # clips by ~1%, like the others
            empty = clip.init(grads)
            tx = adagc_tx(config=CFG)
            state = self.make_state(grads, [1.0] * len(grads), CFG.warmup_steps)
            t0 = time.perf_counter()
            base = jax.jit(lambda g: clip.update(g, empty)[0]).lower(grads).compile()
            t1 = time.perf_counter()
            step = jax.jit(tx.update).lower(grads, state).compile()
            t2 = time.perf_counter()
            self._compiled[key] = (base, step)
            self._notes.append(
                f"compile ({len(grads)} tensors): adagc {t2 - t1:.2f} s, "
                f"clip_by_global_norm {t1 - t0:.2f} s"
            )
        self._base, self._step = self._compiled[key]
        return grads

    def notes(self, gradset: GradSet) -> list[str]:
        out, self._notes = self._notes, []
        return [f"# {gradset.name}: {note}" for note in out]

    def copier(self, grads: list[jax.Array]) -> Callable[[], None]:
        copy = jax.jit(lambda gs: [g + 0 for g in gs])  # one read and one write per element

        def run() -> None:
            self._last = copy(grads)

        run()
        return run

    def sync(self) -> None:
        if self._last is not None:
            jax.block_until_ready(self._last)

    def baseline(self, grads: list[jax.Array]) -> None:
        self._last = self._base(grads)

    def norms(self, grads: list[jax.Array]) -> list[float]:
        return np.sqrt(np.asarray(BACKEND.sum_squares(grads, "float32"))).tolist()

    def make_state(self, grads: Any, gamma: list[float], step: int) -> AdaGCTransformState:
        core = AdaGCState(
            step=jnp.asarray(step, jnp.int32),
            gamma=jnp.asarray(gamma, jnp.float32),
            seen=jnp.ones(len(gamma), bool),
        )
        return _state(core, None, len(gamma))  # the adapter's state before any update

    def adagc(self, grads: list[jax.Array], state: Any, cfg: AdaGCConfig) -> Any:
        assert cfg == CFG, "the executable was compiled for the harness's config"
        self._last = self._step(grads, state)
        return self._last


PLUGIN = JaxPlugin()
