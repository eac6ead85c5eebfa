"""The Pareto replay's pieces (bench/pareto.py): the hypervolume against its definition on hand-built points, the
cost at which a front is complete, and the conditional replay space, whose every proposal names a configuration of the
two grids."""

import itertools
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import baselines_grid
import grid
import pareto

from ptplus_tune.spaces.sampling import define_by_run


def test_hypervolume_is_the_area_the_points_dominate_up_to_the_reference():
    reference = (0.0, 10.0)  # accuracy above 0 and parameters below 10 count
    assert pareto.hypervolume([(0.5, 2.0)], reference) == pytest.approx(0.5 * 8)
    # two front points: a staircase; a dominated point adds nothing
    two = pareto.hypervolume([(0.5, 2.0), (0.8, 6.0)], reference)
    assert two == pytest.approx(0.5 * 8 + 0.3 * 4)
    assert pareto.hypervolume([(0.5, 2.0), (0.8, 6.0), (0.4, 7.0)], reference) == pytest.approx(two)
    assert pareto.hypervolume([(0.9, 11.0)], reference) == 0.0  # beyond the reference


def test_the_whole_front_is_found_when_its_last_member_finishes():
    reference = (0.0, 10.0)
    true_hv = pareto.hypervolume([(0.5, 2.0), (0.8, 6.0)], reference)
    found = [(0.15, (0.8, 6.0)), (0.05, (0.4, 7.0)), (0.12, (0.5, 2.0))]  # (cost, point), not in cost order
    assert pareto.cost_of_whole_front(found, reference, true_hv) == 0.15
    assert pareto.cost_of_whole_front(found[1:], reference, true_hv) == float("inf")


def _tables():
    table = {"grid": {"feature_map": ["elu", "gelu"], "prefix_length": [4, 16], "learning_rate": [1e-4, 3e-4, 1e-3,
                                                                                                  3e-3]},
             "settings": {"max_steps": 40, "eval_every": 10}}
    return table, {"grid": baselines_grid.BASELINES | {"prefix_tuning": {"prefix_length": [4, 16], "learning_rate":
                                                                         [1e-3, 3e-3, 1e-2, 3e-2]}}}


@pytest.mark.parametrize("ordinal", [True, False])
def test_every_proposal_of_the_replay_space_is_a_configuration_of_one_grid(ordinal):
    table, baselines = _tables()
    axes = {"ptplus": table["grid"]} | baselines["grid"]
    known = {grid.key({"feature_map": f, "prefix_length": p, "learning_rate": lr}) for f in table["grid"]["feature_map"]
             for p in table["grid"]["prefix_length"] for lr in table["grid"]["learning_rate"]}
    known |= {baselines_grid.key({"method": m, **dict(zip(a, values))}) for m, a in baselines["grid"].items()
              for values in itertools.product(*a.values())}
    spec = pareto.spec_for(table, baselines, "random", "asha", True, seed=0, trials=60, ordinal=ordinal)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    space, methods = define_by_run(spec), set()
    for _ in range(60):
        trial = study.ask()
        space(trial)
        config = trial.params
        assert pareto.grid_key(config, axes) in known, config
        methods.add(config["method"])
        study.tell(trial, [0.5, 1.0])
    assert methods == {"ptplus", "lora", "prefix_tuning"}
    kind = optuna.distributions.IntDistribution if ordinal else optuna.distributions.CategoricalDistribution
    assert all(isinstance(study.trials[-1].distributions[n], kind) for n in study.trials[-1].params if "level" in n)
    lora = {"method": "lora", "r_level": 1, "lr_level": 2}  # a level indexes the method's own values
    assert pareto.grid_key(lora, axes) == baselines_grid.key({"method": "lora", "lora_r": 8, "learning_rate": 3e-3})
