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


def test_the_limit_counts_the_clipped_bytes_not_the_clipped_count() -> None:
    """The "steady" scenario clips every 5th of GPT-2's 148 tensors, the embedding among them:
    20% of the tensors, 62% of the bytes; the limit row writes those bytes."""
    import math

    from adagc.bench.gradsets import gpt2_124m
    from adagc.bench.harness import SCENARIOS, _clipped

    sizes = [math.prod(s) for s in gpt2_124m().shapes]
    clipped = _clipped(len(sizes), SCENARIOS["steady"])
    assert len(clipped) == 30 and 0 in clipped
    assert 0.6 < sum(sizes[i] for i in clipped) / sum(sizes) < 0.65
    assert _clipped(len(sizes), SCENARIOS["all-clipped"]) == set(range(len(sizes)))
