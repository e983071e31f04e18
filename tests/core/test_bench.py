"""The benchmark harness runs and prints its table (the timings themselves are not tested)."""

from __future__ import annotations


def test_bench_numpy_small_set_prints_the_table(run_python) -> None:
    proc = run_python(
        "-m", "adagc.bench", "--backend", "numpy", "--sets", "small", "--repeats", "1", "--quiet"
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("small-4000")]
    assert {(r[1], r[2]) for r in rows} == {
        ("steady", "adagc"),
        ("all-clipped", "adagc"),
        ("steady", "limit"),
        ("all-clipped", "limit"),
    }
    for r in rows:
        assert float(r[3]) > 0 and float(r[4]) > 0 and float(r[5]) > 0
    assert all(r[-1] == "GB/s" for r in rows if r[2] == "limit")


def test_bench_bad_arguments_exit_2(run_python) -> None:
    assert run_python("-m", "adagc.bench", "--backend", "fortran").returncode == 2
    assert run_python("-m", "adagc.bench", "--backend", "numpy", "--sets", "huge").returncode == 2
