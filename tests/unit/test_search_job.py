"""The search half on a tiny synthetic supernet: sampling (stratified, cached, resumable), the search job (budgets,
finalists, best.json), the pipeline stages and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from quantsearch.config import JobSpec
from quantsearch.data import prepare_data
from quantsearch.data.tables import read_rows
from quantsearch.errors import ConfigError
from quantsearch.quant import get_profile
from quantsearch.space import SearchSpace, SubnetConfig, net_forms, subnet_cost
from quantsearch.supernet.sample import form_label, sample_configs


def _spec(out: Path, **extra) -> JobSpec:
    return JobSpec.model_validate({
        "name": "tiny-search", "output_dir": str(out), "device": "cpu",
        "data": {"name": "synthetic", "val_size": 64, "train_limit": 256, "test_limit": 128},
        "training": {"epochs": 1, "batch_size": 64},
        "supernet": {"epochs": 1, "batch_size": 64, "train_images": 128, "calib_images": 64, "bn_images": 64,
                     "table_bits": [8]},
        "sample": {"subnets": 12, "chunk": 5, "bn_images": 64},
        "predictor": {"epochs": 50},
        "search": {"budget": {"bitops": "W4A4"}, "population": 8, "generations": 3, "finalists": 2,
                   "forms": "first"}, **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny FP32 model and supernet on synthetic data (trained once for the module)."""
    from quantsearch.supernet import train_supernet_local
    from quantsearch.train import train_fp32

    out = tmp_path_factory.mktemp("search")
    spec = _spec(out)
    data = prepare_data(spec.data)
    train_fp32(spec, data, out / "fp32", progress=False)
    train_supernet_local(spec, data, out / "supernet", progress=False)
    return out, data


def _space(layers=6):
    names = tuple(f"l{i}" for i in range(layers))
    return SearchSpace(names, get_profile("generic"), (("l0", 8), (names[-1], 8)))


def test_sample_configs_stratified_over_forms_and_bits():
    space = _space()
    cfgs = sample_configs(space, 64, seed=3)
    assert len(set(cfgs)) == 64
    assert all(space.contains(c) for c in cfgs)
    labels = [form_label(c, space) for c in cfgs]
    assert set(labels) == {f.label() for f in net_forms(space)}  # every form, round robin
    assert labels[:8] == [f.label() for f in net_forms(space)]
    free = [np.mean([c[n].weight.bits + c[n].activation.bits for n in space.layer_names[1:-1]]) / 2 for c in cfgs]
    # the strata reach both ends of the range, in order within each form
    assert min(free) < 3.5
    assert max(free) > 6.5
    per_form = [free[k] for k in range(0, 64, 8)]
    assert np.corrcoef(per_form, range(len(per_form)))[0, 1] > 0.8
    assert sample_configs(space, 64, seed=3) == cfgs  # seeded
    fresh = sample_configs(space, 10, seed=3, exclude=set(cfgs[:10]))
    assert not set(fresh) & set(cfgs[:10])
    assert {form_label(c, space) for c in sample_configs(space, 8, 0, forms="first")} == {"pc-sym/sym"}


def test_sample_job_writes_the_table_and_caches(trained):
    from quantsearch.supernet.sample_job import sample_job

    out, data = trained
    spec = _spec(out)
    seen = []
    res = sample_job(spec, data, out / "sample", on_chunk=lambda i, rows: seen.append((i, len(rows))))
    assert res.new == 12
    assert seen == [(0, 5), (1, 5), (2, 2)]
    rows = read_rows(out / "sample" / "measured.parquet")
    assert len(rows) == 12
    for r in rows:
        cfg = SubnetConfig.from_json(r["config"])
        assert 0 <= r["val_acc"] <= 1
        assert r["avg_bits"] == pytest.approx(sum(cfg.avg_bits()) / 2)
        assert r["val_images"] == 64
    assert SearchSpace.from_dict(json.loads((out / "sample" / "space.json").read_text())).layer_names
    drawn = sample_configs(SearchSpace.from_dict(json.loads((out / "sample" / "space.json").read_text())), 12, 0)
    assert [SubnetConfig.from_json(r["config"]) for r in rows] == drawn  # the draw's order, whatever finished first
    again = sample_job(spec, data, out / "sample")  # the table is the cache: nothing new to measure
    assert again.new == 0
    assert [r["config"] for r in again.rows] == [r["config"] for r in rows]


