"""How the conformance suite drives one backend.

A backend is named by its registered name (``numpy``, ``torch``, ...) or by the module path
of a third-party backend (a module defining ``BACKEND``). The module may also define, all
optional:

- ``CONFORMANCE_DTYPES``: the float dtypes to test (default ``("float32", "float64")``), each
  compared at its ``TOLERANCES`` entry (a dtype without one is refused);
- ``make_like(device) -> array``: an array on ``device`` (e.g. ``"cuda"``) that the suite passes
  as ``like=`` when it creates arrays, for ``--device``;
- ``jit_update(cfg) -> fn``: a compiled ``fn(grads, state) -> (clipped, state, stats)`` for
  ``--jit`` (JAX, TensorFlow). It gets real arrays and must handle ties and
  ``nonfinite="raise"`` as eagerly: build it with ``adagc.jit_step(compile, cfg)``.

Every result is checked to be on the harness's device (``Harness.home``), with or without
``--device``, wherever the backend's ``device`` reports one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import adagc
from adagc._dispatch import _REGISTRY, get_backend
from adagc._protocol import ArrayBackend

__all__ = ["Harness", "assert_close", "make_harness", "tolerance"]

_CACHE: dict[tuple[str, bool, str | None], Harness] = {}


@dataclass
class Harness:
    """One backend under test, with helpers to move NumPy data in and out."""

    name: str
    backend: ArrayBackend
    module: Any
    dtypes: tuple[str, ...]
    jit: bool = False
    device: str | None = None
    like: Any = None
    _jitted: dict[Any, Callable[..., Any]] = field(default_factory=dict)
    _home: list[Any] = field(default_factory=list)

    @property
    def id(self) -> str:
        extra = "-jit" if self.jit else ""
        extra += f"-{self.device}" if self.device else ""
        return f"{self.name}{extra}"

    # -- data in and out ---------------------------------------------------------------
    def asarray(self, x: Any, dtype: str) -> Any:
        """A backend array of ``dtype`` from NumPy data (``None`` stays ``None``)."""
        if x is None:
            return None
        return self.backend.asarray(np.asarray(x, dtype=np.float64), dtype, like=self.like)  # type: ignore[arg-type]

    def grads(self, arrays: Sequence[Any], dtype: str) -> list[Any]:
        """Convert a list of NumPy arrays, keeping ``None`` and repeated objects (ties)."""
        made: dict[int, Any] = {}
        out: list[Any] = []
        for a in arrays:
            if a is None:
                out.append(None)
            else:
                if id(a) not in made:
                    made[id(a)] = self.asarray(a, dtype)
                out.append(made[id(a)])
        return out

    def to_numpy(self, x: Any) -> Any:
        return None if x is None else np.asarray(self.backend.to_numpy(x))

    @property
    def home(self) -> Any:
        """The device results must be on: ``like``'s with ``--device``, otherwise where the
        backend puts a new array (``None``: the backend reports no device)."""
        if not self._home:  # computed once per harness
            probe = self.like if self.like is not None else self.asarray(0.0, "float32")
            self._home.append(self.backend.device(probe))
        return self._home[0]

    # -- the API under test --------------------------------------------------------------
    def init(self, grads: Sequence[Any], cfg: adagc.AdaGCConfig) -> adagc.AdaGCState:
        return adagc.init(grads, cfg, backend=self.backend)

    def update(
        self, grads: Sequence[Any], state: adagc.AdaGCState, cfg: adagc.AdaGCConfig, **kw: Any
    ) -> tuple[list[Any], adagc.AdaGCState, adagc.AdaGCStats]:
        if self.jit and not kw:
            fn = self._jitted.get(cfg)
            if fn is None:
                fn = self._jitted[cfg] = self.module.jit_update(cfg)
            clipped, state, stats = fn(list(grads), state)
            return list(clipped), state, stats
        return adagc.update(grads, state, cfg, backend=self.backend, **kw)

    def state(self, step: int, gamma: Sequence[float], seen: Sequence[bool], dtype: str) -> Any:
        """Build an ``AdaGCState`` from host values."""
        b = self.backend
        return adagc.AdaGCState(
            step=b.asarray(step, "int", like=self.like),
            gamma=b.asarray(list(gamma), dtype, like=self.like),  # type: ignore[arg-type]
            seen=b.asarray(list(seen), "bool", like=self.like),
        )

    def host_state(self, state: adagc.AdaGCState) -> tuple[int, Any, Any]:
        return (
            int(self.to_numpy(state.step)),
            self.to_numpy(state.gamma),
            self.to_numpy(state.seen),
        )


def make_harness(name: str, jit: bool = False, device: str | None = None) -> Harness:
    """The harness for a registered backend name or a third-party module path (cached)."""
    key = (name, jit, device)
    if key in _CACHE:
        return _CACHE[key]
    backend = get_backend(name)
    module_path = _REGISTRY[name].module if name in _REGISTRY else name
    module = importlib.import_module(module_path)
    dtypes = tuple(getattr(module, "CONFORMANCE_DTYPES", ("float32", "float64")))
    unknown = [d for d in dtypes if d not in TOLERANCES]
    if unknown:
        raise ValueError(
            f"backend {name!r} lists CONFORMANCE_DTYPES {unknown}, which the suite cannot "
            f"test: it has tolerances for {', '.join(TOLERANCES)} only"
        )
    if jit and not hasattr(module, "jit_update"):
        raise ValueError(f"backend {name!r} has no jit_update(cfg); --jit is not available")
    like = None
    if device is not None:
        if not hasattr(module, "make_like"):
            raise ValueError(f"backend {name!r} has no make_like(device); --device unsupported")
        like = module.make_like(device)
    h = Harness(name, backend, module, dtypes, jit=jit, device=device, like=like)
    _CACHE[key] = h
    return h


TOLERANCES: dict[str, float] = {
    "float64": 1e-12,
    "float32": 1e-5,
    # A 16-bit run rounds its inputs to 16 bits before the step and its outputs once more,
    # while the goldens are computed from the unrounded float64 inputs: about two units of
    # roundoff each (float16 has 11 significant bits, bfloat16 8).
    "float16": 2e-3,
    "bfloat16": 1.6e-2,
}
"""The suite's rtol per dtype of the gradients (results and, for 16-bit runs, their norms)."""


