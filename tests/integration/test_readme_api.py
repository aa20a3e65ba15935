"""The README's 'Python API' snippets (tests/integration/readme_api/*.py) run as written: on synthetic 16x16 images
in an ImageFolder, with a briefly trained torchvision resnet18 (a few minutes on 2 CPU cores: marked slow)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import quantsearch as qs
import torch
from torch import nn

pytestmark = pytest.mark.slow

SNIPPETS = Path(__file__).parent / "readme_api"


def _images(n_per_class: int, gen: torch.Generator, templates: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    out = []
    for label, t in enumerate(templates):
        for _ in range(n_per_class):
            out.append(((t + 0.25 * torch.randn(t.shape, generator=gen)).clamp(0, 1), label))
    return out


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user has: an ImageFolder of 16x16 RGB images (4 classes) and a trained resnet18's weights."""
    import torchvision
    from torchvision.transforms.functional import to_pil_image

    root = tmp_path_factory.mktemp("user")
    gen = torch.Generator().manual_seed(0)
    templates = torch.rand(4, 3, 16, 16, generator=gen)
    train = _images(48, gen, templates)
    for split, items in (("train", train), ("val", _images(16, gen, templates))):
        for i, (img, label) in enumerate(items):
            folder = root / "data" / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            to_pil_image(img).save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.stack([img for img, _ in train])
    y = torch.tensor([label for _, label in train])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(6):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():  # exact BN statistics of the training images (a few steps leave the running ones stale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model(x)
    torch.save(model.state_dict(), root / "resnet18.pt")
    return root


def _run(name: str, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    torch.manual_seed(0)
    return runpy.run_path(str(SNIPPETS / name))


def test_readme_snippet_ptq_and_dqss(user_files, monkeypatch, capsys):
    ns = _run("ptq_dqss.py", user_files, monkeypatch)
    out = capsys.readouterr().out
    accs = {m[0]: float(m[1]) for m in re.findall(r"^(PTQ|DQSS) top-1 ([0-9.]+)$", out, flags=re.M)}
    assert set(accs) == {"PTQ", "DQSS"}, out
    assert all(0.0 <= a <= 1.0 for a in accs.values()), out
    model, qmodel, strategy, val = ns["model"], ns["qmodel"], ns["strategy"], ns["val"]
    assert qs.evaluate(model, val).top1 > 0.9  # the fixture's model learned the classes
    assert accs["DQSS"] > 0.5  # W4A4 with the searched strategy still classifies
    n_layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    assert len(strategy) == n_layers
    assert strategy.mode == "ptq"
    assert not any(type(m).__name__.startswith("Quant") for m in model.modules())  # the user's model is untouched
    # the file alone (with the float model) rebuilds the quantized model exactly
    rebuilt = qs.Strategy.load(user_files / "strategy.json").build(model).eval()
    x = next(iter(val))[0]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qmodel.eval()(x))


def test_readme_snippet_supernet(user_files, monkeypatch, capsys):
    ns = _run("supernet.py", user_files, monkeypatch)
    out = capsys.readouterr().out
    accs = dict(re.findall(r"^(W\dA\d) top-1 ([0-9.]+)$", out, flags=re.M))
    assert list(accs) == ["W8A8", "W4A4", "W2A2"], out
    assert float(accs["W8A8"]) > 0.5
    supernet = ns["supernet"]
    assert [h["epoch"] for h in supernet.history] == [1.0, 2.0]
    assert "val_acc_max" in supernet.history[-1]
    from quantsearch.space import get_config

    cfg = get_config(ns["mixed"])
    assert cfg is not None
    assert {c.weight.granularity for n, c in cfg.items() if c.weight.bits == 3} == {"per_tensor"}


def test_readme_snippet_search(user_files, monkeypatch):
    ns = _run("search.py", user_files, monkeypatch)
    rows, cqap, found, supernet = ns["rows"], ns["cqap"], ns["found"], ns["supernet"]
    assert len(rows) == 40
    assert all(0 <= r["val_acc"] <= 1 for r in rows)
    assert cqap.report.n_heldout >= 3
    best = found.best()
    from quantsearch.space import subnet_cost

    limit = subnet_cost(supernet.costs(), supernet.space.uniform(3, 3)).bitops
    assert best.bitops <= limit
    assert supernet.space.contains(best.config)
    assert 0 <= qs.evaluate(ns["best"], ns["val"]).top1 <= 1
