"""Study specification: a YAML search space plus the study's settings, parsed and validated before Ray starts.

The format is documented in search_spaces/README.md. Every problem names the file, the parameter and what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ptplus_tune.adapter import FEATURE_MAPS, MEMORIES, METHODS
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial.config import TrialConfig, read_yaml

PARAMETER_TYPES = ("float", "int", "categorical", "fixed")
METRICS = ("eval_accuracy", "eval_exact_match", "eval_loss", "train_loss")
TASK_METRICS = {"classification": "eval_accuracy", "generation": "eval_exact_match"}  # what each task reports
_CHOICES = {"method": METHODS, "feature_map": FEATURE_MAPS, "memory": MEMORIES}
_STUDY_KEYS = {"name", "description", "metric", "mode", "objectives", "select", "num_samples", "max_concurrent", "seed",
               "sampler", "time_budget", "startup_trials", "balance", "scheduler", "resources", "trial", "parameters"}
SAMPLERS = ("tpe", "random", "nsga2")  # Optuna's TPESampler (multivariate, grouped), RandomSampler, NSGAIISampler
# What `objectives:` may hold: the evaluation metrics, and cost figures every report carries
COST_METRICS = ("trainable_params", "peak_mem_mb", "train_step_ms")
SCHEDULERS = ("asha", "none")  # ASHA early stopping, or every trial runs its full budget


@dataclass
class Parameter:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: list | None = None
    value: Any = None
    when: dict[str, list] = field(default_factory=dict)  # parent parameter → values that enable this one


@dataclass
class Scheduler:
    type: str = "asha"
    grace_period: int = 20  # training steps before ASHA may stop a trial
    reduction_factor: int = 3
    dead_trials: bool = True  # the dead-trial rule (ptplus_tune.trial.rules), judged at the first rung
    group_by: str | None = None  # a categorical parameter: ASHA compares each trial only with trials of its value


@dataclass
class Resources:
    """What one trial uses; with `pack` K > 1, what one pack of K Prefix-Tuning+ trials uses (a host on one GPU, or
    on CPU a node's host), each of its trials reserving 1/K of it (see ptplus_tune.service.pack_host)."""

    cpus: float = 1.0
    gpus: float = 0.0
    pack: int = 1

    def share(self, method: str) -> tuple[float, float]:
        """(CPUs, GPUs) one trial of this method reserves: packed PT+ trials 1/K, the PEFT baselines all of it."""
        k = self.pack if method == "ptplus" else 1
        return self.cpus / k, self.gpus / k


@dataclass
class StudySpec:
    name: str
    parameters: list[Parameter]
    trial: dict[str, Any]  # fixed TrialConfig settings for every trial (model, data, max_steps, ...)
    metric: str = "eval_accuracy"
    mode: str = "max"
    num_samples: int = 20
    max_concurrent: int = 2
    seed: int = 0
    sampler: str = "tpe"
    startup_trials: int | None = None  # TPE's random start-up trials; None: sized to the budget (n_startup_trials)
    balance: str | None = None  # a categorical parameter whose choices get equal numbers of trials
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)
    description: str = ""
    source: str = ""  # the file it came from
    time_budget: float | None = None  # seconds of wall time for the study (service.budget); not part of its identity
    # several objectives, [(metric, mode), ...]; the first is `metric`/`mode` (what picks the champion by default).
    # Empty: one objective, `metric`/`mode`.
    objectives: list[tuple[str, str]] = field(default_factory=list)
    select: dict[str, Any] | None = None  # how the champion is picked from the front (spaces.pareto.select)

    @property
    def max_steps(self) -> int:
        return int(self.trial.get("max_steps", TrialConfig.max_steps))

    @property
    def methods(self) -> list[str]:
        """The adapter methods this study's trials can use (a `method` parameter's choices, or the fixed one)."""
        p = self.parameter("method")
        if p is None:
            return [str(self.trial.get("method", "ptplus"))]
        return [str(c) for c in p.choices] if p.type == "categorical" else [str(p.value)]

    @property
    def sha256(self) -> str:
        """Hash of the resolved study (after overrides), stable across key order and YAML formatting."""
        data = {k: v for k, v in self.to_data().items() if k != "time_budget"}  # the same search, given more time
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def rungs(self) -> list[int]:
        """The steps where the scheduler decides (ASHA's rungs: grace_period · rf^k below max_steps)."""
        if self.scheduler.type == "none":
            return []
        rungs, t = [], self.scheduler.grace_period
        while t < self.max_steps:
            rungs.append(t)
            t *= self.scheduler.reduction_factor
        return rungs

    @property
    def n_startup_trials(self) -> int:
        """Random trials before TPE models the results: a quarter of the budget, between 2 and 10 (Optuna's own
        default is 10, most of a 16-trial study)."""
        if self.startup_trials is not None:
            return self.startup_trials
        return max(2, min(10, self.num_samples // 4))

    def trial_policy(self) -> dict[str, Any]:
        """Trial settings the study adds: evaluate at the rungs (plus max_steps, plus any `eval_every`), and the
        dead-trial rule at the first decision point."""
        first = (self.rungs or [self.scheduler.grace_period])[0]
        dead = self.scheduler.dead_trials and first <= self.max_steps
        steps = sorted(set(self.rungs) | ({first} if dead else set()))
        return {"eval_steps": steps, "dead_trial_step": first if dead else None}

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def balanced_points(self) -> list[dict[str, Any]]:
        """With `balance`, trial i is pinned to the i-th choice in turn (the sampler proposes the rest), so every
        choice gets the same number of trials (±1 when num_samples is not a multiple)."""
        if self.balance is None:
            return []
        choices = self.parameter(self.balance).choices
        return [{self.balance: choices[i % len(choices)]} for i in range(self.num_samples)]

    def to_data(self) -> dict[str, Any]:
        """The resolved spec in the YAML format it was read from (parse_space(to_data()) gives it back)."""
        params = {}
        for p in self.parameters:
            raw: dict[str, Any] = {"type": p.type}
            if p.type in ("float", "int"):
                raw.update(low=p.low, high=p.high, log=p.log, **({"step": p.step} if p.step else {}))
            elif p.type == "categorical":
                raw["choices"] = p.choices
            else:
                raw["value"] = p.value
            if p.when:
                raw["when"] = p.when
            if p.name in params:  # variants of one parameter, each under its own condition
                params[p.name] = (params[p.name] if isinstance(params[p.name], list) else [params[p.name]]) + [raw]
            else:
                params[p.name] = raw
        return {"name": self.name, "description": self.description, "metric": self.metric, "mode": self.mode,
                "num_samples": self.num_samples, "max_concurrent": self.max_concurrent, "seed": self.seed,
                "sampler": self.sampler, **({"balance": self.balance} if self.balance else {}),
                **({"startup_trials": self.startup_trials} if self.startup_trials is not None else {}),
                **({"time_budget": self.time_budget} if self.time_budget is not None else {}),
                **({"objectives": [{"metric": m, "mode": mode} for m, mode in self.objectives]}
                   if self.objectives else {}),
                **({"select": self.select} if self.select else {}),
                "scheduler": {k: v for k, v in dataclasses.asdict(self.scheduler).items()
                              if not (k == "group_by" and v is None)},  # the hash of older spaces stays
                "resources": dataclasses.asdict(self.resources),
                "trial": dict(self.trial), "parameters": params}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_data(), sort_keys=False)


def shipped_spaces() -> dict[str, Path]:
    root = resources.files("ptplus_tune.search_spaces")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith((".yaml", ".yml"))}


