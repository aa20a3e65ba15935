import pytest
import torch
from quantsearch.config import JobSpec
from quantsearch.data import PreparedData, split_train_val
from quantsearch.errors import CheckpointError
from quantsearch.space import load_model
from quantsearch.train import evaluate, load_checkpoint, train_fp32


def _prepared(bundle, val=128):
    tr, va = split_train_val(bundle.train, val, 0)
    return PreparedData(bundle, tr, va, bundle.test)


def _spec(tmp_path, **training):
    training = {"epochs": 2, "batch_size": 64, "lr": 0.01, "augment": False, **training}
    return JobSpec.model_validate({"model": {"name": "resnet8"}, "output_dir": str(tmp_path), "training": training})


def test_training_learns_synthetic(tmp_path, synthetic):
    data = _prepared(synthetic)
    res = train_fp32(_spec(tmp_path), data, tmp_path / "a", progress=False)
    assert res.test_acc > 0.8, res
    assert (tmp_path / "a" / "metrics.json").exists()
    ckpt = load_checkpoint(res.checkpoint, kind="fp32")
    again = evaluate(load_model(ckpt), data.test, data.mean, data.std).top1
    assert again == pytest.approx(res.test_acc)


def test_same_seed_same_weights(tmp_path, synthetic):
    data = _prepared(synthetic)
    a = train_fp32(_spec(tmp_path, epochs=1), data, tmp_path / "a", progress=False)
    b = train_fp32(_spec(tmp_path, epochs=1), data, tmp_path / "b", progress=False)
    sa, sb = load_checkpoint(a.checkpoint)["state_dict"], load_checkpoint(b.checkpoint)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_from_interrupted_epoch(tmp_path, synthetic):
    data = _prepared(synthetic)
    full = train_fp32(_spec(tmp_path, epochs=2, schedule="cosine"), data, tmp_path / "full", progress=False)
    # simulate an interruption after epoch 1: checkpoint of a 2-epoch run at epoch 1
    import quantsearch.train.fit as fit

    orig = fit.save_checkpoint
    calls = []

    def stop_after_first(path, payload):
        orig(path, payload)
        calls.append(payload["epoch"])
        if payload["epoch"] == 1:
            raise KeyboardInterrupt

    fit.save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_fp32(_spec(tmp_path, epochs=2, schedule="cosine"), data, tmp_path / "r", progress=False)
    finally:
        fit.save_checkpoint = orig
    resumed = train_fp32(_spec(tmp_path, epochs=2, schedule="cosine"), data, tmp_path / "r", progress=False)
    a = load_checkpoint(full.checkpoint)["state_dict"]
    b = load_checkpoint(resumed.checkpoint)["state_dict"]
    assert calls == [1]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    torch.save({"format": "other"}, tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="not a quantsearch"):
        load_checkpoint(tmp_path / "o.pt")
    torch.save({"format": "quantsearch-checkpoint", "version": 99}, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 8])
def test_onecycle_schedule_survives_tiny_runs(steps):
    import torch
    from quantsearch.train.optim import make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, "onecycle", steps)
    for _ in range(steps):
        opt.step()
        sched.step()
