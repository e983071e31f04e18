"""Backends: one module per framework, each defining ``BACKEND`` (an ``ArrayBackend``).

Modules are imported lazily by :func:`adagc.get_backend`; importing this package imports no
framework. ``reference`` is not a backend: it is the naive test oracle.
"""

from __future__ import annotations

__all__: list[str] = []