def load_space(name_or_path: str) -> StudySpec:
    """Read and check a study specification.

    Args:
        name_or_path (`str`): a shipped space's name (`default`, `quick`, `compare`, `full`: see `shipped_spaces`)
            or the path of a YAML file in the format of `search_spaces/README.md`.

    Returns:
        `StudySpec`: the parameters, budget, sampler, scheduler, resources and fixed trial settings, validated.

    Raises:
        `PTPlusError`: an unknown name, a file that is not YAML, or a setting a trial would reject; the message
            names the file and the key.

    Example:

    ```py
    >>> spec = load_space("default")
    >>> spec.num_samples, spec.metric, spec.rungs
    (16, 'eval_accuracy', [10, 30])
    ```
    """
    path = Path(name_or_path).expanduser()
    if not path.suffix and not path.exists():
        shipped = shipped_spaces()
        if name_or_path not in shipped:
            raise PTPlusError(f"unknown space {name_or_path!r}; shipped spaces: {', '.join(sorted(shipped))} "
                              f"(or pass a path to a YAML file)")
        path = shipped[name_or_path]
    data = read_yaml(path, what="space file")
    return parse_space(data, source=str(path), default_name=path.stem)


def _fail(source: str, where: str, problem: str):
    raise PTPlusError(f"{source}: {where}: {problem}")


