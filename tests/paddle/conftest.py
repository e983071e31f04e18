"""Paddle tests run in the ``paddle`` nox session; elsewhere (no paddle installed) they are
not collected."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("paddle") is None:
    collect_ignore_glob = ["test_*.py"]
