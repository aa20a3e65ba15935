import numpy as np
import pytest
import torch
from quantsearch.config import JobSpec
from quantsearch.data import PreparedData, split_train_val
from quantsearch.quant import QuantPolicy, convert, get_profile
from quantsearch.space import SearchSpace
from quantsearch.supernet import (
    SandwichSampler,
    build_job_run,
    fit_job,
    gpg_loss,
    load_state,
    net_forms,
    recalibrate_bn,
    sandwich_step,
    save_table,
    state_payload,
    uniform_table,
    wdr_loss,
)
from quantsearch.train import train_fp32
from quantsearch.train.checkpoint import load_checkpoint
from torch import nn


def _toy():
    return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def _space(profile="generic"):
    q = convert(_toy(), QuantPolicy(), torch.randn(1, 1, 8, 8))
    return q, SearchSpace.for_model(q, get_profile(profile))


def test_sampler_max_min_and_stratified_random():
    _, space = _space()
    s = SandwichSampler(space, seed=0)
    form = net_forms(space)[0]
    assert all(c.weight.bits == 8 for c in s.max_config(form).values())
    mn = s.min_config(form)
    assert mn["3"].weight.bits == 2
    assert mn["6"].activation.bits == 2
    assert mn["0"].weight.bits == 8
    free = ("3", "6")  # averages over the free layers: the pinned ones are always 8
    avgs = [np.mean([cfg[n].weight.bits for n in free] + [cfg[n].activation.bits for n in free])
            for _ in range(30) for cfg in s.random_configs(2)]
    assert min(avgs) < 3.5
    assert max(avgs) > 6.5
    cfgs = [c for _ in range(20) for c in s.random_configs(2)]
    assert all(space.contains(c) for c in cfgs)
    forms = {(lc.weight.granularity, lc.weight.symmetric, lc.activation.symmetric) for c in cfgs for lc in c.values()}
    assert len(forms) > 4  # granularity / symmetry sampled per layer


def test_sampler_respects_profile_and_state_round_trip():
    _, space = _space("low-bit-accelerator")
    s = SandwichSampler(space, seed=3)
    for c in s.random_configs(10):
        assert all(lc.weight.bits in (2, 4, 8) and lc.weight.per_channel and lc.weight.symmetric for lc in c.values())
    state = s.state()
    a = s.random_configs(3)
    s.set_state(state)
    assert s.random_configs(3) == a


def test_wdr_zero_for_uniform_weights_and_positive_for_gaussian():
    net = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    q = convert(net, QuantPolicy(), torch.randn(2, 256))
    torch.manual_seed(0)
    linears = [m for m in q.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in linears:
            m.weight.uniform_(-1, 1)
    assert wdr_loss(q, skip_first=False).item() < 1e-3  # uniform: skew 0, kurtosis 1.8
    with torch.no_grad():
        for m in linears:
            m.weight.normal_()
    loss = wdr_loss(q, skip_first=False)
    assert loss.item() == pytest.approx(0.015 * (3 - 1.8) ** 2, rel=0.2)  # Gaussian kurtosis 3
    loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in linears)
    q.zero_grad(set_to_none=True)
    wdr_loss(q, skip_first=True).backward()
    assert linears[0].weight.grad is None
    assert linears[1].weight.grad is not None


def test_gpg_loss():
    torch.manual_seed(0)
    z = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    t = torch.randn(8, 5, requires_grad=True)
    assert torch.allclose(gpg_loss(z, t, y, lam=0.0), nn.functional.cross_entropy(z, y))
    assert gpg_loss(z, z.detach(), y, lam=1.0).item() == pytest.approx(0.0, abs=1e-6)
    gpg_loss(z, t, y, lam=0.5, temperature=2.0).backward()
    assert t.grad is None
    assert z.grad is not None