def _number(source, where, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        _fail(source, where, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _parse_parameter(source: str, name: str, raw: Any) -> Parameter:
    where = f"parameter {name!r}"
    if not isinstance(raw, dict):  # a bare value is a fixed parameter
        raw = {"type": "fixed", "value": raw}
    unknown = set(raw) - {"type", "low", "high", "log", "step", "choices", "value", "when"}
    if unknown:
        _fail(source, where, f"unknown key(s) {', '.join(sorted(unknown))}")
    kind = raw.get("type")
    if kind not in PARAMETER_TYPES:
        _fail(source, where, f"unknown type {kind!r}; use one of {', '.join(PARAMETER_TYPES)}")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        _fail(source, where, "`when` must map a parameter name to a value or a list of values")
    param = Parameter(name, kind, when={k: v if isinstance(v, list) else [v] for k, v in when.items()})
    if kind in ("float", "int"):
        cast = float if kind == "float" else int
        if "low" not in raw or "high" not in raw:
            _fail(source, where, "needs low and high")
        param.low, param.high = _number(source, where, raw["low"], cast), _number(source, where, raw["high"], cast)
        param.log = bool(raw.get("log", False))
        if param.low >= param.high:
            _fail(source, where, f"low ({param.low}) must be < high ({param.high})")
        if param.log and param.low <= 0:
            _fail(source, where, f"log scale needs low > 0, got {param.low}")
        if "step" in raw:
            if kind != "int":
                _fail(source, where, "step is for int parameters")
            param.step = _number(source, where, raw["step"], int)
            if param.step < 1 or param.log:
                _fail(source, where, "step must be >= 1 and cannot be combined with log")
    elif kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(source, where, "needs a non-empty list of choices")
        param.choices = choices
    else:
        if "value" not in raw:
            _fail(source, where, "a fixed parameter needs a value")
        param.value = raw["value"]
    allowed = _CHOICES.get(name)
    values = param.choices if kind == "categorical" else [param.value] if kind == "fixed" else []
    for value in values if allowed else []:
        if value not in allowed:
            _fail(source, where, f"unknown {name} {value!r}; choose from {', '.join(allowed)}")
    return param


def _check_variants(source: str, params: list[Parameter]) -> None:
    """A name given as a list of variants: each under a `when` on the same parents, never two enabled at once,
    all of one numeric type and scale (Optuna keeps one distribution kind per name; the ranges may differ)."""
    by_name: dict[str, list[Parameter]] = {}
    for p in params:
        by_name.setdefault(p.name, []).append(p)
    for name, variants in by_name.items():
        if len(variants) < 2:
            continue
        where = f"parameter {name!r}"
        if any(not v.when for v in variants) or len({tuple(sorted(v.when)) for v in variants}) > 1:
            _fail(source, where, "every variant needs a `when` on the same parameter(s)")
        if len({(v.type, v.log) for v in variants}) > 1 or variants[0].type not in ("float", "int", "fixed"):
            _fail(source, where, "variants must all be float, all int (same log setting) or all fixed")
        for i, a in enumerate(variants):
            for b in variants[i + 1:]:
                if all(set(a.when[k]) & set(b.when[k]) for k in a.when):
                    _fail(source, where, f"two variants apply at once (when {a.when} and when {b.when})")


def parse_space(data: Any, source: str = "<space>", default_name: str = "study") -> StudySpec:
    if not isinstance(data, dict):
        _fail(source, "top level", "expected a mapping with at least `parameters`")
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        _fail(source, "top level",
              f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_STUDY_KEYS))}")
    raw_params = data.get("parameters")
    if not isinstance(raw_params, dict) or not raw_params:
        _fail(source, "parameters", "expected a non-empty mapping of parameter name to definition")
    trial = data.get("trial") or {}
    if not isinstance(trial, dict):
        _fail(source, "trial", "expected a mapping of fixed trial settings")
    trial_keys = {f.name for f in dataclasses.fields(TrialConfig)}
    for name in list(raw_params) + list(trial):
        if name not in trial_keys:
            _fail(source, f"parameter {name!r}", f"not a trial setting; known: {', '.join(sorted(trial_keys))}")
    params = []
    for name, raw in raw_params.items():
        params += [_parse_parameter(source, name, r) for r in raw] if isinstance(raw, list) and raw and all(
            isinstance(r, dict) for r in raw) else [_parse_parameter(source, name, raw)]
    _check_variants(source, params)
    seen: list[str] = []
    for p in params:
        for parent, values in p.when.items():
            if parent not in seen:
                _fail(source, f"parameter {p.name!r}", f"condition on {parent!r}, which is not a parameter defined "
                      f"above it")
            parent_param = next(q for q in params if q.name == parent)
            if parent_param.type == "categorical":
                bad = [v for v in values if v not in parent_param.choices]
                if bad:
                    _fail(source, f"parameter {p.name!r}", f"condition value(s) {bad} are not choices of {parent!r}")
        seen.append(p.name)
    overlap = sorted(set(trial) & set(raw_params))
    if overlap:
        _fail(source, "trial", f"{', '.join(overlap)} also appear(s) under parameters; keep one")

    spec = StudySpec(name=str(data.get("name") or default_name), parameters=params, trial=trial, source=source,
                     description=str(data.get("description", "")))
    if data.get("objectives") is not None:
        spec.objectives = _objectives(source, data["objectives"])
        first = {"metric": spec.objectives[0][0], "mode": spec.objectives[0][1]}
        for key in ("metric", "mode"):
            if data.get(key) is not None and data[key] != first[key]:
                _fail(source, key, f"{data[key]!r} is not the first objective's {first[key]!r}; drop {key} (the "
                                   f"first objective is the study's {key})")
        spec.metric, spec.mode = spec.objectives[0]
    if data.get("select") is not None:
        spec.select = _select(source, data["select"], spec.objectives)
    spec.metric = data.get("metric", spec.metric)
    if spec.metric not in METRICS:
        _fail(source, "metric", f"unknown metric {spec.metric!r}; choose one of {', '.join(METRICS)}")
    spec.mode = data.get("mode", spec.mode if spec.objectives else _default_mode(spec.metric))
    if spec.mode not in ("min", "max"):
        _fail(source, "mode", f"must be min or max, got {spec.mode!r}")
    for key in ("num_samples", "max_concurrent", "seed", "startup_trials"):
        if key in data:
            setattr(spec, key, _number(source, key, data[key], int))
    spec.sampler = data.get("sampler", spec.sampler)
    spec.balance = data.get("balance")
    if data.get("time_budget") is not None:
        spec.time_budget = _duration(source, data["time_budget"])
    sched = data.get("scheduler") or {}
    if set(sched) - {"type", "grace_period", "reduction_factor", "dead_trials", "group_by"}:
        _fail(source, "scheduler", "only type, grace_period, reduction_factor, dead_trials and group_by (max budget "
              "is trial.max_steps)")
    if not isinstance(sched.get("dead_trials", True), bool):
        _fail(source, "scheduler.dead_trials", f"must be true or false, got {sched['dead_trials']!r}")
    spec.scheduler = Scheduler(type=sched.get("type", "asha"), dead_trials=sched.get("dead_trials", True),
                               group_by=sched.get("group_by"),
                               **{k: _number(source, f"scheduler.{k}", v, int) for k, v in sched.items()
                                  if k in ("grace_period", "reduction_factor")})
    res = data.get("resources") or {}
    if set(res) - {"cpus", "gpus", "pack"}:
        _fail(source, "resources", "only cpus, gpus and pack")
    spec.resources = Resources(**{k: _number(source, f"resources.{k}", v, int if k == "pack" else float)
                                  for k, v in res.items()})
    validate(spec)
    return spec


