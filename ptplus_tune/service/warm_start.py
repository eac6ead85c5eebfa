"""Warm starts (`--warm-start STUDY[,STUDY...]`): a new study begins from what earlier ones found.

The best configurations of each earlier study (read from its Optuna study, in whichever storage it used) are
enqueued first, identical ones once. When an earlier study searched the same thing (`search_sha256`: the same
parameters, fixed trial settings (so base model and data) and objective), its trials that ran their whole budget
are also added to the new Optuna study as finished trials, so TPE models them from its first proposal instead of
spending start-up trials. A trial ASHA stopped is not added: its value is a lower rung's, not a finished trial's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ptplus_tune.errors import PTPlusError
from ptplus_tune.service.storage import SPEC_FILE, StudyDir, optuna_storage_of, saved_spec
from ptplus_tune.spaces import StudySpec

BEST_PER_STUDY = 3  # configurations enqueued from each earlier study


def search_sha256(spec: StudySpec) -> str:
    """What makes two studies' trials comparable: parameters, fixed trial settings and objective (not the budget,
    seed, concurrency or time)."""
    data = spec.to_data()
    same = {k: data.get(k) for k in ("parameters", "trial", "metric", "mode", "objectives")}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class WarmStart:
    sources: list[str]
    points: list[dict] = field(default_factory=list)  # configurations to run first
    trials: list = field(default_factory=list)  # optuna FrozenTrials to add as finished (comparable searches only)
    added_from: list[str] = field(default_factory=list)  # the sources whose trials were added

    def describe(self) -> str:
        added = (f"; {len(self.trials)} finished trial(s) of {', '.join(self.added_from)} given to TPE (same search)"
                 if self.trials else "; no finished trials given to TPE (another search)")
        return f"warm start from {', '.join(self.sources)}: {len(self.points)} configuration(s) run first{added}"


def _evaluations(spec: StudySpec) -> int:
    """Reports a trial that runs its whole budget makes (Tune's training_iteration at its end)."""
    every = spec.trial.get("eval_every")
    steps = set(spec.trial_policy()["eval_steps"]) | {spec.max_steps}
    if every:
        steps |= set(range(every, spec.max_steps + 1, every))
    return len(steps)


def _goals(spec: StudySpec) -> list[tuple[str, str]]:
    return list(spec.objectives) or [(spec.metric, spec.mode)]


def _describe(spec: StudySpec) -> str:
    return ", ".join(f"{m} ({mode})" for m, mode in _goals(spec))


def _best_first(trials: list, spec: StudySpec) -> list:
    """Finished Optuna trials, best first: by value, or with several objectives by Pareto front and crowding."""
    from ptplus_tune.spaces.pareto import ranked

    if not spec.objectives:
        return sorted(trials, key=lambda t: t.value, reverse=spec.mode == "max")
    signed = [tuple(v if mode == "max" else -v for v, (_, mode) in zip(t.values, spec.objectives)) for t in trials]
    return [trials[i] for i in ranked(signed)]


def _earlier_spec(storage_path: str, source: str, spec: StudySpec) -> StudySpec:
    """An earlier study's saved space, checked against this one (no Optuna or Ray loaded for a bad source)."""
    if StudyDir(storage_path, source).read(SPEC_FILE) is None:
        raise PTPlusError(f"--warm-start {source}: there is no study {source!r} under "
                          f"{StudyDir(storage_path, source).storage} (see --storage-path)")
    earlier = saved_spec(storage_path, source)
    names = {p.name for p in spec.parameters if p.type != "fixed"}
    earlier_names = {p.name for p in earlier.parameters if p.type != "fixed"}
    if earlier_names != names:
        raise PTPlusError(f"--warm-start {source}: its parameters ({', '.join(sorted(earlier_names))}) are not "
                          f"this space's ({', '.join(sorted(names))})")
    if _goals(earlier) != _goals(spec):
        raise PTPlusError(f"--warm-start {source}: it optimised {_describe(earlier)}, this space {_describe(spec)}")
    return earlier


def load_warm_start(sources: list[str], storage_path: str, spec: StudySpec) -> WarmStart:
    earlier = {source: _earlier_spec(storage_path, source, spec) for source in sources}
    import optuna
    from optuna.trial import TrialState

    from ptplus_tune.service.optuna_store import display_url, open_storage

    warm = WarmStart(sources=list(sources))
    for source, saved in earlier.items():
        url = optuna_storage_of(storage_path, source)
        try:
            study = optuna.load_study(study_name=source, storage=open_storage(url))
        except KeyError:
            raise PTPlusError(f"--warm-start {source}: no Optuna study of that name in {display_url(url)}") from None
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
        # Several objectives: Optuna holds only finished trials as COMPLETE (ASHA's are PRUNED), and no
        # intermediate values; one objective: a finished trial has every evaluation's report.
        full = done if spec.objectives else \
            [t for t in done if max(t.intermediate_values, default=0) >= _evaluations(saved)]
        for trial in _best_first(full or done, spec)[:BEST_PER_STUDY]:
            if trial.params not in warm.points:
                warm.points.append(dict(trial.params))
        if search_sha256(saved) == search_sha256(spec) and full:
            warm.trials += full
            warm.added_from.append(source)
    if not warm.points:
        raise PTPlusError(f"--warm-start {', '.join(sources)}: no finished trial to start from")
    return warm


def seed_study(warm: WarmStart, storage, name: str, spec: StudySpec) -> None:
    """Create the new study's Optuna study holding the earlier finished trials (OptunaSearch then loads it)."""
    import optuna

    directions = ["maximize" if mode == "max" else "minimize" for _, mode in _goals(spec)]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    for trial in warm.trials:
        study.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                  values=trial.values, intermediate_values=trial.intermediate_values,
                                                  user_attrs={**trial.user_attrs, "ptplus.warm_start": True}))
