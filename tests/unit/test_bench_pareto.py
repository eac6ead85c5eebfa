"""The Pareto replay's pieces (bench/pareto.py): the hypervolume against its definition on hand-built points, and
the conditional replay space, whose every proposal names a configuration of the two grids."""

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


def _tables():
    table = {"grid": {"feature_map": ["elu", "gelu"], "prefix_length": [4, 16], "learning_rate": [1e-4, 3e-4, 1e-3,
                                                                                                  3e-3]},
             "settings": {"max_steps": 40, "eval_every": 10}}
    return table, {"grid": baselines_grid.BASELINES | {"prefix_tuning": {"prefix_length": [4, 16], "learning_rate":
                                                                         [1e-3, 3e-3, 1e-2, 3e-2]}}}


def test_every_proposal_of_the_replay_space_is_a_configuration_of_one_grid():
    table, baselines = _tables()
    rates = {"ptplus": table["grid"]["learning_rate"]} | {m: a["learning_rate"] for m, a in baselines["grid"].items()}
    known = {grid.key({"feature_map": f, "prefix_length": p, "learning_rate": lr})
             for f in table["grid"]["feature_map"] for p in table["grid"]["prefix_length"] for lr in rates["ptplus"]}
    known |= {baselines_grid.key(c) for c in baselines_grid.configurations()}
    known |= {baselines_grid.key({"method": "prefix_tuning", "prefix_length": p, "learning_rate": lr})
              for p in (4, 16) for lr in rates["prefix_tuning"]}
    spec = pareto.spec_for(table, baselines, "random", "asha", True, seed=0, trials=60)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    space, methods = define_by_run(spec), set()
    for _ in range(60):
        trial = study.ask()
        space(trial)
        config = trial.params
        assert pareto.grid_key(config, rates) in known, config
        methods.add(config["method"])
        study.tell(trial, [0.5, 1.0])
    assert methods == {"ptplus", "lora", "prefix_tuning"}
    lora = {"method": "lora", "lora_r": 8, "lr_level": 2}  # the level indexes the method's own rates
    assert pareto.grid_key(lora, rates) == baselines_grid.key({**lora, "learning_rate": 3e-3})
