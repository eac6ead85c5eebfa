"""Ray Tune schedulers of a study: ASHA on the training-step budget, FIFO without early stopping, and ASHA per group
(`scheduler.group_by`) so that trials of one method compete only with each other at the rungs."""

from __future__ import annotations

import pickle

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from ptplus_tune.spaces import StudySpec


class _SavedState:
    """Tune saves a scheduler with the experiment: its whole state, as ASHA's own save/restore do."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class GroupedASHA(_SavedState, FIFOScheduler):
    """Asynchronous successive halving run separately for each value of one configuration key (e.g. `method`).

    A comparison of methods under one ASHA is unfair: a method that learns slowly early (PEFT Prefix-Tuning at a
    few dozen steps) loses its trials at the first rung to the fast ones, whatever it reaches at the end. Here each
    group has its own rungs and cut-offs, created on its first trial, with the same settings."""

    def __init__(self, group_by: str, **asha):
        super().__init__()
        self.group_by, self._asha = group_by, asha
        self._groups: dict = {}
        self._metric = self._mode = None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def group(self, trial) -> ASHAScheduler:
        key = trial.config.get(self.group_by)
        if key not in self._groups:
            self._groups[key] = ASHAScheduler(metric=self._metric, mode=self._mode, **self._asha)
        return self._groups[key]

    def on_trial_add(self, tune_controller, trial) -> None:
        self.group(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.group(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.group(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.group(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{self.group_by}={key}: {s.debug_string()}" for key, s in self._groups.items())


class ParetoASHA(_SavedState, FIFOScheduler):
    """Asynchronous successive halving on several objectives (MOASHA, Schmucker et al. 2021, with NSGA-II's ranking).

    Rungs sit where ASHA's do (grace_period · rf^k below max_t). A trial that reaches a rung is recorded there with
    its objective vector; all trials recorded at that rung, itself included, are ranked by non-dominated sorting,
    ties within a front broken by crowding distance (larger first: a front's extremes are kept first), then by
    arrival (earlier first); it continues if its rank is among the best max(1, n // rf) of the n recorded, else it
    stops. The first trial at a rung always continues, as with ASHA."""

    def __init__(self, objectives: list[tuple[str, str]], time_attr: str, max_t: int, grace_period: int,
                 reduction_factor: int):
        super().__init__()
        self.objectives, self.time_attr, self.rf = list(objectives), time_attr, reduction_factor
        self.rungs, t = [], grace_period
        while t < max_t:
            self.rungs.append(t)
            t *= reduction_factor
        self.recorded: dict[int, dict[str, tuple[float, ...]]] = {r: {} for r in self.rungs}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are this scheduler's own; Tune's single metric is not used

    def decide(self, rung: int, trial_id: str, vector: tuple[float, ...]) -> str:
        from ptplus_tune.spaces.pareto import ranked

        recorded = self.recorded[rung]
        recorded[trial_id] = vector
        ids = list(recorded)
        order = [ids[i] for i in ranked([recorded[t] for t in ids])]
        keep = max(1, len(ids) // self.rf)
        return TrialScheduler.CONTINUE if order.index(trial_id) < keep else TrialScheduler.STOP

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        from ptplus_tune.spaces.pareto import signed

        if self.time_attr not in result or any(m not in result for m, _ in self.objectives):
            return TrialScheduler.CONTINUE
        reached = [r for r in self.rungs if result[self.time_attr] >= r and trial.trial_id not in self.recorded[r]]
        if not reached:
            return TrialScheduler.CONTINUE
        return self.decide(max(reached), trial.trial_id, signed(result, self.objectives))

    def debug_string(self) -> str:
        return "ParetoASHA: " + ", ".join(f"rung {r}: {len(v)} recorded" for r, v in self.recorded.items())


def build_scheduler(spec: StudySpec) -> TrialScheduler:
    if spec.scheduler.type == "none":
        return FIFOScheduler()  # every trial runs its whole budget
    # Budget = optimiser steps (the `step` every report carries), so rungs sit at grace_period · rf^k steps.
    asha = dict(time_attr="step", max_t=spec.max_steps, grace_period=spec.scheduler.grace_period,
                reduction_factor=spec.scheduler.reduction_factor)
    if len(spec.objectives) > 1:
        return ParetoASHA(spec.objectives, **asha)
    if spec.scheduler.group_by:
        return GroupedASHA(spec.scheduler.group_by, **asha)
    return ASHAScheduler(**asha)
