"""pytest plugin of the conformance suite (registered as the ``adagc_conformance`` entry point).

Options: ``--adagc-backend NAME`` (repeatable; a registered name or a module path),
``--adagc-jit`` (run ``update`` through the backend's ``jit_update``), ``--adagc-device D``.
Tests ask for the ``harness`` fixture, and ``dtype`` for the float dtype; the plugin
parametrizes them over the chosen backends and each backend's dtypes.
"""

from __future__ import annotations

from typing import Any

import pytest

from ._harness import Harness, make_harness


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("adagc", "adagc conformance suite")
    group.addoption(
        "--adagc-backend",
        action="append",
        default=None,
        help="backend to test: a registered name (numpy, torch, jax, paddle, cupy) or a module "
        "path defining BACKEND; repeatable (default: numpy)",
    )
    group.addoption("--adagc-jit", action="store_true", help="run update() under jit_update")
    group.addoption("--adagc-device", default=None, help="device for the arrays (e.g. cuda)")


def _harnesses(config: pytest.Config) -> list[Harness]:
    names = config.getoption("--adagc-backend") or ["numpy"]
    jit = bool(config.getoption("--adagc-jit"))
    device = config.getoption("--adagc-device")
    return [make_harness(n, jit=jit, device=device) for n in names]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" not in metafunc.fixturenames:
        return
    harnesses = _harnesses(metafunc.config)
    if "dtype" in metafunc.fixturenames:
        cases: list[Any] = [
            pytest.param(h, d, id=f"{h.id}-{d}") for h in harnesses for d in h.dtypes
        ]
        metafunc.parametrize(("harness", "dtype"), cases)
    else:
        metafunc.parametrize("harness", harnesses, ids=[h.id for h in harnesses])
