"""Warm starts: the best finished configurations of earlier studies run first; trials of the same search are given to
TPE as finished trials (never ASHA-stopped ones); other searches give configurations only; bad sources are one line."""

import optuna
import pytest

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.storage import SPEC_FILE
from ptplus_tune.service.study import build_searcher
from ptplus_tune.service.warm_start import load_warm_start, search_sha256
from ptplus_tune.spaces import parse_space

SPACE = {"name": "s", "metric": "eval_accuracy", "mode": "max", "num_samples": 4, "max_concurrent": 1,
         "scheduler": {"grace_period": 10, "reduction_factor": 3},
         "trial": {"max_steps": 60, "max_length": 64},
         "parameters": {"feature_map": {"type": "categorical", "choices": ["elu", "gelu"]},
                        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
# (feature_map, learning_rate, value, reports): 3 reports = rungs 10 and 30 and the end; 1 = ASHA stopped it at 10
EARLIER = [("elu", 1e-3, 0.80, 3), ("gelu", 3e-3, 0.90, 3), ("elu", 1e-4, 0.95, 1), ("gelu", 1e-4, 0.50, 3),
           ("elu", 3e-4, 0.85, 3)]


def _space(**changes):
    return parse_space({**SPACE, **changes}, source="test")


def _earlier_study(storage_path, name, spec, rows=EARLIER):
    folder = storage_path / name
    folder.mkdir(parents=True)
    (folder / SPEC_FILE).write_text(spec.to_yaml())
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}", direction="maximize")
    distributions = {"feature_map": optuna.distributions.CategoricalDistribution(["elu", "gelu"]),
                     "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for fm, lr, value, reports in rows:
        study.add_trial(optuna.trial.create_trial(
            params={"feature_map": fm, "learning_rate": lr}, distributions=distributions, value=value,
            intermediate_values={i + 1: value for i in range(reports)}))


def test_the_best_finished_configurations_run_first_and_tpe_gets_the_finished_trials(tmp_path):
    spec = _space()
    _earlier_study(tmp_path, "a", _space(seed=7, num_samples=9))  # another seed and budget: the same search
    warm = load_warm_start(["a"], str(tmp_path), spec)
    assert warm.points == [{"feature_map": "gelu", "learning_rate": 3e-3},  # the ASHA-stopped 0.95 is not finished
                           {"feature_map": "elu", "learning_rate": 3e-4}, {"feature_map": "elu", "learning_rate": 1e-3}]
    assert sorted(t.value for t in warm.trials) == [0.5, 0.8, 0.85, 0.9] and warm.added_from == ["a"]
    assert "3 configuration(s) run first; 4 finished trial(s) of a given to TPE" in warm.describe()

    searcher = build_searcher(spec, "new", tmp_path / "new", warm_start=warm)
    first = searcher.suggest("t1")
    assert {k: first[k] for k in ("feature_map", "learning_rate")} == warm.points[0]
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'optuna.db'}")
    given = [t for t in study.trials if t.user_attrs.get("ptplus.warm_start")]
    assert sorted(t.value for t in given) == [0.5, 0.8, 0.85, 0.9]


def test_another_search_gives_configurations_only_and_duplicates_run_once(tmp_path):
    spec = _space()
    other = _space(trial={"max_steps": 60, "max_length": 96})  # other data settings: values not comparable
    assert search_sha256(other) != search_sha256(spec) == search_sha256(_space(seed=3))
    _earlier_study(tmp_path, "a", other)
    _earlier_study(tmp_path, "b", other)
    warm = load_warm_start(["a", "b"], str(tmp_path), spec)
    assert len(warm.points) == 3 and warm.trials == []
    assert "no finished trials given to TPE" in warm.describe()


@pytest.mark.parametrize("make, message", [
    (None, "--warm-start a: there is no study 'a' under"),
    (lambda p: _earlier_study(p, "a", _space(parameters={"prefix_length": {"type": "int", "low": 2, "high": 8}})),
     "--warm-start a: its parameters (prefix_length) are not this space's (feature_map, learning_rate)"),
    (lambda p: _earlier_study(p, "a", _space(metric="eval_loss", mode="min")),
     "--warm-start a: it optimised eval_loss (min), this space eval_accuracy (max)"),
    (lambda p: _earlier_study(p, "a", _space(objectives=[{"metric": "eval_accuracy"}, {"metric": "peak_mem_mb"}])),
     "--warm-start a: it optimised eval_accuracy (max), peak_mem_mb (min), this space eval_accuracy (max)"),
    (lambda p: _earlier_study(p, "a", _space(), rows=[]), "--warm-start a: no finished trial to start from"),
])
def test_bad_warm_starts_are_one_line(tmp_path, make, message):
    if make:
        make(tmp_path)
    with pytest.raises(PTPlusError) as raised:
        load_warm_start(["a"], str(tmp_path), _space())
    assert str(raised.value).startswith(message), raised.value


def test_a_pareto_study_warm_starts_from_the_front_of_an_earlier_one(tmp_path):
    objectives = [{"metric": "eval_accuracy", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}]
    spec = _space(objectives=objectives)
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / SPEC_FILE).write_text(_space(objectives=objectives, seed=5).to_yaml())
    study = optuna.create_study(study_name="a", storage=f"sqlite:///{folder / 'optuna.db'}",
                                directions=["maximize", "minimize"])
    distributions = {"feature_map": optuna.distributions.CategoricalDistribution(["elu", "gelu"]),
                     "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for fm, lr, values in [("elu", 1e-3, [0.9, 400]), ("gelu", 1e-3, [0.8, 100]), ("elu", 3e-3, [0.7, 300]),
                           ("gelu", 3e-3, [0.85, 200])]:
        study.add_trial(optuna.trial.create_trial(params={"feature_map": fm, "learning_rate": lr},
                                                  distributions=distributions, values=values))
    warm = load_warm_start(["a"], str(tmp_path), spec)
    # the front is (0.9, 400), (0.8, 100), (0.85, 200): its ends first, then the middle; (0.7, 300) is dominated
    assert warm.points == [{"feature_map": "elu", "learning_rate": 1e-3},
                           {"feature_map": "gelu", "learning_rate": 1e-3},
                           {"feature_map": "gelu", "learning_rate": 3e-3}]
    assert len(warm.trials) == 4
    build_searcher(spec, "new", tmp_path / "new", warm_start=warm)
    seeded = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'optuna.db'}")
    given = [t.values for t in seeded.trials if t.user_attrs.get("ptplus.warm_start")]
    assert sorted(given) == sorted([[0.9, 400], [0.8, 100], [0.7, 300], [0.85, 200]])
    assert len(seeded.directions) == 2
