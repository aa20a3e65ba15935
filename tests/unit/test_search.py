"""The NSGA-II search on a hand-built space with synthetic layer costs and a synthetic fitness whose optimum under a
budget is known: one cheap layer matters far more than the expensive ones."""

import itertools
import json

import numpy as np
import pyarrow as pa
import pytest
from quantsearch.config import SearchSpec
from quantsearch.errors import ConfigError
from quantsearch.quant import get_profile
from quantsearch.search import SearchResult, avg_bits, non_dominated, pareto_png, search
from quantsearch.space import LayerCost, SearchSpace, subnet_cost
from quantsearch.space.genome import Genome

NAMES = ("conv0", "l1", "l2", "l3", "l4", "fc")
PINS = (("conv0", 8), ("fc", 8))
MACS = {"conv0": 1000, "l1": 400, "l2": 4000, "l3": 4000, "l4": 8000, "fc": 100}
PARAMS = {"conv0": 10, "l1": 40, "l2": 400, "l3": 400, "l4": 800, "fc": 100}
COSTS = [LayerCost(n, MACS[n], PARAMS[n], 100, 100) for n in NAMES]
# l1 is cheap and matters most; l4 is the most expensive and matters least
IMPORTANCE = {"conv0": 0.1, "l1": 5.0, "l2": 1.0, "l3": 0.5, "l4": 0.2, "fc": 0.1}


def _quality(bits):
    return 1.0 - 2.0 ** -np.asarray(bits, dtype=float)


def fitness(configs):
    """Accuracy fraction: importance-weighted bit quality, slightly better with per-channel symmetric weights."""
    out = []
    for c in configs:
        s = sum(IMPORTANCE[n] * (_quality(c[n].weight.bits) + _quality(c[n].activation.bits)) for n in NAMES)
        form = 1.0 if c["l1"].weight.symmetric else 0.995
        out.append(float(s / (2 * sum(IMPORTANCE.values())) * form))
    return out


