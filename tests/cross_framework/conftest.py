"""The cross-framework test needs torch, JAX/optax and Paddle in one environment (the
``cross-framework`` nox session); elsewhere it is not collected."""

from __future__ import annotations

import importlib.util

if any(importlib.util.find_spec(m) is None for m in ("torch", "jax", "optax", "paddle")):
    collect_ignore_glob = ["test_*.py"]
