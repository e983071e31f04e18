"""The worked porting example (docs/porting.md): a backend written only against the protocol,
on array-api-strict, passes the whole shared conformance suite by module path."""

from __future__ import annotations

import pytest

pytest.importorskip("array_api_strict")


def test_array_api_strict_backend_passes_the_suite(run_python) -> None:
    proc = run_python(
        "-m",
        "adagc.conformance",
        "--backend",
        "tests.porting_example.array_api_strict_backend",
        "--",
        "-q",
        "-p",
        "no:randomly",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