class Recorder:
    """The fitness, recording every batch it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, configs):
        self.calls.append(list(configs))
        return fitness(configs)

    def configs(self):
        return [c for batch in self.calls for c in batch]


def _space(profile="generic"):
    return SearchSpace(NAMES, get_profile(profile), PINS)


def _w4a4_bitops(space):
    return subnet_cost(COSTS, space.uniform(4, 4)).bitops


def _spec(**kw):
    return SearchSpec(**{"population": 16, "generations": 8, **kw})


@pytest.fixture(scope="module")
def generic_run():
    space = _space()
    spec = _spec(budget={"bitops": _w4a4_bitops(space)}, population=24, generations=15)
    rec = Recorder()
    return space, spec, rec, search(space, COSTS, rec, spec, seed=0)


def test_search_meets_the_budget_and_beats_every_uniform_config_that_does(generic_run):
    _, spec, _, result = generic_run
    best = result.best()
    assert best.feasible
    assert best.bitops <= spec.budget.bitops
    fitting = [u for u in result.uniform if u.feasible]
    assert {u.label.split()[0] for u in fitting} == {"W2A2", "W3A3", "W4A4"}
    assert best.accuracy > max(u.accuracy for u in fitting) + 0.01
    assert best.config["l1"].weight.bits >= 6  # the cheap, important layer gets the bits
    assert best.config["l4"].weight.bits <= 4


def test_search_finds_the_brute_force_optimum_of_a_small_space():
    space = _space("low-bit-accelerator")  # bits 2/4/8, two forms: 2 * 9**4 configs, enumerable
    g = Genome.for_space(space)
    budget = 0.8 * _w4a4_bitops(space)
    best = 0.0
    for x in itertools.product(*[range(u + 1) for u in g.xu]):
        cfg = g.decode(np.array(x))
        if subnet_cost(COSTS, cfg).bitops <= budget:
            best = max(best, fitness([cfg])[0])
    result = search(space, COSTS, fitness, _spec(budget={"bitops": budget}, population=24, generations=30), seed=0)
    assert result.best().bitops <= budget
    assert result.best().accuracy == pytest.approx(best, abs=1e-12)
    assert result.n_evaluations < 0.05 * 2 * 9**4  # found after scoring under 5 % of the space


def test_front_is_non_dominated_and_every_member_meets_every_limit():
    space = _space()
    limits = {"bitops": 1.2 * _w4a4_bitops(space), "weight_bytes": 900.0, "avg_bits": 5.0}
    result = search(space, COSTS, fitness, _spec(budget=limits, objectives=["accuracy", "bitops", "weight_bytes"]),
                    seed=1)
    assert len(result.front) > 3
    for p in result.evaluated:
        assert p.feasible == (p.bitops <= limits["bitops"] and p.weight_bytes <= limits["weight_bytes"]
                              and p.avg_bits <= limits["avg_bits"])
        assert p.avg_bits == pytest.approx(avg_bits(p.config))
    for p in result.front:
        assert p.feasible
        for q in result.evaluated:
            if q.feasible:
                better_eq = q.accuracy >= p.accuracy and q.bitops <= p.bitops and q.weight_bytes <= p.weight_bytes
                strictly = q.accuracy > p.accuracy or q.bitops < p.bitops or q.weight_bytes < p.weight_bytes
                assert not (better_eq and strictly), (p, q)
    # and every feasible point off the front is dominated by a front member
    on = {p.config for p in result.front}
    obj = np.array([[-p.accuracy, p.bitops, p.weight_bytes] for p in result.evaluated if p.feasible])
    assert non_dominated(obj).sum() == len(on)
    assert [p.bitops for p in result.front] == sorted(p.bitops for p in result.front)


@pytest.mark.parametrize(("quantity", "limit", "smallest"), [
    ("bitops", 1e5, "1.36e+05"), ("weight_bytes", 100.0, "520"), ("avg_bits", 2.5, "4"),
])
def test_an_impossible_budget_names_the_smallest_reachable_value_before_any_evaluation(quantity, limit, smallest):
    space = _space()
    least = space.min_config()
    assert f"{subnet_cost(COSTS, least).bitops:.4g}" == "1.36e+05"
    assert f"{subnet_cost(COSTS, least).weight_bytes:.4g}" == "520"
    assert avg_bits(least) == 4.0  # 2 of 6 layers pinned at 8, the rest at 2
    rec = Recorder()
    with pytest.raises(ConfigError) as err:
        search(space, COSTS, rec, _spec(budget={quantity: limit}), seed=0)
    msg = str(err.value)
    assert f"budget {quantity}={limit:.4g} is below the smallest reachable {smallest} " in msg
    assert "every free layer at W2A2" in msg
    assert "raise it" in msg
    assert "\n" not in msg
    assert rec.calls == []


def test_fitness_is_called_once_per_generation_on_new_configs_only(generic_run):
    _, spec, rec, result = generic_run
    seen = rec.configs()
    assert len(seen) == len(set(seen)) == result.n_evaluations
    assert len(rec.calls) <= spec.generations
    assert [p.config for p in result.evaluated] == seen
    # generation 1 scores the population and every uniform config (the baselines), over budget or not
    assert len(result.uniform) == 7 * 8
    assert {p.generation for p in result.uniform} == {1}
    assert not all(u.feasible for u in result.uniform)


def test_the_same_seed_gives_the_same_result_and_another_seed_another():
    space = _space()
    spec = _spec(budget={"bitops": _w4a4_bitops(space)})
    a, b = (search(space, COSTS, fitness, spec, seed=5) for _ in range(2))
    assert a == b
    assert search(space, COSTS, fitness, spec, seed=6).evaluated != a.evaluated


class Stop(Exception):
    pass


def _stop_after(k):
    def progress(generation, stats):
        assert stats.generations == 8
        assert stats.n_evaluations > 0
        assert stats.front_size >= 1
        if generation == k:
            raise Stop

    return progress


@pytest.mark.parametrize(("k", "tight"), [(1, False), (3, False), (5, True)])
def test_an_interrupted_search_resumes_to_the_same_result_without_rescoring(tmp_path, k, tight):
    """The tight budget (just above the cheapest config, one form) leaves fewer feasible configs than the population
    holds, so over-budget individuals stay in it, with no rank or crowding: the archive must restore them too."""
    space = _space()
    least = subnet_cost(COSTS, space.min_config()).bitops
    spec = _spec(budget={"bitops": 1.005 * least}, forms="first") if tight else _spec(
        budget={"bitops": _w4a4_bitops(space)})
    whole = search(space, COSTS, fitness, spec, seed=2)
    archive = tmp_path / "search" / "archive.json"
    with pytest.raises(Stop):
        search(space, COSTS, fitness, spec, seed=2, archive_path=archive, progress=_stop_after(k))
    saved = json.loads(archive.read_text())
    assert saved["generation"] == k
    assert saved["seed"] == 2
    assert len(saved["fingerprint"]) == 64
    assert len(saved["population"]["genomes"]) <= spec.population
    assert (None in saved["population"]["rank"]) == tight
    archived = {Genome.for_space(space, spec.forms).decode(np.array(e["genome"])) for e in saved["evaluated"]}
    rec = Recorder()
    resumed = search(space, COSTS, rec, spec, seed=2, archive_path=archive)
    assert not set(rec.configs()) & archived
    assert len(rec.calls) <= spec.generations - k
    assert tight or rec.calls  # the tight budget may leave every offspring over budget: never scored
    assert resumed == whole
    assert json.loads(archive.read_text())["generation"] == spec.generations
    # resuming a finished search evaluates nothing and returns the same result
    again = Recorder()
    assert search(space, COSTS, again, spec, seed=2, archive_path=archive) == whole
    assert again.calls == []


def test_a_finished_archive_continues_when_more_generations_are_asked_for(tmp_path):
    space = _space()
    spec = _spec(budget={"bitops": _w4a4_bitops(space)}, generations=4)
    archive = tmp_path / "a.json"
    search(space, COSTS, fitness, spec, seed=3, archive_path=archive)
    longer = spec.model_copy(update={"generations": 7})
    assert search(space, COSTS, fitness, longer, seed=3, archive_path=archive) == search(
        space, COSTS, fitness, longer, seed=3)


def test_resume_under_other_settings_or_seed_or_from_a_bad_archive_is_refused(tmp_path):
    space = _space()
    spec = _spec(budget={"bitops": _w4a4_bitops(space)}, generations=2)
    archive = tmp_path / "a.json"
    search(space, COSTS, fitness, spec, seed=0, archive_path=archive)
    with pytest.raises(ConfigError, match=r"other settings \(budget, population differ\)"):
        search(space, COSTS, fitness, _spec(budget={"bitops": 1e6}, population=20), seed=0, archive_path=archive)
    with pytest.raises(ConfigError, match=r"other settings \(forms differ\)"):
        search(space, COSTS, fitness, spec.model_copy(update={"forms": "first"}), seed=0, archive_path=archive)
    with pytest.raises(ConfigError, match="written with seed 0, not 1"):
        search(space, COSTS, fitness, spec, seed=1, archive_path=archive)
    d = json.loads(archive.read_text())
    d["evaluated"][0]["accuracy"] = 0.5
    d["settings"]["population"] = 99
    archive.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="was edited"):
        search(space, COSTS, fitness, spec, seed=0, archive_path=archive)
    archive.write_text("{not json")
    with pytest.raises(ConfigError, match=r"unreadable.*delete it"):
        search(space, COSTS, fitness, spec, seed=0, archive_path=archive)


def test_bad_objectives_and_mismatched_costs_are_config_errors():
    space = _space()
    with pytest.raises(ConfigError, match="must include accuracy"):
        search(space, COSTS, fitness, _spec(objectives=["bitops", "weight_bytes"]), seed=0)
    with pytest.raises(ConfigError, match=r"missing \['fc'\]"):
        search(space, COSTS[:-1], fitness, _spec(), seed=0)


def test_a_space_with_one_config_ends_early():
    space = _space("tensorrt-int8")
    rec = Recorder()
    result = search(space, COSTS, rec, _spec(generations=5), seed=0)
    assert result.n_evaluations == 1
    assert result.best().label == "W8A8"
    assert len(rec.calls) == 1
    assert result.generations == 1


def test_weight_bytes_objective_without_a_budget():
    space = _space()
    result = search(space, COSTS, fitness, _spec(objectives=["accuracy", "weight_bytes"]), seed=0)
    assert all(p.feasible for p in result.evaluated)
    assert result.cost_axis() == "weight_bytes"
    front = sorted(result.front, key=lambda p: p.weight_bytes)
    accs = [p.accuracy for p in front]
    assert all(a < b or wa == wb for a, b, wa, wb in zip(accs, accs[1:], [p.weight_bytes for p in front],
                                                            [p.weight_bytes for p in front[1:]], strict=False))
    assert result.best().accuracy == max(p.accuracy for p in result.evaluated)


def test_finalists_rows_json_and_plot(generic_run):
    _, _, _, result = generic_run
    best = result.best()
    assert best in result.front
    assert best.accuracy == max(p.accuracy for p in result.evaluated if p.feasible)
    for k in (1, 3, 5):
        fin = result.finalists(k)
        assert len(fin) == k
        assert best in fin
        assert set(fin) <= set(result.front)
        assert [p.bitops for p in fin] == sorted(p.bitops for p in fin)
    five = result.finalists(5, spread=True)
    assert five[0].bitops < 0.5 * five[-1].bitops  # spread over the cost range, not bunched at the top
    assert best in five
    near = result.finalists(5)  # default: the best predicted, next to the budget
    others = [p.accuracy for p in result.front if p not in near]
    assert min(p.accuracy for p in near) >= max(others)
    assert sum(p.bitops for p in near) > sum(p.bitops for p in five)
    assert result.finalists(10**6) == result.front
    table = pa.Table.from_pylist(result.to_rows())
    assert table.num_rows == result.n_evaluations
    assert {"generation", "accuracy", "bitops", "weight_bytes", "avg_bits", "feasible", "on_front", "uniform",
            "config"} <= set(table.column_names)
    assert sum(table.column("on_front").to_pylist()) == len(result.front)
    assert SearchResult.from_json(result.to_json()) == result
    png = pareto_png(result, measured={p.config: p.accuracy - 0.01 for p in five})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000
