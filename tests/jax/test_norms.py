"""The JAX backend's norms: same-shape small tensors reduced as stacks, the rest one by one,
put back in order, against float64 (eagerly and under jax.jit)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adagc.backends import jax as jax_backend
from adagc.backends.jax import BACKEND


def _mixed() -> list[Any]:
    rng = np.random.default_rng(3)
    out: list[Any] = []
    for i in range(40):  # 4 shapes x 10 tensors, interleaved: 4 stacks
        shape = [(7,), (3, 5), (), (2, 2, 2)][i % 4]
        out.append(jnp.asarray(rng.normal(size=shape) * 3, jnp.float32))
    out += [jnp.asarray(rng.normal(size=(5,)), jnp.float32) for _ in range(3)]  # too few
    out += [jnp.asarray(rng.normal(size=(6,)), jnp.bfloat16) for _ in range(9)]  # a bf16 stack
    out.append(jnp.asarray(rng.normal(size=(200, 100)), jnp.float32))  # large: its own sum
    out.insert(11, None)
    out.insert(20, jnp.zeros((0,), jnp.float32))
    return out


def _float64(grads: list[Any]) -> np.ndarray:
    return np.array(
        [0.0 if g is None else float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads]
    )


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_stacks_and_singles_come_back_in_order(jit: bool) -> None:
    grads = _mixed()
    assert len(jax_backend._stacks(grads)) == 5
    fn = jax.jit(lambda gs: BACKEND.sum_squares(gs, "float32")) if jit else None
    sq = fn(grads) if fn else BACKEND.sum_squares(grads, "float32")
    np.testing.assert_allclose(np.asarray(sq, np.float64), _float64(grads), rtol=1e-6)


def test_overflow_and_nan_in_a_stack() -> None:
    grads = [jnp.ones(4) for _ in range(12)]
    grads[2] = jnp.full((4,), 1e30)  # float32 sum of squares overflows: Inf, no rescaling
    grads[9] = jnp.full((4,), jnp.nan)
    sq = np.asarray(BACKEND.sum_squares(grads, "float32"))
    assert np.isinf(sq[2]) and np.isnan(sq[9])
    np.testing.assert_array_equal(sq[[0, 8, 11]], 4.0)


def test_large_or_rare_tensors_are_not_stacked() -> None:
    big = [jnp.ones(jax_backend._STACK_MAX + 1) for _ in range(10)]
    few = [jnp.ones(3) for _ in range(jax_backend._STACK_MIN - 1)]
    assert jax_backend._stacks(big + few) == []
