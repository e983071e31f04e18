"""Sharded JAX tests run on 4 host CPU devices. XLA reads the device count when JAX starts,
so the flag is set here, before any test module imports JAX (``nox -s distributed-jax`` runs
this folder in its own process)."""

from __future__ import annotations

import os
import sys

N_DEVICES = 4

if "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={N_DEVICES}"

import pytest  # noqa: E402

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

if len(jax.devices()) < N_DEVICES:
    pytest.skip(
        f"needs {N_DEVICES} devices; JAX was imported before XLA_FLAGS could be set (run this "
        "folder on its own: nox -s distributed-jax)",
        allow_module_level=True,
    )
