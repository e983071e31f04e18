"""Benchmark harness: ``python -m adagc.bench --backend NAME``.

Times ``adagc.update`` against the framework's own global-norm clipping, interleaved in one
process, on gradient sets shaped like real models. A script, not a timed test.
"""

from __future__ import annotations

__all__: list[str] = []
