"""The spike lab: fault-plan parser, spike score on lab curves, bad arguments, and a smoke run
that checks every output exists and parses."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

import adagc
from adagc.lab.faults import Fault, FaultPlanError, parse_faults


def test_fault_plan_parses_every_kind() -> None:
    faults = parse_faults("lr:30:10:5,grad:10:1e4:blocks.0.fc.weight,data:20:zeros,grad:5")
    assert faults == [
        Fault("grad", 5, 1e3),
        Fault("grad", 10, 1e4, tensor="blocks.0.fc.weight"),
        Fault("data", 20, mode="zeros"),
        Fault("lr", 30, 10.0, duration=5),
    ]
    assert parse_faults("clean") == [] and parse_faults("none") == []
    assert faults[3].covers(34) and not faults[3].covers(35)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("grad", "KIND:STEP"),
        ("grad:x", "STEP must be an integer"),
        ("grad:-3", "STEP must be an integer"),
        ("grad:5:abc", "FACTOR must be a number"),
        ("grad:5:0", "FACTOR must be a finite number > 0"),
        ("data:5:noise", "random|zeros"),
        ("lr:5:10:0", "STEPS must be >= 1"),
        ("heat:5", "unknown kind"),
        ("grad:1:2:3:4", "STEP\\[:FACTOR"),
    ],
)
def test_malformed_fault_plans_say_what_is_wrong(spec: str, match: str) -> None:
    with pytest.raises(FaultPlanError, match=match):
        parse_faults(spec)


def _corpus(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("def f(x):\n    return x * 2\n" * 400)
    (src / "b.py").write_text("import os\nprint(os.getcwd())\n" * 300)
    return src


@pytest.mark.slow
def test_smoke_run_writes_table_json_csv_and_png(tmp_path, run_python) -> None:
    out = tmp_path / "run"
    proc = run_python(
        "-m",
        "adagc.lab",
        "--corpus",
        str(_corpus(tmp_path)),
        "--steps",
        "14",
        "--seeds",
        "1",
        "--methods",
        "global,adagc",
        "--faults",
        "grad:6:1e3,data:8:random,lr:10:10:2",
        "--out",
        str(out),
        "--quiet",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "adagc" in proc.stdout and "peak dmg" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in metrics["summary"]] == ["global", "adagc"]
    assert {"peak_gap", "final_gap", "spike_score_loss", "frac_clipped", "val_ppl"} <= set(
        metrics["summary"][1]
    )
    with open(out / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 14  # methods x (faulted, clean) x steps
    injected = [r for r in rows if r["injected"] == "1"]
    assert {int(r["step"]) for r in injected} == {8} and all(
        r["run"] == "faulted" for r in injected
    )
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The clean and faulted runs share batches: before the first fault their losses are equal.
    by = {(r["method"], r["run"], int(r["step"])): float(r["loss"]) for r in rows}
    for m in ("global", "adagc"):
        for t in range(6):
            assert by[(m, "faulted", t)] == by[(m, "clean", t)]


@pytest.mark.parametrize("optimizer", ["sgd", "muon", "lion"])
def test_each_optimizer_trains(tmp_path, run_python, optimizer: str) -> None:
    """A few steps with each optimizer; Lion comes from pytorch-optimizer, and without that
    package the lab says so (exit 2) instead of failing later."""
    args = ["-m", "adagc.lab", "--corpus", str(_corpus(tmp_path)), "--steps", "4"]
    args += ["--methods", "adagc", "--faults", "clean", "--no-clean", "--quiet"]
    args += ["--optimizer", optimizer, "--out", str(tmp_path / optimizer)]
    proc = run_python(*args, timeout=300)
    if optimizer == "lion" and importlib.util.find_spec("pytorch_optimizer") is None:
        assert proc.returncode == 2
        assert "needs pytorch-optimizer" in proc.stderr.strip().splitlines()[-1]
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / optimizer / "metrics.json").read_text())
    assert metrics["summary"][0]["method"] == "adagc"


def test_spike_score_on_lab_curves_excludes_injected_batches() -> None:
    """A loss curve with an injected random-byte batch: that batch's loss is huge, but it is
    the data's loss; excluded, the curve has no spike."""
    losses = [3.0 - 0.005 * t + 0.01 * ((t * 7) % 5) for t in range(120)]
    losses[80] = 5.6  # the loss ON the injected batch
    assert adagc.spike_score(losses, window=50, sigma=5, min_history=20).spikes == [80]
    assert adagc.spike_score(losses, window=50, sigma=5, min_history=20, exclude=[80]).spikes == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corpus", "/no/such/dir"], "does not exist"),
        (["--methods", "adagc,clipall"], "unknown method"),
        (["--faults", "grad:x"], "STEP must be an integer"),
        (["--faults", "grad:500", "--steps", "100"], "after the last step"),
        (["--preset", "huge"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run_python, args, message) -> None:
    proc = run_python("-m", "adagc.lab", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("adagc-lab: error:")
