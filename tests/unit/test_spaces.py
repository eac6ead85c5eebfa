"""Search-space files: shipped spaces, the format, every validation error (named file + parameter), sampling."""

import contextlib

import optuna
import pytest
import yaml

from ptplus_tune.errors import PTPlusError
from ptplus_tune.spaces import define_by_run, load_space, parse_space, shipped_spaces
from tests.postgres import loopback_url, postgres_database


def test_shipped_spaces_load_and_round_trip():
    assert {"default", "quick", "compare", "full"} <= set(shipped_spaces())
    for name in shipped_spaces():
        spec = load_space(name)
        again = parse_space(yaml.safe_load(spec.to_yaml()), source="again")
        assert again.to_data() == spec.to_data() and again.sha256 == spec.sha256
    default = load_space("default")
    assert {p.name for p in default.parameters} >= {"prefix_length", "feature_map", "learning_rate"}
    # elu_plus_one stays at chance at every learning rate on the grid: only the `full` space keeps all six maps.
    assert set(default.parameter("feature_map").choices) == {"elu", "gelu", "relu", "identity", "mlp"}
    assert set(load_space("full").parameter("feature_map").choices) == {"elu", "elu_plus_one", "gelu", "relu",
                                                                         "identity", "mlp"}
    assert default.parameter("learning_rate").log
    # Two decisions per trial, evaluations only there and at the end, start-up trials sized to the budget.
    assert default.rungs == [10, 30] and default.trial_policy() == {"eval_steps": [10, 30], "dead_trial_step": 10}
    assert "eval_every" not in default.trial and default.n_startup_trials == 4


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(PTPlusError, match="unknown space 'nope'; shipped spaces: compare, default, full, generate, "
                                          "generate-quick, pareto, pareto-generate, quick"):
        load_space("nope")


def _write(tmp_path, parameters, **study):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"parameters": parameters, **study}))
    return str(path)


@pytest.mark.parametrize("parameters, message", [
    ({"learning_rate": {"type": "uniform", "low": 0.1, "high": 1}},
     "parameter 'learning_rate': unknown type 'uniform'"),
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.1}},
     "parameter 'learning_rate': low \\(0.1\\) must be < high"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale needs low > 0"),
    ({"feature_map": {"type": "categorical", "choices": ["elu", "tanh"]}},
     "unknown feature_map 'tanh'; choose from elu"),
    ({"feature_dim": {"type": "int", "low": 8, "high": 64, "when": {"feature_map": "mlp"}}},
     "parameter 'feature_dim': condition on 'feature_map', which is not a parameter"),
    ({"learning_rte": {"type": "float", "low": 0.1, "high": 1}}, "parameter 'learning_rte': not a trial setting"),
    ({"prefix_length": {"type": "int", "low": 2, "high": 9, "step": 2, "log": True}}, "cannot be combined with log"),
    ({"method": {"type": "fixed", "value": "adapters"}}, "unknown method 'adapters'"),
])
def test_validation_names_file_parameter_and_problem(tmp_path, parameters, message):
    path = _write(tmp_path, parameters)
    with pytest.raises(PTPlusError, match=f"{path}: .*{message}"):
        load_space(path)