def _check_trial_values(spec: StudySpec) -> None:
    """Every trial the space can propose must be one a trial accepts: the fixed settings, and each searched
    parameter at both ends of its range and at every choice (the trial's rules are monotone in each setting), with
    its `when` parents at an enabling value. The rules are TrialConfig's own, so they live in one place."""
    src = spec.source
    fixed = {**spec.trial, **{p.name: p.value for p in spec.parameters if p.type == "fixed" and not p.when}}
    try:
        TrialConfig.from_dict(fixed, where=src)
    except PTPlusError as exc:
        raise PTPlusError(f"{src}: trial: {str(exc).removeprefix(src + ': ')}") from exc
    for p in spec.parameters:
        if p.type in ("float", "int"):
            values = [p.low, p.high]
        else:
            values = p.choices if p.type == "categorical" else [p.value]
        parents = {parent: enabling[0] for parent, enabling in p.when.items()}
        for value in values:
            try:
                TrialConfig.from_dict({**fixed, **parents, p.name: value}, where=src)
            except PTPlusError as exc:
                _fail(src, f"parameter {p.name!r}", f"a trial would reject {value!r}: "
                      f"{str(exc).removeprefix(src + ': ')}")


def _default_mode(metric: str) -> str:
    return "min" if metric.endswith("loss") or metric in COST_METRICS else "max"


