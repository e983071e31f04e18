"""Find the backend for a list of arrays without importing any framework.

Like einops' ``_backends`` and array-api-compat: a framework can only have produced an array
if it is already imported, so detection looks in ``sys.modules`` and never imports a
framework to check. The answer is cached per array type.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._protocol import ArrayBackend

__all__ = ["BackendEntry", "backend_for", "get_backend", "register_backend", "registered_backends"]


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: ``owns(x)`` says whether an array is this framework's
    (looking only at ``sys.modules``); ``module`` is imported lazily and must define
    ``BACKEND`` (an ``ArrayBackend``)."""

    name: str
    module: str
    owns: Callable[[Any], bool]


def _isinstance_of(module: str, *attrs: str) -> Callable[[Any], bool]:
    def owns(x: Any) -> bool:
        mod = sys.modules.get(module)
        if mod is None:
            return False
        classes = tuple(c for c in (getattr(mod, a, None) for a in attrs) if c is not None)
        return bool(classes) and isinstance(x, classes)

    return owns


# Order matters only for array types that subclass another framework's type (none today).
_REGISTRY: dict[str, BackendEntry] = {}
_TYPE_CACHE: dict[type, str] = {}
_LOADED: dict[str, ArrayBackend] = {}


def register_backend(name: str, module: str, owns: Callable[[Any], bool]) -> None:
    """Register a backend under ``name``: ``module`` defines ``BACKEND``; ``owns(x)`` must
    not import anything (look in ``sys.modules``). Re-registering a name replaces it."""
    _REGISTRY[name] = BackendEntry(name, module, owns)
    _TYPE_CACHE.clear()
    _LOADED.pop(name, None)


def registered_backends() -> list[str]:
    """Names of the registered backends."""
    return list(_REGISTRY)


register_backend("numpy", "adagc.backends.numpy", _isinstance_of("numpy", "ndarray"))
register_backend("torch", "adagc.backends.torch", _isinstance_of("torch", "Tensor"))
register_backend("jax", "adagc.backends.jax", _isinstance_of("jax", "Array"))
register_backend("paddle", "adagc.backends.paddle", _isinstance_of("paddle", "Tensor"))
register_backend("cupy", "adagc.backends.cupy", _isinstance_of("cupy", "ndarray"))


def _owns_tensorflow(x: Any) -> bool:
    """tf.GradientTape gives tf.Tensor, or tf.IndexedSlices for embedding lookups; tf.Variable
    and Keras 3's TensorFlow variables (``tensorflow.python.types.core.Tensor``) are taken as
    placeholders by ``init``."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    core = sys.modules.get("tensorflow.python.types.core")
    classes = (tf.Tensor, tf.IndexedSlices, tf.Variable)
    return isinstance(x, classes) or (core is not None and isinstance(x, core.Tensor))


register_backend("tensorflow", "adagc.backends.tensorflow", _owns_tensorflow)


def get_backend(name_or_module: str | ArrayBackend) -> ArrayBackend:
    """The backend for a registered name, a module path defining ``BACKEND`` (a third-party
    backend), or a backend object (returned as is)."""
    if not isinstance(name_or_module, str):
        if not isinstance(name_or_module, ArrayBackend):
            raise TypeError(
                f"{name_or_module!r} does not implement the adagc ArrayBackend protocol "
                "(see docs/porting.md)"
            )
        return name_or_module
    if name_or_module in _LOADED:
        return _LOADED[name_or_module]
    entry = _REGISTRY.get(name_or_module)
    module_path = entry.module if entry else name_or_module
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        known = ", ".join(_REGISTRY)
        if entry is not None:  # a built-in name: its framework is an extra
            hint = f"install the matching extra: pip install 'adagc[{name_or_module}]'"
        else:  # a module path: it must be importable from here
            hint = (
                f"{name_or_module!r} is not a registered name, so it is taken as the module "
                "path of a third-party backend, which must be importable (installed, or on "
                "sys.path / PYTHONPATH) and define BACKEND (docs/porting.md)"
            )
        raise ImportError(
            f"cannot load adagc backend {name_or_module!r} from module {module_path!r}: {exc}. "
            f"Registered backends: {known}; {hint}."
        ) from exc
    backend = getattr(module, "BACKEND", None)
    if backend is None:
        raise ImportError(f"module {module_path!r} defines no BACKEND object")
    _LOADED[name_or_module] = backend
    return backend


def _name_for_type(x: Any) -> str:
    cls = type(x)
    name = _TYPE_CACHE.get(cls)
    if name is None:
        # No for/else here: AutoGraph (tf.function) converts this module and warns on it.
        name = next((e.name for e in _REGISTRY.values() if e.owns(x)), None)
        if name is None:
            raise TypeError(
                f"adagc got an array of type {cls.__module__}.{cls.__qualname__}, which no "
                f"registered backend ({', '.join(_REGISTRY)}) handles. Pass arrays of a "
                "supported framework, or register a backend (docs/porting.md)."
            )
        _TYPE_CACHE[cls] = name
    return name


def backend_for(arrays: Sequence[Any], fallback: Sequence[Any] = ()) -> ArrayBackend:
    """The one backend owning every non-``None`` array in ``arrays``.

    ``fallback`` (e.g. the state's arrays) is consulted when every gradient is ``None``.
    Mixed frameworks raise ``TypeError``.
    """
    names: dict[str, type] = {}
    seen_types: dict[type, Any] = {}
    for x in arrays:
        if x is not None and type(x) not in seen_types:
            seen_types[type(x)] = x  # one lookup per distinct type, not per array
    for cls, x in seen_types.items():
        names.setdefault(_name_for_type(x), cls)
    if not names:
        for x in fallback:
            if x is not None:
                names.setdefault(_name_for_type(x), type(x))
                break
    if not names:
        raise TypeError(
            "cannot tell which framework to use: every gradient is None and there is no "
            "state to infer it from; pass backend='numpy' (or 'torch', 'jax', ...)"
        )
    if len(names) > 1:
        kinds = ", ".join(f"{n} ({t.__module__}.{t.__qualname__})" for n, t in names.items())
        raise TypeError(
            f"adagc got arrays of several frameworks in one call: {kinds}. "
            "All gradients (and the state) must come from one framework."
        )
    return get_backend(next(iter(names)))


def check_owner(name: str, grads: Sequence[Any], state_array: Any = None) -> None:
    """For ``backend=name`` (a registered name): raise ``TypeError`` when the first gradient
    or the state belongs to another registered framework (``backend="numpy"`` with torch
    tensors). One look each, so a step stays O(1) here; mixed frameworks inside one list are
    refused by detection when ``backend=None``. Types no registered backend owns are left to
    the named backend, and so are the frameworks it lists in its optional ``accepts`` (JAX
    takes NumPy arrays)."""
    if name not in _REGISTRY:
        return
    accepted = tuple(getattr(get_backend(name), "accepts", ()))
    first = next((x for x in grads if x is not None), None)
    for x in (first, state_array):
        if x is None:
            continue
        try:
            owner = _name_for_type(x)  # cached per type
        except TypeError:
            continue
        if owner != name and owner not in accepted:
            raise TypeError(
                f"backend={name!r} but the arrays are {owner} arrays "
                f"({type(x).__module__}.{type(x).__qualname__}); pass backend={owner!r} or "
                "leave backend=None to detect it"
            )