def test_sample_job_killed_after_a_chunk_resumes_to_the_same_table(trained, tmp_path):
    from quantsearch.supernet.sample_job import sample_job

    out, data = trained
    spec = _spec(out, sample={"subnets": 8, "chunk": 3, "bn_images": 64, "seed": 5})

    def die(i, rows):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_job(spec, data, tmp_path / "killed", on_chunk=die)
    assert len(read_rows(tmp_path / "killed" / "measured.parquet")) == 6  # both finished chunks were kept
    resumed = sample_job(spec, data, tmp_path / "killed")
    assert resumed.new == 2
    whole = sample_job(spec, data, tmp_path / "whole")
    assert [r["config"] for r in resumed.rows] == [r["config"] for r in whole.rows]
    assert [r["val_acc"] for r in resumed.rows] == pytest.approx([r["val_acc"] for r in whole.rows])


def test_search_job_measured_fitness_budget_and_best(trained):
    from quantsearch.search.job import search_job
    from quantsearch.supernet.sample_job import load_context

    out, data = trained
    spec = _spec(out, search={"budget": {"bitops": "W4A4"}, "fitness": "measured", "population": 6,
                              "generations": 2, "finalists": 2, "forms": "first"})
    res = search_job(spec, data, out / "search-measured")
    ctx = load_context(out / "supernet" / "supernet.pt", data, 64, None, 0)
    limit = subnet_cost(ctx.costs, ctx.space.uniform(4, 4)).bitops
    best = SubnetConfig.load(out / "search-measured" / "best.json")  # what `dqss --subnet` reads
    assert subnet_cost(ctx.costs, best).bitops <= limit
    meta = json.loads((out / "search-measured" / "best.json").read_text())
    assert meta["measured_val_acc"] == max(r["val_acc"] for r in res.finalists)  # picked on val
    assert 0 <= meta["measured_test_acc"] <= 1
    assert {r["label"].split()[0] for r in res.uniform} == {f"W{b}A{b}" for b in range(2, 9)}
    assert [r["within_budget"] for r in sorted(res.uniform, key=lambda r: r["bitops"])] == [True] * 3 + [False] * 4
    front = read_rows(out / "search-measured" / "front.parquet")
    assert any(r["on_front"] for r in front)
    assert sum(r["measured_test_acc"] is not None for r in front) == len(res.finalists)
    assert (out / "search-measured" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # measured fitness goes through the sampling table: every config the search measured is cached there
    cached = {SubnetConfig.from_json(r["config"]) for r in read_rows(out / "sample" / "measured.parquet")}
    assert {p.config for p in res.result.evaluated} <= cached


def test_search_job_errors_name_the_fix(trained):
    from quantsearch.search.job import resolve_budget, search_job, search_space
    from quantsearch.supernet.sample_job import load_context

    out, data = trained
    with pytest.raises(ConfigError, match="needs a budget"):
        search_job(_spec(out, search={"population": 6}), data, out / "nobudget")
    assert not (out / "nobudget").exists()
    ctx = load_context(out / "supernet" / "supernet.pt", data, 64, None, 0)
    spec = _spec(out).search
    resolved = resolve_budget(spec, ctx.space, ctx.costs)
    assert resolved.budget.bitops == subnet_cost(ctx.costs, ctx.space.uniform(4, 4)).bitops
    with pytest.raises(ConfigError, match="smallest reachable"):
        search_job(_spec(out, search={"budget": {"bitops": 10.0}, "population": 6}), data, out / "impossible")
    assert search_space(ctx, "tensorrt-int8").profile.name == "tensorrt-int8"  # within the generic supernet


def test_pipeline_sample_predictor_search_and_cli_errors(trained, capsys, tmp_path):
    import yaml
    from quantsearch.cli import main

    out, _ = trained
    job = tmp_path / "job.yaml"
    raw = _spec(out).model_dump(exclude_unset=True)
    job.write_text(yaml.safe_dump(raw))
    assert main(["sample", str(job), "--quiet"]) == 0
    assert main(["predictor", "fit", str(job), "--quiet"]) == 0
    report = json.loads((out / "predictor" / "report.json").read_text())
    assert set(report["compare"]) == {"mlp", "gbr"}
    assert main(["search", str(job), "--budget-bitops", "W3A3", "--generations", "2", "--quiet"]) == 0
    capsys.readouterr()
    stages = [r["stage"] for r in json.loads((out / "results.json").read_text())]
    assert any(s.startswith("searched mixed (predictor") for s in stages)
    assert sum(s.startswith("supernet uniform W") for s in stages) == 7
    best = json.loads((out / "search" / "best.json").read_text())
    assert best["budget"]["bitops"] > 0
    # composed with DQSS: the FP32 model searched per layer at the best subnet's bits
    dq = ["--set", "dqss.iters=5", "--set", "dqss.easyquant_steps=5", "--set", "dqss.target.calib_images=64"]
    assert main(["search", str(job), "--budget-bitops", "W3A3", "--generations", "2", "--dqss", "--quiet", *dq]) == 0
    stages = [r["stage"] for r in json.loads((out / "results.json").read_text())]
    assert stages[-1].startswith("searched mixed + DQSS-PTQ")
    strategy = json.loads((out / "dqss-best" / "strategy.json").read_text())
    assert strategy["layers"]  # one choice per layer at best.json's bits
    # export: the job's searched subnet (source auto), checked in onnxruntime on the whole test split, registered
    assert main(["export", "--job", str(job), "--quiet"]) == 0
    capsys.readouterr()
    result = json.loads((out / "export" / "model.export.json").read_text())
    assert result["samples"] == 128
    assert result["source"].startswith("supernet")
    assert abs(result["ort_top1"] - result["torch_top1"]) <= 0.1
    # the exported subnet is the one the search measured (same BN recalibration): same test top-1 within a
    # rounding of its zero points
    best = json.loads((out / "search" / "best.json").read_text())
    assert abs(result["torch_top1"] - 100 * best["measured_test_acc"]) <= 100 / 128 + 1e-9
    card = json.loads((out / "export" / "model.card.json").read_text())
    assert card["provenance"]["job_spec"]["name"] == "tiny-search"  # where the model came from
    assert card["provenance"]["mlflow"]["run_id"]
    assert "## Provenance" in (out / "export" / "model.card.md").read_text()
    assert SubnetConfig.from_dict(card["config"]) == SubnetConfig.load(out / "search" / "best.json")
    import mlflow
    import onnx

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    try:
        versions = mlflow.MlflowClient().search_model_versions("name='tiny-search'")
        assert [int(v.version) for v in versions] == [1]
        registered = mlflow.onnx.load_model("models:/tiny-search/1")  # what a deployment pulls
    finally:
        mlflow.set_tracking_uri(None)
    assert registered.graph == onnx.load(str(out / "export" / "model.onnx")).graph
    # the DQSS strategy on the best subnet's bits, exported on its own (a second name, version 1)
    dq_onnx = tmp_path / "dq" / "searched-dqss.onnx"
    uri = f"sqlite:///{tmp_path / 'export.db'}"
    assert main(["export", "--strategy", str(out / "dqss-best" / "strategy.json"), "--out", str(dq_onnx),
                 "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "registered model 'searched-dqss' version 1" in printed
    assert dq_onnx.is_file()
    assert (tmp_path / "dq" / "searched-dqss.card.md").is_file()
    # errors: one line, exit 2, nothing written
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / "none")}))
    for argv, needle in ((["sample", str(empty)], "needs a trained supernet"),
                         (["predictor", "fit", str(empty)], "needs measured subnets"),
                         (["search", str(job), "--budget-bitops", "W9A9"], "bits must be an integer in 2..8"),
                         (["search", str(job), "--profile", "nope", "--budget-bitops", "W3A3"], "unknown backend"),
                         (["export", "--checkpoint", str(out / "fp32" / "model.pt"), "--out",
                           str(tmp_path / "none" / "m.onnx")], "FP32 checkpoint with no quantization"),
                         (["export", "--checkpoint", str(out / "supernet" / "supernet.pt"), "--out",
                           str(tmp_path / "none" / "m.onnx")], "is a supernet: pass --subnet"),
                         (["export", "--checkpoint", str(out / "supernet" / "supernet.pt"), "--subnet", "W9A9",
                           "--out", str(tmp_path / "none" / "m.onnx")], "bits"),
                         (["export", "--job", str(empty)], "does not exist: run the search stage first"),
                         (["export", "--checkpoint", str(out / "supernet" / "supernet.pt"), "--subnet", "W4A4",
                           "--out", str(tmp_path / "none" / "m.txt")], "must name an .onnx file")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err, err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_one_archive_per_search_question():
    from quantsearch.config import SearchSpec
    from quantsearch.search.job import archive_name

    a = SearchSpec.model_validate({"budget": {"bitops": "W3A3"}, "generations": 5})
    assert archive_name(a, 0) == archive_name(a.model_copy(update={"generations": 50}), 0)  # more: continues
    b = SearchSpec.model_validate({"budget": {"bitops": "W2A2"}})
    assert archive_name(a, 0) != archive_name(b, 0)  # a new budget starts afresh
    assert archive_name(a, 0) != archive_name(a, 1)


def test_sample_table_keeps_the_draws_order_when_chunks_finish_out_of_order(trained, tmp_path):
    from quantsearch.supernet.sample_job import load_context, sample_job

    out, data = trained
    spec = _spec(out, sample={"subnets": 6, "chunk": 2, "bn_images": 64, "seed": 7})
    ctx = load_context(out / "supernet" / "supernet.pt", data, 64, None, 7)
    res = sample_job(spec, data, tmp_path, run_chunks=lambda chunks: (ctx.measure(c) for c in reversed(chunks)))
    assert [SubnetConfig.from_json(r["config"]) for r in res.rows] == sample_configs(ctx.space, 6, 7)
