import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from quantsearch.config import PredictorSpec
from quantsearch.errors import CheckpointError, ConfigError
from quantsearch.predictor import (
    GBRPredictor,
    MLPPredictor,
    Predictor,
    bitops_bands,
    fit_predictor,
    kendall_tau,
    min_subnets,
    rank_scores,
    rmse,
    scatter_png,
    score_heldout,
    spearman_rho,
    split_by_subnet,
)
from quantsearch.quant import get_profile
from quantsearch.quant.forms import LayerConfig, QuantForm
from quantsearch.space import SearchSpace, SubnetConfig, net_forms
from scipy import stats

LAYERS = tuple(f"l{i}" for i in range(6))
SPACE = SearchSpace(LAYERS, get_profile("generic"), (("l0", 8), ("l5", 8)))
SENSITIVITY = (0.0, 0.03, 0.05, 0.02, 0.04, 0.0)  # the ground truth: some layers hurt more at low bits
MACS = (100, 400, 400, 200, 200, 10)
# small and quick; the spec's defaults (200 wide, 300 epochs) are the real-run setting
SMALL = {"hidden": 64, "layers": 2, "epochs": 150}


def _table(n=240, seed=0, noise=0.005):
    """Rows like the sample stage writes: per-layer bits and a network-wide form drawn at random, accuracy a
    known function of them plus noise."""
    rng = np.random.default_rng(seed)
    forms = net_forms(SPACE)
    pins = dict(SPACE.pinned)
    rows = []
    for _ in range(n):
        f = forms[int(rng.integers(len(forms)))]
        acc = 0.92 - 0.02 * (not f.w_symmetric) - 0.01 * (f.granularity == "per_tensor")
        layers, bitops = [], 0.0
        for name, s, macs in zip(LAYERS, SENSITIVITY, MACS, strict=True):
            wb = pins.get(name) or int(rng.integers(2, 9))
            ab = pins.get(name) or int(rng.integers(2, 9))
            layers.append((name, LayerConfig(QuantForm(wb, f.granularity, f.w_symmetric),
                                             QuantForm(ab, "per_tensor", f.a_symmetric))))
            acc -= s * (2.0 ** (2 - wb) + 2.0 ** (2 - ab))
            bitops += macs * wb * ab
        cfg = SubnetConfig(tuple(layers))
        w, a = cfg.avg_bits()
        rows.append({"config": cfg.to_json(), "form": f.label(), "avg_bits": (w + a) / 2, "bitops": bitops,
                     "weight_bytes": 1.0, "val_acc": float(np.clip(acc + rng.normal(0, noise), 0, 1)),
                     "test_acc": None})
    return rows


@pytest.fixture(scope="module")
def rows():
    return _table()


@pytest.fixture(scope="module")
def fitted(rows):
    return {m: fit_predictor(rows, PredictorSpec(model=m, **SMALL), SPACE, seed=0) for m in ("mlp", "gbr")}


# --- metrics: oracles ----------------------------------------------------------------------------------------

def test_rank_metrics_oracles():
    y = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    assert kendall_tau(y, y) == pytest.approx(1.0)
    assert kendall_tau(y, -y) == pytest.approx(-1.0)
    assert spearman_rho(y, 2 * y + 1) == pytest.approx(1.0)
    assert spearman_rho(y, -y) == pytest.approx(-1.0)
    assert rmse(y, y + 0.1) == pytest.approx(0.1)
    other = np.array([0.3, 0.1, 0.5, 0.2, 0.4])
    assert kendall_tau(y, other) == pytest.approx(stats.kendalltau(y, other).statistic)
    assert spearman_rho(y, other) == pytest.approx(stats.spearmanr(y, other).statistic)
    # undefined: one point, or a constant side (scipy would warn and give NaN)
    assert math.isnan(kendall_tau(y[:1], y[:1]))
    assert math.isnan(spearman_rho(y, np.ones_like(y)))


