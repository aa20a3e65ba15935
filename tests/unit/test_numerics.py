"""Numerics guards: learned quantizer scales stay positive and finite whatever a step does to them, and a NaN loss
stops training with one line naming the step (and, for the supernet, the subnet) and keeps the last good
checkpoint."""

from __future__ import annotations

import pytest
import torch
from quantsearch.errors import TrainingError
from quantsearch.quant.forms import QuantForm
from quantsearch.quant.quantizer import SCALE_MAX, SCALE_MIN, ElasticQuantizer

W4 = QuantForm(4, "per_channel", True)
A4 = QuantForm(4, "per_tensor", False)


@pytest.mark.parametrize("bad", [0.0, -0.0, float("inf"), float("-inf"), 1e-30, -3.0])
@pytest.mark.parametrize(("kind", "form"), [("weight", W4), ("activation", A4)])
def test_scales_stay_positive_and_finite(bad, kind, form):
    q = ElasticQuantizer(kind, channels=3)
    x = torch.randn(3, 2, 3, 3, requires_grad=True)
    q.calibrate(x.detach())
    q.set_form(form)
    with torch.no_grad():
        scale, _ = q.raw_qparams(form)
        scale.fill_(bad)  # a view into the table: what an optimiser step could have left there
    s, _ = q.qparams(form)
    assert torch.isfinite(s).all()
    assert (s > 0).all()
    assert (s >= SCALE_MIN).all()
    assert (s <= SCALE_MAX).all()
    out = q(x)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_scales_inside_the_range_are_unchanged():
    q = ElasticQuantizer("weight", channels=3)
    w = torch.randn(3, 2, 3, 3)
    q.calibrate(w)
    q.set_form(W4)
    raw, _ = q.raw_qparams(W4)
    s, _ = q.qparams(W4)
    assert torch.equal(s, raw.abs())  # the clamp never touches a sensible scale: same maths as before


def test_a_step_that_drives_a_scale_negative_keeps_the_forward_finite():
    q = ElasticQuantizer("activation")
    x = torch.rand(8, 4) * 5
    q.calibrate(x)
    q.set_form(A4)
    opt = torch.optim.SGD(q.parameters(), lr=1e6)  # absurd: the scale overshoots through zero
    (q(x) - 100).square().sum().backward()
    opt.step()
    out = q(x)
    assert torch.isfinite(out).all()
    assert torch.isfinite(q.qparams(A4)[0]).all()


def _nan_after(module, name, calls, monkeypatch):
    """Make module.<name> (a loss function) return NaN from call `calls` + 1 on."""
    real = getattr(module, name)
    seen = {"n": 0}

    def loss(*args, **kwargs):
        seen["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if seen["n"] > calls else value

    monkeypatch.setattr(module, name, loss)


def test_nan_loss_stops_fp32_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from quantsearch.config import DataSpec, JobSpec, TrainingSpec
    from quantsearch.data import prepare_data
    from quantsearch.train import load_checkpoint, loop, train_fp32

    spec = JobSpec(device="cpu", data=DataSpec(name="synthetic", train_limit=64),
                   training=TrainingSpec(epochs=2, batch_size=32))
    data = prepare_data(spec.data)
    out = tmp_path / "fp32"
    train_fp32(spec.model_copy(update={"training": TrainingSpec(epochs=1, batch_size=32)}), data, out, progress=False)
    good = (out / "model.pt").read_bytes()
    _nan_after(loop.F, "cross_entropy", 1, monkeypatch)  # epoch 2, its second step
    with pytest.raises(TrainingError, match=r"loss became nan at step 2 of the epoch; the last good checkpoint"):
        train_fp32(spec, data, out, progress=False)
    assert (out / "model.pt").read_bytes() == good
    assert load_checkpoint(out / "model.pt")["epoch"] == 1
    assert not (out / "metrics.json").exists() or "nan" not in (out / "metrics.json").read_text()


@pytest.mark.slow
def test_nan_loss_stops_supernet_training_naming_step_and_subnet(tmp_path, monkeypatch, capsys):
    from quantsearch.config import DataSpec, JobSpec, SupernetSpec, TrainingSpec
    from quantsearch.data import prepare_data
    from quantsearch.supernet import trainer
    from quantsearch.supernet.job import train_supernet_local
    from quantsearch.train import load_checkpoint, train_fp32

    sn = SupernetSpec(epochs=1, batch_size=32, calib_images=32, bn_images=32, n_random=1, init_calibrator="maxabs")
    spec = JobSpec(device="cpu", output_dir=str(tmp_path), data=DataSpec(name="synthetic", train_limit=64, val_size=32),
                   training=TrainingSpec(epochs=1, batch_size=64), supernet=sn)
    data = prepare_data(spec.data)
    train_fp32(spec, data, tmp_path / "fp32", progress=False)
    out = tmp_path / "supernet"
    train_supernet_local(spec, data, out, progress=False)  # epoch 1: the good checkpoint
    good = (out / "supernet.pt").read_bytes()
    _nan_after(trainer, "gpg_loss", 0, monkeypatch)  # every distilled subnet from now on
    more = spec.model_copy(update={"supernet": sn.model_copy(update={"epochs": 2})})
    with pytest.raises(TrainingError) as exc:
        train_supernet_local(more, data, out, progress=False)
    msg = str(exc.value)
    assert "supernet loss became nan at step 3 (epoch 2) on the random0 subnet (" in msg, msg
    assert "the last good checkpoint is kept" in msg
    assert "\n" not in msg
    assert (out / "supernet.pt").read_bytes() == good
    assert load_checkpoint(out / "supernet.pt", kind="supernet")["epoch"] == 1