def tolerance(dtype: str) -> float:
    """rtol of the suite for gradients of ``dtype`` (``TOLERANCES``): 1e-12 for float64,
    1e-5 for float32, 2e-3 for float16, 1.6e-2 for bfloat16."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(
            f"the conformance suite has no tolerance for dtype {dtype!r}; list only "
            f"{', '.join(TOLERANCES)} in CONFORMANCE_DTYPES"
        ) from None


def assert_close(
    harness: Harness,
    actual: Any,
    expected: Any,
    dtype: str,
    *,
    rtol: float | None = None,
    atol: float = 0.0,
    what: str = "value",
) -> None:
    """Compare a backend array with NumPy data; checks the framework, dtype and device too."""
    b = harness.backend
    if expected is None:
        assert actual is None, f"{what}: expected None, got {type(actual).__name__}"
        return
    assert actual is not None, f"{what}: expected an array, got None"
    owner = adagc._dispatch._name_for_type(actual)
    assert get_backend(owner) is b, f"{what}: result is a {owner} array, not {b.name}"
    assert b.dtype_name(actual) == dtype, f"{what}: dtype {b.dtype_name(actual)} != {dtype}"
    home = harness.home
    if home is not None:  # every run, not only with --device
        assert b.device(actual) == home, f"{what}: on device {b.device(actual)!r}, not {home!r}"
    got = np.asarray(b.to_numpy(actual), dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64)
    assert got.shape == exp.shape, f"{what}: shape {got.shape} != {exp.shape}"
    np.testing.assert_allclose(
        got, exp, rtol=tolerance(dtype) if rtol is None else rtol, atol=atol, err_msg=what
    )
