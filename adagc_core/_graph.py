"""AdaGC under a graph compiler: ``adagc.jit_step`` (``jax.jit``, ``tf.function``, ...).

A traced step sees symbolic values, not arrays, so two things the eager ``adagc.update`` does
cannot happen inside the trace:

- **ties**: a tensor passed twice (tied embeddings) is recognised by object identity, but a
  compiler gives every argument its own placeholder, so the repeat would be counted twice;
- **``nonfinite="raise"``**: raising needs the non-finite flag on the host, and a trace has
  no values to read.

``jit_step`` does both outside the trace, around a step compiled once by the framework's own
compiler: the gradients are inspected first (repeats and ``None`` enter the compiled step as
``None``), the compiled step computes the ``"propagate"`` result, the repeats get their first
occurrence's output back, and for ``"raise"`` one host read of ``stats.nonfinite`` decides
whether to raise :class:`~adagc.NonFiniteGradientError` (the returned state would have been
unchanged; nothing was written). Backends use it for ``jit_update`` (the conformance suite's
``--jit``) and for fused fast paths.

``update(..., cfg with nonfinite="raise")`` traced directly, without ``jit_step``, cannot read
the flag; the backend's ``to_numpy`` raises :class:`TracedRaiseError` (a library error naming
the fix) instead of the framework's own conversion error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._algorithm import _as_list, _check_config, _resolve_backend, inspect_gradients, update
from ._config import AdaGCConfig
from ._dispatch import get_backend
from ._errors import NonFiniteGradientError
from ._protocol import Array, ArrayBackend
from ._types import AdaGCState, AdaGCStats

__all__ = ["JitStep", "TracedRaiseError", "jit_step", "traced_raise_error"]

Body = Callable[[list[Any], AdaGCState, AdaGCConfig], Any]


class TracedRaiseError(TypeError, ValueError):
    """``nonfinite="raise"`` inside a trace (``jax.jit``, ``tf.function``): the non-finite
    flag would have to be read on the host, which a trace cannot do.

    A ``TypeError`` (as JAX's tracer conversion errors are) and a ``ValueError`` (as the
    optax adapter's refusal is), so existing handlers keep working."""

    # AutoGraph (tf.function) re-raises an error from converted code as its own type only
    # when the type's __init__ is Exception's (or a built-in's); otherwise a StagingError.
    __init__ = Exception.__init__


def traced_raise_error(framework: str) -> TracedRaiseError:
    """The error a backend's ``to_numpy`` raises for a traced value (``framework`` names the
    tracing context, e.g. ``"jax.jit"`` or ``"tf.function"``)."""
    return TracedRaiseError(
        f"adagc cannot read an array on the host inside {framework}: nonfinite='raise' needs "
        "that read. Compile the step with adagc.jit_step (it raises outside the trace), call "
        "update outside the trace, or use nonfinite='propagate' (and check stats.nonfinite) "
        "or nonfinite='zero' inside it."
    )


class JitStep:
    """``adagc.update`` compiled by a graph-mode framework, with ties and
    ``nonfinite="raise"`` handled outside the trace. Build it with :func:`jit_step`."""

    def __init__(
        self,
        compile: Callable[[Callable[..., Any]], Callable[..., Any]],
        cfg: AdaGCConfig | None = None,
        *,
        backend: str | ArrayBackend | None = None,
        body: Body | None = None,
    ) -> None:
        cfg = AdaGCConfig() if cfg is None else cfg
        _check_config(cfg)
        self.cfg = cfg
        self.backend = backend
        # A backend object is resolved once (a per-step protocol check costs ~10 µs).
        self._xp: ArrayBackend | None = None if backend is None else get_backend(backend)
        # "raise" cannot happen in the trace: the compiled step computes the "propagate"
        # result (which leaves the state unchanged on a non-finite step) and __call__ raises.
        inner = cfg.replace(nonfinite="propagate") if cfg.nonfinite == "raise" else cfg
        run: Body = body if body is not None else _update_body(backend)

        def traced(used: list[Any], state: AdaGCState) -> Any:
            return run(used, state, inner)

        self.compiled = compile(traced)
        """The framework's compiled function ``(used, state) -> (clipped, state, stats)``."""

    def __call__(
        self,
        grads: Sequence[Array | None],
        state: AdaGCState,
        names: Sequence[str] | None = None,
    ) -> tuple[list[Array | None], AdaGCState, AdaGCStats]:
        grads = _as_list(grads)
        xp = self._xp if self._xp is not None else _resolve_backend(None, grads, state)
        layout = inspect_gradients(xp, grads)  # ties are object identity: outside the trace
        out, new_state, stats = self.compiled(layout.used, state)
        result: list[Array | None] = [
            o if u is not None else g for o, u, g in zip(out, layout.used, grads)
        ]
        for j, i in layout.ties:
            result[j] = result[i]
        if self.cfg.nonfinite == "raise" and bool(xp.to_numpy(stats.nonfinite)):
            finite = xp.to_numpy(xp.isfinite(stats.norms)).tolist()  # the one host read
            raise NonFiniteGradientError.from_finite(finite, names)
        return result, new_state, stats


def _update_body(backend: str | ArrayBackend | None) -> Body:
    def body(used: list[Any], state: AdaGCState, cfg: AdaGCConfig) -> Any:
        return update(used, state, cfg, backend=backend)

    return body


def jit_step(
    compile: Callable[[Callable[..., Any]], Callable[..., Any]],
    cfg: AdaGCConfig | None = None,
    *,
    backend: str | ArrayBackend | None = None,
    body: Body | None = None,
) -> JitStep:
    """``step(grads, state, names=None) -> (clipped, new_state, stats)``: ``adagc.update``
    compiled by ``compile`` (``jax.jit``, ``tf.function``, ``functools.partial(tf.function,
    jit_compile=True)``, ...), with ties and ``nonfinite="raise"`` handled outside the trace.

    ``compile`` is called once, here, on a function ``(used, state)``; the framework caches
    one compiled program per gradient layout (shapes, dtypes, which entries are ``None``) as
    usual. ``backend`` is passed to ``update`` (default: detected from the arrays). ``body``
    replaces what is traced, ``body(used, state, cfg)`` (a backend's fused path traces
    ``adagc.generic_update`` directly). Call the step eagerly: inside an outer
    ``jax.jit``/``tf.function`` it still handles ties, but ``"raise"`` ends in
    :class:`TracedRaiseError`.

    Example (JAX)::

        step = adagc.jit_step(jax.jit, cfg)
        clipped, state, stats = step(grads, state)
    """
    return JitStep(compile, cfg, backend=backend, body=body)
