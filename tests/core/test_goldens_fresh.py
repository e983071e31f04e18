"""The committed goldens are exactly what the reference produces today."""

from __future__ import annotations


def test_goldens_match_the_reference(run_python) -> None:
    proc = run_python("-m", "adagc.conformance.generate_goldens", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_check_names_the_numbers_that_differ() -> None:
    from adagc.conformance.generate_goldens import differences

    old = {"steps": [{"stats": {"global_norm": 2.9774582253977853, "nonfinite": False}}]}
    new = {"steps": [{"stats": {"global_norm": 2.9774582253977857, "nonfinite": False}}]}
    assert differences(old, new) == [
        ("steps[0].stats.global_norm", 2.9774582253977853, 2.9774582253977857)
    ]
    assert differences({"x": float("nan")}, {"x": float("nan")}) == []


def test_the_oracle_sum_is_exact_and_overflows_to_inf() -> None:
    import math

    from adagc.backends.reference import fsum_sq

    values = [0.1] * 10 + [1e-9]
    assert fsum_sq(values) == math.fsum(v * v for v in values)
    assert fsum_sq([1e154, 1e154]) == math.inf
    assert math.isnan(fsum_sq([float("nan"), 1.0]))
