"""``import adagc`` (and every framework-neutral module) imports no deep-learning framework."""

from __future__ import annotations

import json

FRAMEWORKS = ["torch", "jax", "jaxlib", "optax", "paddle", "cupy", "tensorflow"]


def test_import_adagc_imports_no_framework(run_python) -> None:
    code = (
        "import sys, json, adagc, adagc.backends, adagc.adapters, adagc.conformance, "
        "adagc.bench, adagc.bench.harness, adagc.backends.numpy, adagc.backends.reference\n"
        "import numpy as np\n"
        "g = [np.ones(3, np.float32)]\n"
        "adagc.update(g, adagc.init(g))\n"
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_detection_does_not_import_frameworks(run_python) -> None:
    """Asking which backend owns an unknown type consults sys.modules only."""
    code = (
        "import sys, adagc\n"
        "try:\n"
        "    adagc.init([object()])\n"
        "except TypeError as e:\n"
        "    assert 'no registered backend' in str(e), e\n"
        f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