def test_banded_scores_equal_scipy_on_each_band():
    rng = np.random.default_rng(0)
    n, bands = 200, 4
    bitops = rng.uniform(1, 100, n)
    avg_bits = np.sqrt(bitops) + rng.normal(0, 1, n)
    measured = 0.5 + 0.004 * bitops + rng.normal(0, 0.05, n)
    predicted = measured + rng.normal(0, 0.05, n)
    idx = bitops_bands(bitops, bands)
    assert np.bincount(idx).tolist() == [50, 50, 50, 50]  # quantile bands of distinct values: equal counts
    overall, per_band = score_heldout(measured, predicted, bitops, avg_bits, bands)
    assert overall.tau == pytest.approx(stats.kendalltau(measured, predicted).statistic)
    assert overall.tau_bitops == pytest.approx(stats.kendalltau(measured, bitops).statistic)
    assert len(per_band) == bands
    edges = np.quantile(bitops, [0.25, 0.5, 0.75])
    for k, band in enumerate(per_band):
        sel = (bitops >= ([-np.inf, *edges])[k]) & (bitops < ([*edges, np.inf])[k])
        assert band.n == sel.sum()
        assert band.tau == pytest.approx(stats.kendalltau(measured[sel], predicted[sel]).statistic)
        assert band.rho == pytest.approx(stats.spearmanr(measured[sel], predicted[sel]).statistic)
        assert band.rmse == pytest.approx(np.sqrt(np.mean((measured[sel] - predicted[sel]) ** 2)))
        assert band.tau_avg_bits == pytest.approx(stats.kendalltau(measured[sel], avg_bits[sel]).statistic)
        assert band.rho_bitops == pytest.approx(stats.spearmanr(measured[sel], bitops[sel]).statistic)
        assert (band.bitops_lo, band.bitops_hi) == (bitops[sel].min(), bitops[sel].max())
    # within a band the cost proxy ranks worse than over the whole cost range: why the bands are reported
    assert np.mean([b.tau_bitops for b in per_band]) < overall.tau_bitops
    # tied costs share a band; empty bands are dropped
    tied = np.array([1.0] * 6 + [2.0] * 2)
    assert set(bitops_bands(tied, 4).tolist()) <= {0, 1, 2, 3}
    _, few = score_heldout(np.arange(8.0), np.arange(8.0), tied, tied, 4)
    assert sum(b.n for b in few) == 8
    assert len(few) == 2


# --- fitting -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["mlp", "gbr"])
def test_predictors_rank_heldout_subnets_better_than_shuffled_labels(rows, fitted, model):
    r = fitted[model].report
    assert r.n_heldout == round(0.25 * len(rows))
    assert r.n_train + r.n_heldout == len(rows)
    assert r.overall.tau > 0.7, r.to_dict()
    assert r.overall.rho > 0.85
    assert r.overall.rmse < 0.03
    # the ground truth weighs layers unequally and depends on form: mean bits alone rank worse
    assert r.overall.tau > r.overall.tau_avg_bits + 0.05
    # control: the same pipeline on shuffled accuracies learns nothing, so the test above can fail
    shuffled = [dict(row) for row in rows]
    perm = np.random.default_rng(1).permutation(len(rows))
    for row, j in zip(shuffled, perm, strict=True):
        row["val_acc"] = rows[j]["val_acc"]
    control = fit_predictor(shuffled, PredictorSpec(model=model, **SMALL), SPACE, seed=0).report
    assert abs(control.overall.tau) < 0.3
    assert r.overall.tau > control.overall.tau + 0.5


def test_report_and_result_shapes(fitted):
    res = fitted["mlp"]
    d = res.report.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["model"] == "mlp"
    assert d["features"] == 8 + 4 * 14 + 6 * 6
    assert len(d["bands"]) == 4
    assert {"tau", "rho", "rmse", "tau_avg_bits", "tau_bitops", "rho_avg_bits", "rho_bitops"} <= set(d["overall"])
    assert d["band_tau"] == pytest.approx(np.mean([b["tau"] for b in d["bands"]]))
    assert len(res.heldout) == len(res.measured) == len(res.predicted) == res.report.n_heldout
    np.testing.assert_allclose(res.predictor.predict(list(res.heldout)), res.predicted)
    png = scatter_png(res)
    assert png.startswith(b"\x89PNG")


