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


# ---- the learning-rate sweep, over-clipping curves, ZClip ----------------------------------

SWEEP_FIELDS = {
    "method": str,
    "lr": float,
    "seed": int,
    "init_loss": float,
    "final_train_loss": (float, type(None)),
    "val_loss": (float, type(None)),
    "max_loss": (float, type(None)),
    "spike_count": int,
    "spike_score": float,
    "frac_clipped": float,
    "median_coef": float,
    "min_coef": float,
    "diverged": bool,
    "nonfinite": bool,
    "steps_run": int,
}


def test_lr_sensitivity_on_a_hand_made_curve() -> None:
    """Wortsman et al.: mean over the grid of min(loss, loss0) minus the curve's minimum."""
    from adagc.lab.sweep import lr_sensitivity

    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    # 3.0, 2.5 (best), 2.8, then 7.0 capped at loss0 = 5.5:
    # mean(3.0, 2.5, 2.8, 5.5) - 2.5 = 13.8 / 4 - 2.5 = 0.95
    assert lr_sensitivity(lrs, [3.0, 2.5, 2.8, 7.0], 5.5) == pytest.approx(0.95)
    # a dead run (NaN) counts as loss0; a flat curve has sensitivity 0
    assert lr_sensitivity(lrs, [3.0, 2.5, 2.8, float("nan")], 5.5) == pytest.approx(0.95)
    assert lr_sensitivity(lrs, [2.0] * 4, 5.5) == 0.0
    with pytest.raises(ValueError):
        lr_sensitivity(lrs, [2.0], 5.5)


def test_sweep_summary_uses_the_seed_mean_curve() -> None:
    from adagc.lab.sweep import sweep_summary

    def rec(lr, seed, val, diverged=False):
        return {
            "method": "m",
            "lr": lr,
            "seed": seed,
            "init_loss": 5.0,
            "val_loss": val,
            "diverged": diverged,
            "spike_count": 0,
            "frac_clipped": 0.5,
        }

    records = [rec(0.1, 0, 2.0), rec(0.1, 1, 3.0), rec(1.0, 0, None, True), rec(1.0, 1, 9.0, True)]
    for r in records:
        r["val_loss"] = float("nan") if r["val_loss"] is None else r["val_loss"]
    (row,) = sweep_summary(records)
    assert row["curve"] == [2.5, 5.0]  # seed means, each run capped at loss0 = 5
    assert row["lr_sensitivity"] == pytest.approx((2.5 + 5.0) / 2 - 2.5)
    assert row["best_lr"] == 0.1 and row["max_stable_lr"] == 0.1 and row["diverged"] == 2


@pytest.mark.slow
def test_sweep_lr_smoke_writes_schema_and_table(tmp_path, run_python) -> None:
    out = tmp_path / "sweep"
    proc = run_python(
        "-m", "adagc.lab", "--sweep-lr", "--lrs", "1e-2,3", "--steps", "6", "--seeds", "1",
        "--methods", "none,adagc", "--adagc-warmup", "3", "--corpus", str(_corpus(tmp_path)),
        "--out", str(out), "--quiet", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LR sens" in proc.stdout and "Wortsman" in proc.stdout
    records = json.loads((out / "sweep.json").read_text())  # strict JSON: no NaN
    assert isinstance(records, list) and len(records) == 2 * 2  # LRs x methods x seeds
    assert {(r["method"], r["lr"], r["seed"]) for r in records} == {
        (m, lr, 0) for m in ("none", "adagc") for lr in (1e-2, 3.0)
    }
    for r in records:
        assert set(r) == set(SWEEP_FIELDS)
        for key, typ in SWEEP_FIELDS.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert 0.0 <= r["frac_clipped"] <= 1.0 and 0.0 < r["min_coef"] <= r["median_coef"] <= 1
    assert all(r["frac_clipped"] == 0.0 for r in records if r["method"] == "none")
    summary = json.loads((out / "sweep_summary.json").read_text())["summary"]
    assert [s["method"] for s in summary] == ["none", "adagc"]
    assert all(s["lr_sensitivity"] >= 0 for s in summary)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_lrs_exit_2(run_python) -> None:
    proc = run_python("-m", "adagc.lab", "--sweep-lr", "--lrs", "0.1,abc")
    assert proc.returncode == 2 and "--lrs must be" in proc.stderr
    proc = run_python("-m", "adagc.lab", "--lrs", "0.1")
    assert proc.returncode == 2 and "--lrs is for --sweep-lr" in proc.stderr


def _tiny_model():
    import torch

    from adagc.lab.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, d_model=16, n_head=2, ctx=8))
    x = torch.randint(0, 256, (4, 8))
    return model, x


