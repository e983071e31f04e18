"""The spike lab: ``adagc-lab`` trains a small byte-level GPT on real text with several
gradient-clipping methods under the same injected faults, and reports paired damage, spike
scores and curves. See docs/lab.md."""

from __future__ import annotations

__all__: list[str] = []