def test_same_seed_same_predictions_other_seed_other_split(rows):
    spec = PredictorSpec(model="mlp", hidden=32, layers=2, epochs=60)
    state = torch.random.get_rng_state()
    a = fit_predictor(rows, spec, SPACE, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # fitting leaves the caller's generator alone
    torch.manual_seed(12345)  # and does not depend on it: the seed argument alone decides
    b = fit_predictor(rows, spec, SPACE, seed=3)
    np.testing.assert_array_equal(a.predicted, b.predicted)
    assert a.heldout == b.heldout
    c = fit_predictor(rows, spec, SPACE, seed=4)
    assert c.heldout != a.heldout
    # spec.seed, when set, wins over the job seed
    d = fit_predictor(rows, spec.model_copy(update={"seed": 3}), SPACE, seed=99)
    np.testing.assert_array_equal(a.predicted, d.predicted)
    g1 = fit_predictor(rows, PredictorSpec(model="gbr"), SPACE, seed=5)
    g2 = fit_predictor(rows, PredictorSpec(model="gbr"), SPACE, seed=5)
    np.testing.assert_array_equal(g1.predicted, g2.predicted)


@pytest.mark.parametrize("model", ["mlp", "gbr"])
def test_save_load_round_trip_predicts_the_same(fitted, tmp_path, model):
    pred = fitted[model].predictor
    pred.save(tmp_path / model)
    meta = json.loads((tmp_path / model / "meta.json").read_text())
    assert meta["kind"] == model
    assert meta["encoder"] == pred.encoder.to_dict()
    again = Predictor.load(tmp_path / model)
    assert again.encoder == pred.encoder
    assert again.kind == model
    configs = [SPACE.random(np.random.default_rng(s)) for s in range(20)]
    np.testing.assert_array_equal(again.predict(configs), pred.predict(configs))
    assert isinstance(again.model, MLPPredictor if model == "mlp" else GBRPredictor)


def test_load_errors_name_the_fix(fitted, tmp_path):
    with pytest.raises(CheckpointError, match=r"meta\.json missing"):
        Predictor.load(tmp_path / "nothing")
    fitted["mlp"].predictor.save(tmp_path / "p")
    (tmp_path / "p" / "mlp.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="does not load") as info:
        Predictor.load(tmp_path / "p")
    assert "\n" not in str(info.value)
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    (tmp_path / "p" / "meta.json").write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(CheckpointError, match="format 7"):
        Predictor.load(tmp_path / "p")
    fitted["gbr"].predictor.save(tmp_path / "g")
    (tmp_path / "g" / "gbr.skops").write_bytes(b"PK garbage")
    with pytest.raises(CheckpointError, match="does not load"):
        Predictor.load(tmp_path / "g")


def test_predict_rejects_configs_of_another_space(fitted):
    other = SearchSpace(("a", "b"), get_profile("generic"), ())
    with pytest.raises(ConfigError, match="does not match"):
        fitted["gbr"].predictor.predict([other.max_config()])
    assert fitted["gbr"].predictor.predict([]).shape == (0,)


# --- data ----------------------------------------------------------------------------------------------------

def test_pyarrow_table_gives_the_same_fit_as_row_dicts(rows):
    spec = PredictorSpec(model="gbr")
    table = pa.Table.from_pylist(rows)
    a = fit_predictor(table, spec, SPACE, seed=0)
    b = fit_predictor(rows, spec, SPACE, seed=0)
    np.testing.assert_array_equal(a.predicted, b.predicted)


def test_split_keeps_repeated_subnets_on_one_side():
    configs = [SPACE.random(np.random.default_rng(s)) for s in range(30)]
    rows = configs + configs[:10] + configs[:5]  # re-measured subnets appear two or three times
    train, held = split_by_subnet(rows, 0.25, seed=0)
    assert sorted([*train, *held]) == list(range(len(rows)))
    assert not {rows[i] for i in train} & {rows[i] for i in held}
    assert len({rows[i] for i in held}) == round(0.25 * 30)
    _, h2 = split_by_subnet(rows, 0.25, seed=0)
    np.testing.assert_array_equal(held, h2)


def test_too_few_subnets_and_bad_tables_raise_one_line(rows):
    spec = PredictorSpec(model="gbr")
    need = min_subnets(0.25)
    assert need == 11
    with pytest.raises(ConfigError, match=f"has 10 distinct subnets .*needs at least {need}"):
        fit_predictor(rows[:10], spec, SPACE, seed=0)
    fit_predictor(rows[:need], spec, SPACE, seed=0)  # the stated minimum is enough
    with pytest.raises(ConfigError, match="lacks column 'val_acc'"):
        fit_predictor([{k: v for k, v in r.items() if k != "val_acc"} for r in rows], spec, SPACE, seed=0)
    with pytest.raises(ConfigError, match="lacks column 'bitops'"):
        fit_predictor(pa.Table.from_pylist(rows).drop(["bitops"]), spec, SPACE, seed=0)
    with pytest.raises(ConfigError, match=r"fraction 0\.\.1"):
        fit_predictor([{**r, "val_acc": 100 * r["val_acc"]} for r in rows], spec, SPACE, seed=0)
    with pytest.raises(ConfigError, match="row 2: 'config' is not a subnet config"):
        fit_predictor([*rows[:2], {**rows[2], "config": "W4A4"}, *rows[3:]], spec, SPACE, seed=0)
    with pytest.raises(ConfigError, match="does not match the predictor's search space") as info:
        fit_predictor(rows, spec, SearchSpace(("a", "b"), get_profile("generic"), ()), seed=0)
    assert "\n" not in str(info.value)


def test_rank_scores_of_a_single_band_point_are_nan_not_errors():
    s = rank_scores(np.array([0.5]), np.array([0.4]), np.array([10.0]), np.array([4.0]))
    assert s.n == 1
    assert math.isnan(s.tau)
    assert s.rmse == pytest.approx(0.1)