def _objectives(source: str, raw) -> list[tuple[str, str]]:
    """`objectives: [{metric: eval_accuracy, mode: max}, {metric: trainable_params, mode: min}]`."""
    known = (*METRICS, *COST_METRICS)
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(o, dict) and "metric" in o for o in raw):
        _fail(source, "objectives", "a list of two or more {metric, mode} (one objective: use metric and mode)")
    out = []
    for i, item in enumerate(raw):
        metric, mode = item["metric"], item.get("mode", _default_mode(str(item["metric"])))
        if set(item) - {"metric", "mode"} or metric not in known or mode not in ("min", "max"):
            _fail(source, f"objectives[{i}]", f"{item!r}: metric one of {', '.join(known)}, mode min or max")
        out.append((metric, mode))
    if out[0][0] not in METRICS:
        _fail(source, "objectives[0]", f"the first objective is the quality the champion is picked by: one of "
                                       f"{', '.join(METRICS)}, got {out[0][0]!r}")
    if len({m for m, _ in out}) < len(out):
        _fail(source, "objectives", "each metric once")
    return out


def _select(source: str, raw, objectives: list[tuple[str, str]]) -> dict[str, Any]:
    """`select: {min: trainable_params, within: {eval_accuracy: 0.01}}`: the champion rule of a Pareto study."""
    names = [m for m, _ in objectives]
    example = "e.g. {min: trainable_params, within: {eval_accuracy: 0.01}}"
    if not objectives:
        _fail(source, "select", "picks the champion from a Pareto front: it needs `objectives`")
    if not isinstance(raw, dict) or len({"min", "max"} & set(raw)) != 1 or set(raw) - {"min", "max", "within"}:
        _fail(source, "select", f"one of min or max (an objective's metric) and optionally within; {example}")
    within = raw.get("within") or {}
    target = raw.get("min", raw.get("max"))
    if target not in names or not isinstance(within, dict) or set(within) - set(names):
        _fail(source, "select", f"name metrics among the objectives ({', '.join(names)}); {example}")
    for metric, tolerance in within.items():
        _number(source, f"select.within.{metric}", tolerance)
        if tolerance < 0:
            _fail(source, f"select.within.{metric}", "must be >= 0")
    return {**({"min": target} if "min" in raw else {"max": target}),
            **({"within": {k: float(v) for k, v in within.items()}} if within else {})}


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float) -> float:
    """Seconds from `90`, `90s`, `15m`, `2h`, `1h30m` or `1.5h`; ValueError if it is none of those or not > 0."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        rest, seconds = str(text).strip().lower(), 0.0
        if rest.replace(".", "", 1).isdigit():
            rest += "s"
        while rest:
            number = ""
            while rest and (rest[0].isdigit() or rest[0] == "."):
                number, rest = number + rest[0], rest[1:]
            if not number or not rest or rest[0] not in DURATION_UNITS:
                raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1h30m)")
            seconds, rest = seconds + float(number) * DURATION_UNITS[rest[0]], rest[1:]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a duration must be > 0, got {text!r}")
    return seconds


def _duration(source: str, value) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        _fail(source, "time_budget", str(exc))


def validate(spec: StudySpec) -> None:
    """Checks that also hold after CLI overrides."""
    src = spec.source
    _check_trial_values(spec)
    if spec.num_samples < 1:
        _fail(src, "num_samples", "must be >= 1")
    if spec.max_concurrent < 1:
        _fail(src, "max_concurrent", "must be >= 1")
    if spec.resources.cpus <= 0 or spec.resources.gpus < 0:
        _fail(src, "resources", "cpus must be > 0 and gpus >= 0")
    if spec.resources.gpus > 1 and not math.isclose(spec.resources.gpus, round(spec.resources.gpus)):
        _fail(src, "resources.gpus", "above 1, GPUs per trial must be a whole number")
    if isinstance(spec.resources.pack, bool) or not isinstance(spec.resources.pack, int) or spec.resources.pack < 1:
        _fail(src, "resources.pack", f"must be an integer >= 1 (1: no packing), got {spec.resources.pack!r}")
    if spec.resources.pack > 1 and spec.resources.gpus > 1:
        _fail(src, "resources.pack", "a pack trains on one GPU: with pack > 1, gpus (per pack) must be at most 1")
    if spec.resources.pack > 1 and "ptplus" not in spec.methods:
        _fail(src, "resources.pack", f"packs Prefix-Tuning+ trials, and this space has none (method: "
                                     f"{', '.join(spec.methods)})")
    if spec.startup_trials is not None and spec.startup_trials < 0:
        _fail(src, "startup_trials", "must be >= 0")
    if spec.sampler not in SAMPLERS:
        _fail(src, "sampler", f"must be one of {', '.join(SAMPLERS)}, got {spec.sampler!r}")
    for where, value in (("balance", spec.balance), ("scheduler.group_by", spec.scheduler.group_by)):
        target = spec.parameter(value) if isinstance(value, str) else None
        if value is not None and (target is None or target.type != "categorical" or target.when):
            _fail(src, where, f"must name a categorical parameter without `when`, got {value!r}")
    if spec.objectives and spec.scheduler.group_by:
        _fail(src, "scheduler.group_by", "is for one objective; with several, trials are ranked by Pareto fronts")
    if spec.scheduler.type not in SCHEDULERS:
        _fail(src, "scheduler.type", f"must be one of {', '.join(SCHEDULERS)}, got {spec.scheduler.type!r}")
    if spec.scheduler.reduction_factor < 2:
        _fail(src, "scheduler.reduction_factor", "must be >= 2")
    if spec.scheduler.type == "asha" and not 1 <= spec.scheduler.grace_period <= spec.max_steps:
        _fail(src, "scheduler.grace_period", f"must be between 1 and max_steps ({spec.max_steps})")