def _backward(model, x, scale: float = 1.0) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = logits.logsumexp(-1).mean() - logits[..., 0].mean()
    (loss * scale).backward()


@pytest.mark.parametrize("method", ["none", "global", "adagc", "adagc-global", "adagc-raw"])
def test_every_clipper_reports_fraction_and_coefficients(method: str) -> None:
    import torch

    from adagc.lab.methods import ClipStep, make_clipper

    model, x = _tiny_model()
    clip = make_clipper(method, model, warmup=2, max_norm=1e-3)  # tiny max norm: clips
    steps = []
    for step in range(4):
        _backward(model, x)
        before = [p.grad.clone() for p in model.parameters()]
        s = clip(step)
        assert isinstance(s, ClipStep)
        steps.append(s)
        ratios = [
            float(torch.linalg.vector_norm(p.grad) / torch.linalg.vector_norm(b))
            for p, b in zip(model.parameters(), before)
            if torch.linalg.vector_norm(b) > 0
        ]
        assert min(ratios) == pytest.approx(s.min_coef, rel=1e-4)
        assert 0.0 <= s.frac_clipped <= 1.0 and s.min_coef <= s.median_coef <= 1.0
    if method == "none":
        assert all(s == ClipStep(0.0, 1.0, 1.0) for s in steps)
    else:
        assert steps[0].frac_clipped == 1.0 and steps[0].min_coef < 1.0  # warmup: global clip


def test_raw_warmup_arm_is_paddles_warmup_gamma() -> None:
    """With a warmup that clips (G > lambda_abs), 'clipped' starts gamma at h * n_i and keeps
    clipping hard after warmup; 'raw' (Paddle/ERNIE) starts at n_i and barely clips."""
    from adagc.lab.methods import make_clipper

    after_warmup = {}
    for method in ("adagc", "adagc-raw"):
        model, x = _tiny_model()
        clip = make_clipper(method, model, warmup=2, max_norm=1e-3)
        for step in range(3):
            _backward(model, x)
            s = clip(step)
        after_warmup[method] = s
    assert after_warmup["adagc"].median_coef < 0.01
    assert after_warmup["adagc-raw"].median_coef > 0.9


@pytest.mark.skipif(importlib.util.find_spec("zclip") is None, reason="zclip not installed")
def test_zclip_is_a_method_and_its_clipping_is_measured() -> None:
    """Installed, ZClip is offered; it runs without its max-norm fallback, and the lab
    measures what it clipped from the norms before and after its step."""
    from adagc.lab.methods import ZCLIP_SETTINGS, available_methods, make_clipper

    assert "zclip" in available_methods()
    assert ZCLIP_SETTINGS["max_grad_norm"] is None and ZCLIP_SETTINGS["z_thresh"] == 2.5
    model, x = _tiny_model()
    clip = make_clipper("zclip", model, warmup=2, max_norm=1.0)
    steps = []
    for step in range(30):  # 25 steps of statistics, then a 1000x gradient spike
        _backward(model, x, scale=1e3 if step == 29 else 1.0 + 0.01 * (step % 3))
        steps.append(clip(step))
    assert all(s.frac_clipped == 0.0 for s in steps[:25])  # warmup: no max-norm clip
    assert steps[-1].frac_clipped == 1.0 and steps[-1].median_coef < 1e-2


@pytest.mark.slow
def test_default_run_outputs_carry_the_over_clipping_curves(tmp_path, run_python) -> None:
    out = tmp_path / "run"
    methods = "none,global,adagc,adagc-raw"
    if importlib.util.find_spec("zclip") is not None:
        methods += ",zclip"
    proc = run_python(
        "-m", "adagc.lab", "--corpus", str(_corpus(tmp_path)), "--steps", "8", "--methods",
        methods, "--faults", "grad:4:1e3", "--adagc-warmup", "2", "--out", str(out), "--quiet",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"frac_clipped", "coef_median", "coef_min"} <= set(rows[0])
    assert {r["method"] for r in rows} == set(methods.split(","))
    for r in rows:
        assert 0 < float(r["coef_min"]) <= float(r["coef_median"]) <= 1.0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert all({"clean_frac_clipped", "clean_median_coef", "clean_min_coef"} <= set(s)
               for s in summary)  # fmt: skip
    assert "med h" in proc.stdout
