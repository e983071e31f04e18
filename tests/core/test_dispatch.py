from __future__ import annotations

import numpy as np
import pytest

import adagc
from adagc._dispatch import backend_for


def test_numpy_is_detected_and_cached() -> None:
    b = backend_for([np.ones(2), None, np.zeros(3, np.float32)])
    assert b.name == "numpy"
    assert backend_for([np.ones(1)]) is b


def test_unknown_and_mixed_types() -> None:
    with pytest.raises(TypeError, match="no registered backend"):
        backend_for([np.ones(2), [1.0]])
    with pytest.raises(TypeError, match="every gradient is None"):
        backend_for([None])


def test_fallback_to_state_when_all_absent() -> None:
    assert backend_for([None], fallback=[np.ones(1)]).name == "numpy"


def test_get_backend_errors_say_what_to_install() -> None:
    with pytest.raises(ImportError, match="Registered backends"):
        adagc.get_backend("no.such.module")
    with pytest.raises(TypeError, match="ArrayBackend protocol"):
        adagc.get_backend(object())  # type: ignore[arg-type]


def test_fused_true_without_fast_path_is_an_error() -> None:
    g = [np.ones(2)]
    with pytest.raises(ValueError, match="no fused fast path"):
        adagc.update(g, adagc.init(g), fused=True)


def test_registered_backends_lists_the_frameworks() -> None:
    assert {"numpy", "torch", "jax", "paddle", "cupy"} <= set(adagc.registered_backends())