@pytest.mark.parametrize("study, message", [
    ({"metric": "bleu"}, "metric: unknown metric 'bleu'"),
    ({"scheduler": {"grace_period": 100}, "trial": {"max_steps": 10}}, "grace_period: must be between 1 and max_steps"),
    ({"num_samples": 0}, "num_samples: must be >= 1"),
    ({"sampler": "grid"}, "sampler: must be one of tpe, random"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type: must be one of asha, none"),
    ({"trial": {"max_steps": 0}}, "max_steps must be an integer >= 1"),
    ({"balance": "learning_rate"}, "balance: must name a categorical parameter without `when`, got 'learning_rate'"),
    ({"balance": "method"}, "balance: must name a categorical parameter"),
    ({"resources": {"pack": 0}}, "resources.pack: must be an integer >= 1"),
    ({"resources": {"pack": 2.5}}, "resources.pack: expected an integer, got 2.5"),
    ({"resources": {"pack": 2, "gpus": 2}}, "a pack trains on one GPU"),
    ({"resources": {"pack": 2}, "trial": {"method": "lora"}}, "packs Prefix-Tuning\\+ trials, and this space has none"),
    ({"resources": {"memory": 2}}, "resources: only cpus, gpus and pack"),
])
def test_study_settings_are_validated(tmp_path, study, message):
    with pytest.raises(PTPlusError, match=message):
        load_space(_write(tmp_path, {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}, **study))


def test_random_search_without_early_stopping_builds_those_parts(tmp_path):
    import optuna
    from ray.tune.schedulers import FIFOScheduler

    from ptplus_tune.service.schedulers import build_scheduler
    from ptplus_tune.service.study import build_searcher

    spec = load_space(_write(tmp_path, {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
                             sampler="random", scheduler={"type": "none", "grace_period": 500}))
    assert spec.sampler == "random" and spec.scheduler.type == "none"  # grace_period is moot without ASHA
    assert type(build_scheduler(spec)) is FIFOScheduler
    searcher = build_searcher(spec, "s", tmp_path / "study").searcher
    assert isinstance(searcher._sampler, optuna.samplers.RandomSampler)


def test_conditional_parameters_appear_only_with_their_parent_value():
    spec = load_space("compare")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = define_by_run(spec)
    seen = set()
    for _ in range(40):
        trial = study.ask()
        space(trial)
        params, method = trial.params, trial.params["method"]
        seen.add(method)
        assert ("feature_map" in params) == (method == "ptplus")
        assert ("lora_r" in params) == ("lora_alpha" in params) == (method == "lora")
        assert ("prefix_length" in params) == (method in ("ptplus", "prefix_tuning"))
        study.tell(trial, 0.0)
    assert seen == {"ptplus", "lora", "prefix_tuning"}


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_balance_gives_every_method_the_same_number_of_trials(tmp_path, storage):
    with contextlib.ExitStack() as stack:
        url = None if storage == "sqlite" else loopback_url(stack.enter_context(postgres_database()))
        _check_balance(tmp_path, url)


def _check_balance(tmp_path, optuna_storage):
    from ptplus_tune.service.study import build_searcher

    spec = load_space("compare")
    spec.num_samples = 7
    assert spec.balance == "method"
    searcher = build_searcher(spec, "s", tmp_path / "study", optuna_storage).searcher  # the OptunaSearch inside
    configs = [searcher.suggest(f"t{i}") for i in range(spec.num_samples)]
    for i in range(len(configs)):
        searcher.on_trial_complete(f"t{i}", {"eval_accuracy": 0.5})
    methods = [c["method"] for c in configs]
    assert methods == ["ptplus", "lora", "prefix_tuning"] * 2 + ["ptplus"]
    for config in configs:  # only the method is pinned: the rest is sampled, with its conditions
        assert ("feature_map" in config) == (config["method"] == "ptplus")
        assert ("lora_r" in config) == (config["method"] == "lora")
        low, high = {"ptplus": (2e-4, 3e-3), "lora": (3e-4, 1e-2), "prefix_tuning": (1e-3, 3e-2)}[config["method"]]
        assert low <= config["learning_rate"] <= high  # each method's own range (variants)
    assert len({c["learning_rate"] for c in configs}) == len(configs)


def test_a_built_wheel_ships_the_spaces(tmp_path):
    """`--space NAME` must work after a plain (non-editable) install: the YAML files are package data."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    for space in ("default", "quick", "compare"):
        assert f"ptplus_tune/search_spaces/{space}.yaml" in names


def test_a_parameter_may_have_variants_per_condition(tmp_path):
    """learning_rate with its own range per feature map: one variant enabled per trial, the same Optuna name."""
    spec = load_space("default")
    variants = [p for p in spec.parameters if p.name == "learning_rate"]
    assert len(variants) == 2 and all(v.when for v in variants)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        define_by_run(spec)(trial)
        ranges = {"elu": (2e-4, 3e-3), "gelu": (2e-4, 3e-3)}.get(trial.params["feature_map"], (1e-4, 1.5e-3))
        assert ranges[0] <= trial.params["learning_rate"] <= ranges[1]
        seen.add(trial.params["feature_map"])
        study.tell(trial, 0.5)
    assert seen == {"elu", "gelu", "relu", "identity", "mlp"}


@pytest.mark.parametrize("variants, message", [
    ([{"type": "float", "low": 1e-4, "high": 1e-3}, {"type": "float", "low": 1e-3, "high": 1e-2,
                                                     "when": {"feature_map": "gelu"}}], "every variant needs a `when`"),
    ([{"type": "float", "low": 1e-4, "high": 1e-3, "when": {"feature_map": ["elu", "gelu"]}},
      {"type": "float", "low": 1e-3, "high": 1e-2, "when": {"feature_map": "gelu"}}], "two variants apply at once"),
    ([{"type": "float", "low": 1e-4, "high": 1e-3, "log": True, "when": {"feature_map": "elu"}},
      {"type": "float", "low": 1e-3, "high": 1e-2, "when": {"feature_map": "gelu"}}],
     "variants must all be float, all int \\(same log"),
])
def test_bad_variants_are_named(tmp_path, variants, message):
    path = _write(tmp_path, {"feature_map": {"type": "categorical", "choices": ["elu", "gelu"]},
                             "learning_rate": variants})
    with pytest.raises(PTPlusError, match=f"{path}: parameter 'learning_rate': {message}"):
        load_space(path)


def test_startup_trials_and_the_dead_trial_rule_are_settings(tmp_path):
    base = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    assert [load_space(_write(tmp_path, base, num_samples=n)).n_startup_trials for n in (4, 16, 48, 200)] == \
        [2, 4, 10, 10]
    spec = load_space(_write(tmp_path, base, startup_trials=3, scheduler={"dead_trials": False, "grace_period": 5},
                             trial={"max_steps": 40}))
    assert spec.n_startup_trials == 3 and spec.rungs == [5, 15]
    assert spec.trial_policy() == {"eval_steps": [5, 15], "dead_trial_step": None}
    with pytest.raises(PTPlusError, match=r"scheduler\.dead_trials: must be true or false"):
        load_space(_write(tmp_path, base, scheduler={"dead_trials": "yes"}))


def test_a_report_for_an_optuna_trial_that_already_has_its_outcome_does_not_end_the_study():
    """After a killed driver, Tune's saved experiment can be older than the Optuna study: a trial Optuna already
    closed reports again on --resume. Plain OptunaSearch raises UpdateFinishedTrialError there (the whole study
    ends); StudySearch ignores the report."""
    from ray import tune

    from ptplus_tune.service.optuna_store import StudySearch

    search = StudySearch(space={"x": tune.uniform(0, 1)}, metric="eval_accuracy", mode="max")
    search.suggest("t1")
    search._ot_study.tell(search._ot_trials["t1"], 0.9)
    search.on_trial_result("t1", {"eval_accuracy": 0.5, "training_iteration": 1})
    assert search._ot_study.trials[0].intermediate_values == {}


def test_a_configuration_already_run_is_not_trained_again(tmp_path):
    """TPE proposes a good configuration of a discrete space again and again; the searcher records a repeat as
    PRUNED in Optuna (duplicate_of) and asks again, and runs a repeat only when max_repeats proposals in a row were
    repeats."""
    from ptplus_tune.service.study import build_searcher

    spec = parse_space({"name": "s", "seed": 0, "num_samples": 8, "trial": {"max_steps": 30},
                        "parameters": {"feature_map": {"type": "categorical", "choices": ["elu", "gelu", "relu"]}}})
    searcher = build_searcher(spec, "s", tmp_path).searcher
    seen = []
    for i in range(3):
        seen.append(searcher.suggest(f"t{i}")["feature_map"])
        searcher.on_trial_complete(f"t{i}", {"step": 30, "eval_accuracy": 0.5 + i / 10})
    assert sorted(seen) == ["elu", "gelu", "relu"]  # three trials, three configurations
    searcher.max_repeats = 3
    assert searcher.suggest("t3")["feature_map"] in seen  # nothing new is left: the fourth proposal runs
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(repeats) >= 3 and all(t.state == optuna.trial.TrialState.PRUNED for t in repeats)
    assert all(study.trials[t.user_attrs["duplicate_of"]].params == t.params for t in repeats)
    assert study.trials[-1].state == optuna.trial.TrialState.RUNNING  # the repeat Tune runs
    assert sorted(t.params["feature_map"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE) == \
        ["elu", "gelu", "relu"]


def test_balanced_trials_keep_their_turns_even_when_the_rest_repeats(tmp_path):
    """A `balance` point pins one parameter and the sampler proposes the rest; with nothing else to propose the rest
    repeats, but an enqueued point runs as given and is never recorded as a repeat."""
    from ptplus_tune.service.study import build_searcher

    spec = parse_space({"name": "b", "seed": 0, "num_samples": 6, "balance": "method", "trial": {"max_steps": 30},
                        "parameters": {"method": {"type": "categorical", "choices": ["ptplus", "lora"]},
                                       "prefix_length": {"type": "categorical", "choices": [4]}}})
    searcher = build_searcher(spec, "b", tmp_path).searcher
    methods = []
    for i in range(6):
        methods.append(searcher.suggest(f"t{i}")["method"])
        searcher.on_trial_complete(f"t{i}", {"step": 30, "eval_accuracy": 0.5})
    assert methods == ["ptplus", "lora"] * 3
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert not [t for t in study.trials if "duplicate_of" in t.user_attrs]
