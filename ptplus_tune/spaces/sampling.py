"""Turn a StudySpec into an Optuna define-by-run space: conditional parameters are only suggested when their parent
has an enabling value, so TPE (grouped) models each branch separately."""

from __future__ import annotations

from typing import Any

from ptplus_tune.spaces.spec import Parameter, StudySpec


def _enabled(param: Parameter, chosen: dict[str, Any]) -> bool:
    return all(parent in chosen and chosen[parent] in values for parent, values in param.when.items())


class DefineByRun:
    """The define-by-run function OptunaSearch calls per trial. A class, not a closure: Tune pickles the searcher
    (this included) into the experiment state that `--resume` restores."""

    def __init__(self, spec: StudySpec):
        self.parameters = spec.parameters

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for p in self.parameters:
            if not _enabled(p, chosen):
                continue
            if p.type == "float":
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
            elif p.type == "int":
                chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=p.step or 1, log=p.log)
            elif p.type == "categorical":
                chosen[p.name] = trial.suggest_categorical(p.name, p.choices)
            else:
                chosen[p.name] = p.value
        return {p.name: chosen[p.name] for p in self.parameters if p.type == "fixed" and p.name in chosen}


def define_by_run(spec: StudySpec) -> DefineByRun:
    return DefineByRun(spec)
