"""Interleaved timing of AdaGC against a framework's own clipping.

A backend plug-in (``adagc.bench.backend_<name>``) defines ``PLUGIN``, an object with:

- ``name``, ``baseline_name``, ``device``;
- ``make_grads(shapes, seed) -> list``: gradients of the given shapes;
- ``sync()``: wait for queued device work (no-op on the CPU);
- ``baseline(grads)``: the framework's own global-norm clipping, in place where it is;
- ``norms(grads) -> list[float]``: per-tensor norms (untimed; used to place thresholds);
- ``make_state(grads, gamma, step)``: an ``AdaGCState`` with the given host values;
- ``adagc(grads, state, cfg)``: one AdaGC step the way a user of that framework runs it;
- optional ``peers() -> dict[str, callable(grads, state, cfg)]``: other implementations;
- optional ``memory(fn) -> int | None``: extra bytes allocated at peak while ``fn()`` runs;
- optional ``check()``: raise ``RuntimeError`` (with what to do) when the plug-in cannot run
  here, e.g. no GPU; ``python -m adagc.bench`` then exits with that message;
- optional ``notes(gradset) -> list[str]``: comment lines printed after each gradient set
  (e.g. bandwidths measured on the same data);
- optional ``copier(grads) -> callable()``: copies every gradient once into preallocated
  buffers (the memory-bandwidth yardstick of the "limit" row).

The "limit" row of each case is the physical floor of one AdaGC step: read every gradient
once and write the clipped ones (their bytes, not their count: on GPT-2 the "steady" 20% of
tensors hold 62% of the bytes), at the copy bandwidth measured on
the same gradients in the same run (a copy reads and writes each byte: ``2 * bytes / time``).
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from adagc import AdaGCConfig

from .gradsets import GradSet

__all__ = ["Result", "limit_row", "load_plugin", "per_tensor_copier", "run_case"]

CFG = AdaGCConfig(warmup_steps=10)
SCENARIOS = {"steady": 0.2, "all-clipped": 1.0}
"""Fraction of tensors above their threshold: about 20% after warmup, and the worst case."""


@dataclass
class Result:
    backend: str
    gradset: str
    scenario: str
    method: str
    median_ms: float
    baseline_ms: float
    extra_mib: float | None

    @property
    def ratio(self) -> float:
        return self.median_ms / self.baseline_ms


def load_plugin(name: str) -> Any:
    return importlib.import_module(f"adagc.bench.backend_{name}").PLUGIN


def _call_peer(fn: Callable[..., Any], grads: list[Any], state: Any) -> Any:
    return fn(grads, state, CFG)


def _timed(plugin: Any, fn: Callable[[], Any]) -> float:
    plugin.sync()
    t0 = time.perf_counter()
    fn()
    plugin.sync()
    return (time.perf_counter() - t0) * 1e3


def _clipped(n: int, fraction: float) -> set[int]:
    """The positions clipped in a scenario: ``fraction`` of the ``n`` tensors, evenly spaced
    (every 5th at 20%: on GPT-2 that includes the embedding, 62% of the bytes)."""
    count = round(fraction * n)
    return set(range(0, n, max(1, n // max(count, 1)))[:count]) if count else set()


def _thresholds(plugin: Any, grads: list[Any], fraction: float, step: int) -> Any:
    """A post-warmup state in which ``fraction`` of the tensors lie 1% above their threshold
    lambda_rel * gamma_i and the rest 25% below, so the clip pattern holds for the step."""
    norms = plugin.norms(grads)
    clipped = _clipped(len(norms), fraction)
    gamma = [n / CFG.lambda_rel * (0.99 if i in clipped else 1.25) for i, n in enumerate(norms)]
    return plugin.make_state(grads, gamma, step)


def run_case(
    plugin: Any,
    gradset: GradSet,
    scenario: str,
    repeats: int,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    fraction = SCENARIOS[scenario]
    grads = plugin.make_grads(gradset.shapes, seed=0)
    methods: dict[str, Callable[[Any], Any]] = {
        "adagc": lambda state: plugin.adagc(grads, state, CFG),
    }
    for peer, peer_fn in getattr(plugin, "peers", dict)().items():
        methods[peer] = partial(_call_peer, peer_fn, grads)
    times: dict[str, list[float]] = {m: [] for m in methods}
    base: list[float] = []
    for r in range(warmup + repeats):
        # Interleave: baseline then each method, every round; the state is placed untimed.
        tb = _timed(plugin, lambda: plugin.baseline(grads))
        for m, fn in methods.items():
            state = _thresholds(plugin, grads, fraction, CFG.warmup_steps)
            t = _timed(plugin, partial(fn, state))
            if r >= warmup:
                times[m].append(t)
        if r >= warmup:
            base.append(tb)
        if progress:
            progress(f"{gradset.name} {scenario} round {r + 1}/{warmup + repeats}")
    memory = getattr(plugin, "memory", None)
    results = []
    for m, fn in methods.items():
        extra = None
        if memory is not None:
            state = _thresholds(plugin, grads, fraction, CFG.warmup_steps)
            b = memory(partial(fn, state))
            extra = None if b is None else b / 2**20
        results.append(
            Result(
                plugin.name,
                gradset.name,
                scenario,
                m,
                statistics.median(times[m]),
                statistics.median(base),
                extra,
            )
        )
    return results


def per_tensor_copier(
    grads: list[Any], empty_like: Callable[[Any], Any], copy: Callable[[Any, Any], Any]
) -> Callable[[], None]:
    """A plug-in's ``copier`` for frameworks without a multi-tensor copy: buffers allocated
    once with ``empty_like(g)``, then ``copy(g, buffer)`` per tensor on each call."""
    pairs = [(g, empty_like(g)) for g in grads]

    def run() -> None:
        for g, d in pairs:
            copy(g, d)

    return run


def limit_row(
    plugin: Any, gradset: GradSet, scenario: str, baseline_ms: float, repeats: int
) -> Result | None:
    """The "limit" row: the bytes one AdaGC step must move — every gradient read once, the
    clipped ones written — at the copy bandwidth measured now, or ``None`` when the plug-in
    has no ``copier``. ``extra_mib`` carries the bandwidth (GB/s)."""
    copier = getattr(plugin, "copier", None)
    if copier is None:
        return None
    grads = plugin.make_grads(gradset.shapes, seed=0)
    copy = copier(grads)
    times = [_timed(plugin, copy) for _ in range(2 + repeats)][2:]
    nbytes = 4 * gradset.numel  # float32 gradient sets
    bandwidth = 2 * nbytes / (statistics.median(times) / 1e3)  # bytes/s, read + write
    sizes = [math.prod(shape) for shape in gradset.shapes]
    written = 4 * sum(sizes[i] for i in _clipped(len(sizes), SCENARIOS[scenario]))
    floor_ms = (nbytes + written) / bandwidth * 1e3
    return Result(
        plugin.name, gradset.name, scenario, "limit", floor_ms, baseline_ms, bandwidth / 1e9
    )
