"""AdaGC.attach on the optimizers trainers hand out, and the AdaGC state inside
optimizer.state_dict()."""

from __future__ import annotations

import io

import pytest
import torch

from adagc import CheckpointMismatchError
from adagc.adapters.torch import OPTIMIZER_KEY, AdaGC

from .conftest import lm_rows, tiny_gpt2


def _step(model: torch.nn.Module, opt: object, batch: dict[str, torch.Tensor]) -> None:
    loss = model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss
    loss.backward()
    opt.step()  # type: ignore[attr-defined]
    opt.zero_grad()  # type: ignore[attr-defined]


def test_attach_accelerated_optimizer_clips_once_and_rejects_a_second_clipper() -> None:
    accelerate = pytest.importorskip("accelerate")
    model = tiny_gpt2()
    acc = accelerate.Accelerator(cpu=True)
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    clipper = AdaGC(model, warmup_steps=2)  # an nn.Module: its named parameters
    h1 = clipper.attach(opt)
    assert clipper.attach(opt) is h1  # attaching again is a no-op
    with pytest.raises(RuntimeError, match="already has an AdaGC clipper"):
        AdaGC(model).attach(opt)
    for row in lm_rows(rows=3):
        _step(model, opt, row)
    assert int(clipper.state.step) == 3  # one clip per step, not two
    h1.remove()
    _step(model, opt, lm_rows(rows=1)[0])
    assert int(clipper.state.step) == 3


def test_attach_rejects_non_optimizers_and_misuse_is_explained() -> None:
    model = tiny_gpt2()
    with pytest.raises(TypeError, match=r"torch.optim.Optimizer or a wrapper"):
        AdaGC(model).attach(object())
    with pytest.raises(TypeError, match="lambda_abs"):
        AdaGC(model, max_norm=1.0)


def test_optimizer_state_dict_round_trip_and_adoption_before_attach() -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clipper = AdaGC(model, warmup_steps=1)
    clipper.attach(opt)
    for row in lm_rows(rows=3):
        _step(model, opt, row)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    assert int(opt.state_dict()["param_groups"][0][OPTIMIZER_KEY]["step"]) == 3
    assert OPTIMIZER_KEY not in opt.param_groups[0]  # the live group stays clean

    def fresh() -> tuple[torch.optim.Optimizer, AdaGC]:
        m = tiny_gpt2()
        return torch.optim.AdamW(m.parameters(), lr=1e-3), AdaGC(m, warmup_steps=1)

    # attach, then load
    opt2, clip2 = fresh()
    clip2.attach(opt2)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(clip2.state.gamma, clipper.state.gamma)
    assert int(clip2.state.step) == 3 and OPTIMIZER_KEY not in opt2.param_groups[0]
    # load, then attach (what HF Trainer does on resume): adopted
    opt3, clip3 = fresh()
    buf.seek(0)
    opt3.load_state_dict(torch.load(buf, weights_only=True))
    clip3.attach(opt3)
    assert torch.equal(clip3.state.gamma, clipper.state.gamma)
    assert OPTIMIZER_KEY not in opt3.param_groups[0]


def test_loading_an_optimizer_checkpoint_without_adagc_state_warns() -> None:
    model = tiny_gpt2()
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3).state_dict()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    AdaGC(model).attach(opt)
    with pytest.warns(UserWarning, match="has no AdaGC state"):
        opt.load_state_dict(plain)


def test_a_bad_adagc_state_in_the_optimizer_checkpoint_changes_nothing() -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clipper = AdaGC(model)
    clipper.attach(opt)
    sd = opt.state_dict()
    sd["param_groups"][0][OPTIMIZER_KEY]["names"] = ["other"]
    lr_before = opt.param_groups[0]["lr"]
    sd["param_groups"][0]["lr"] = 123.0
    with pytest.raises(CheckpointMismatchError, match="other parameters"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == lr_before  # the optimizer did not load either


def test_accelerate_save_state_resumes_bit_identically(tmp_path) -> None:
    accelerate = pytest.importorskip("accelerate")
    rows = lm_rows(rows=6)

    def make() -> tuple[object, torch.nn.Module, object, AdaGC]:
        acc = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
        m = tiny_gpt2()
        m, o = acc.prepare(m, torch.optim.AdamW(m.parameters(), lr=3e-3))
        c = AdaGC(m, warmup_steps=2)
        c.attach(o)
        return acc, m, o, c

    def run(acc, m, o, batch) -> None:
        with acc.autocast():
            loss = m(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss
        acc.backward(loss)
        o.step()
        o.zero_grad()

    acc, ref, o, c = make()
    for r in rows:
        run(acc, ref, o, r)
    acc, m, o, _ = make()
    for r in rows[:3]:
        run(acc, m, o, r)
    acc.save_state(str(tmp_path / "ckpt"))
    acc, m2, o2, c3 = make()
    acc.load_state(str(tmp_path / "ckpt"))
    assert int(c3.state.step) == 3
    for r in rows[3:]:
        run(acc, m2, o2, r)
    assert torch.equal(c3.state.gamma, c.state.gamma)
    for (n, p), (_, q) in zip(ref.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), n


def test_grad_scaler_fp16_clips_unscaled_gradients() -> None:
    model = tiny_gpt2()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    clipper = AdaGC(model, warmup_steps=5)
    clipper.attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    row = lm_rows(rows=1)[0]
    loss = model(input_ids=row["input_ids"][None], labels=row["labels"][None]).loss
    scaler.scale(loss).backward()
    raw = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())) / 2.0**12
    scaler.step(opt)  # unscales, then the pre-hook clips
    g = float(clipper.last_stats.global_norm)
    assert abs(g - float(raw)) / float(raw) < 1e-4  # AdaGC saw true gradient units


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_distributed_checkpoint_optimizer_state_dict_carries_the_state(tmp_path) -> None:
    """torch.distributed.checkpoint: get_/set_state_dict keep the param-group key,
    and dcp.save/dcp.load (single process here) write and read it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rows = lm_rows(rows=6)

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer, AdaGC]:
        m = tiny_gpt2()
        o = torch.optim.AdamW(m.parameters(), lr=3e-3)
        c = AdaGC(m, warmup_steps=2)
        c.attach(o)
        return m, o, c

    ref, o, c = make()
    for r in rows[:3]:
        _step(ref, o, r)
    msd, osd = get_state_dict(ref, o)
    assert OPTIMIZER_KEY in osd["param_groups"][0]
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path))
    for r in rows[3:]:
        _step(ref, o, r)

    m, o2, c2 = make()
    _step(m, o2, rows[0])  # give the optimizer state tensors for dcp.load to fill
    msd, osd = get_state_dict(m, o2)
    target = {"model": msd, "optim": osd}
    dcp.load(target, checkpoint_id=str(tmp_path))
    set_state_dict(m, o2, model_state_dict=target["model"], optim_state_dict=target["optim"])
    assert int(c2.state.step) == 3
    for r in rows[3:]:
        _step(m, o2, r)
    assert torch.equal(c2.state.gamma, c.state.gamma)
    for (n, p), (_, q) in zip(ref.named_parameters(), m.named_parameters()):
        assert torch.equal(p, q), n
