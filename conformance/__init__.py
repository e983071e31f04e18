"""The shared conformance suite every adagc backend must pass.

Run it for a backend by name, or for a third-party backend by module path::

    python -m adagc.conformance --backend numpy
    python -m adagc.conformance --backend mypkg.my_backend
    pytest --pyargs adagc.conformance.suite --adagc-backend torch   # as a pytest plugin

See docs/porting.md for what a backend module provides.
"""

from __future__ import annotations

from pathlib import Path

from ._harness import TOLERANCES, Harness, assert_close, make_harness, tolerance

SUITE_DIR = Path(__file__).parent / "suite"
GOLDENS_DIR = Path(__file__).parent / "goldens"

__all__ = [
    "GOLDENS_DIR",
    "SUITE_DIR",
    "TOLERANCES",
    "Harness",
    "assert_close",
    "make_harness",
    "run",
    "tolerance",
]


def _plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "adagc.conformance.plugin" for ep in entry_points(group="pytest11"))


def run(
    backends: list[str],
    *,
    jit: bool = False,
    device: str | None = None,
    pytest_args: list[str] | None = None,
) -> int:
    """Run the suite for ``backends``; returns pytest's exit code."""
    import pytest

    args = [str(SUITE_DIR), "-p", "no:cacheprovider", "--rootdir", str(SUITE_DIR)]
    if not _plugin_installed():  # e.g. run from a source tree that was never pip-installed
        args += ["-p", "adagc.conformance.plugin"]
    for b in backends:
        args += ["--adagc-backend", b]
    if jit:
        args.append("--adagc-jit")
    if device:
        args += ["--adagc-device", device]
    args += list(pytest_args or [])
    return int(pytest.main(args))
