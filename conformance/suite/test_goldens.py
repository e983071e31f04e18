"""Golden float64 trajectories from the naive reference (spec §1-3 scenarios)."""

from __future__ import annotations

import numpy as np
import pytest

from adagc import AdaGCConfig, NonFiniteGradientError
from adagc.conformance import Harness
from adagc.conformance.generate_goldens import decode_list

from ._common import (
    GOLDEN_NAMES,
    check_state,
    check_stats,
    check_tensors,
    expected_clipped,
    load_golden,
)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
@pytest.mark.parametrize("mode", ["functional", "inplace", "generic"])
def test_golden_trajectory(harness: Harness, dtype: str, name: str, mode: str) -> None:
    if mode == "inplace" and (not harness.backend.supports_inplace or harness.jit):
        pytest.skip(f"{harness.id} has immutable arrays / runs under jit")
    if mode == "generic" and not hasattr(harness.backend, "fused_update"):
        pytest.skip(f"{harness.id} has no fused fast path: 'functional' already is generic")
    golden = load_golden(name)
    cfg = AdaGCConfig.from_dict(golden["config"])
    kw = {"inplace": True} if mode == "inplace" else {"fused": False} if mode == "generic" else {}
    state = None
    for k, rec in enumerate(golden["steps"]):
        grads_np = decode_list(rec["grads"])
        grads = harness.grads(grads_np, dtype)
        if state is None:
            state = harness.init(grads, cfg)
        what = f"{name} step {k}"
        if "raises" in rec:
            before = [harness.to_numpy(g) for g in grads]
            old = harness.host_state(state)
            with pytest.raises(NonFiniteGradientError) as info:
                harness.update(grads, state, cfg, **kw)
            assert info.value.tensors == rec["raises"]["tensors"], what
            # Nothing is mutated when an error is raised.
            for b, g in zip(before, grads):
                np.testing.assert_array_equal(b, harness.to_numpy(g), err_msg=what)
            assert harness.host_state(state)[0] == old[0]
            check_state(harness, state, rec["state"], dtype, what)
            continue
        clipped, state, stats = harness.update(grads, state, cfg, **kw)
        exp = expected_clipped(rec, grads_np, cfg.nonfinite)
        check_tensors(harness, clipped, exp, dtype, f"{what} clipped")
        check_stats(harness, stats, rec["stats"], dtype, what)
        check_state(harness, state, rec["state"], dtype, what)
        if mode == "inplace":
            for j, (c, g) in enumerate(zip(clipped, grads)):
                assert c is g or g is None or harness.backend.size(g) == 0, (
                    f"{what}: inplace output {j} is not the input array"
                )


def test_goldens_cover_the_scenarios() -> None:
    """The spec's scenario list is all there (a missing golden file would silently shrink
    the parametrization above)."""
    required = {
        "warmup_to_adaptive",
        "spike_one_tensor",
        "scale_spread",
        "zero_and_absent",
        "first_seen_after_warmup",
        "warmup_zero",
        "nonfinite_propagate",
        "nonfinite_zero",
        "nonfinite_raise",
        "tied",
        "empty",
        "global_granularity",
        "warmup_gamma_raw",
        "warmup_gamma_raw_global",
        "single_tensor",
        "thousand_tensors",
    }
    assert required <= set(GOLDEN_NAMES)