def test_bn_recalibration_counts_images_and_averages():
    from quantsearch.data import ArrayBatches
    from quantsearch.data.datasets import ArrayData

    model = nn.Sequential(nn.BatchNorm2d(1))
    imgs = torch.arange(300, dtype=torch.float32).reshape(300, 1, 1, 1).to(torch.uint8)
    data = ArrayData(imgs, torch.zeros(300, dtype=torch.long))
    model[0].running_mean.fill_(99.0)
    used = recalibrate_bn(model, ArrayBatches(data, 64, 0.0, 1.0), n_images=200)
    assert used == 200
    expected = (torch.arange(200, dtype=torch.float32) / 255.0).mean()
    assert model[0].running_mean.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model[0].momentum == 0.1


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory, synthetic):
    out = tmp_path_factory.mktemp("sn")
    spec = JobSpec.model_validate({
        "output_dir": str(out), "data": {"name": "synthetic"},
        "training": {"epochs": 1, "batch_size": 64},
        "supernet": {"epochs": 2, "batch_size": 64, "train_images": 192, "calib_images": 64, "bn_images": 64,
                     "table_bits": [8, 2]}})
    tr, va = split_train_val(synthetic.train, 64, 0)
    data = PreparedData(synthetic, tr, va, synthetic.test)
    train_fp32(spec, data, out / "fp32", progress=False)
    return spec, data, load_checkpoint(out / "fp32" / "model.pt")


def test_sandwich_step_orders_chain_and_updates(tiny_job, monkeypatch):
    spec, data, fp32 = tiny_job
    run = build_job_run(spec, data, fp32)
    import quantsearch.supernet.trainer as trainer

    seen = []
    orig = trainer.set_config
    monkeypatch.setattr(trainer, "set_config", lambda m, c: (seen.append(sum(c.avg_bits())), orig(m, c)))
    before = {k: v.clone() for k, v in run.model.state_dict().items() if torch.is_tensor(v)}
    x, y = data.train.images[:32].float() / 255, data.train.labels[:32]
    losses = sandwich_step(run, x, y, spec.supernet)
    assert set(losses) == {"wdr", "max", "random0", "random1", "min"}
    assert seen[0] == max(seen)
    assert seen[-1] == min(seen)
    assert seen[1:] == sorted(seen[1:], reverse=True)
    changed = [k for k, v in run.model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("weight" in k for k in changed)
    assert any("scale" in k for k in changed)
    no_wdr = spec.supernet.model_copy(update={"wdr": False, "gpg": False, "n_random": 0})
    assert set(sandwich_step(run, x, y, no_wdr)) == {"max", "min"}


def test_resume_equals_uninterrupted(tiny_job):
    spec, data, fp32 = tiny_job
    sn = spec.supernet
    full = fit_job(build_job_run(spec, data, fp32), data, sn)
    saved = {}
    part = fit_job(build_job_run(spec, data, fp32), data, sn.model_copy(update={"epochs": 1}),
                   save=lambda r, m: saved.update(state_payload(r)))
    assert part.epoch == 1
    resumed = build_job_run(spec, data, fp32)
    load_state(resumed, saved)
    resumed = fit_job(resumed, data, sn)
    for a, b in zip(full.history, resumed.history, strict=True):
        for k in a:
            if k.startswith("loss") or k.startswith("val"):
                assert a[k] == pytest.approx(b[k], abs=1e-6), k
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) if torch.is_tensor(sa[k]) else sa[k] == sb[k]
               for k in sa)


def test_uniform_table_and_files(tiny_job, tmp_path):
    spec, data, fp32 = tiny_job
    run = build_job_run(spec, data, fp32)
    rows = uniform_table(run.model, run.space, data, spec.supernet)
    assert [r["config"] for r in rows] == ["W8A8", "W2A2"]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    assert rows[0]["test_acc"] > 0.5
    paths = save_table(rows, tmp_path)
    import pyarrow.parquet as pq

    assert pq.read_table(paths["parquet"]).num_rows == 2
    assert paths["png"].stat().st_size > 1000
    assert paths["csv"].read_text().splitlines()[0].startswith('"bits"')
