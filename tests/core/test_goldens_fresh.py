"""The committed goldens are exactly what the reference produces today."""

from __future__ import annotations


def test_goldens_match_the_reference(run_python) -> None:
    proc = run_python("-m", "adagc.conformance.generate_goldens", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
