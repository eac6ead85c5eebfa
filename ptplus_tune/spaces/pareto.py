"""Several objectives: non-dominated sorting and crowding distance (NSGA-II's, Deb et al. 2002), on vectors where
every component is to be maximised (minimised objectives are negated first: `signed`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Vector = Sequence[float]


def signed(values: Mapping[str, float], objectives: Sequence[tuple[str, str]]) -> tuple[float, ...]:
    """The objectives' values as one vector to maximise (a `min` objective is negated)."""
    return tuple(float(values[m]) if mode == "max" else -float(values[m]) for m, mode in objectives)


def dominates(a: Vector, b: Vector) -> bool:
    """a is at least as good as b everywhere and better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def fronts(vectors: Sequence[Vector]) -> list[list[int]]:
    """Indices of `vectors` by non-domination rank: the first list is the Pareto front, the next the front of the
    rest, and so on."""
    dominated_by = [sum(dominates(vectors[j], v) for j in range(len(vectors)) if j != i) for i, v in enumerate(vectors)]
    beats = [[j for j in range(len(vectors)) if dominates(v, vectors[j])] for v in vectors]
    out, current = [], [i for i, n in enumerate(dominated_by) if n == 0]
    while current:
        out.append(current)
        following = []
        for i in current:
            for j in beats[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        current = sorted(following)
    return out


def crowding(vectors: Sequence[Vector], front: Sequence[int]) -> dict[int, float]:
    """Crowding distance of each member of one front: the summed normalised gap between its neighbours on every
    objective; the extremes get infinity, so a front's ends are kept first."""
    distance = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: float("inf") for i in front}
    for k in range(len(vectors[front[0]])):
        ordered = sorted(front, key=lambda i: vectors[i][k])
        low, high = vectors[ordered[0]][k], vectors[ordered[-1]][k]
        distance[ordered[0]] = distance[ordered[-1]] = float("inf")
        if high == low:
            continue
        for before, i, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[i] += (vectors[after][k] - vectors[before][k]) / (high - low)
    return distance


def ranked(vectors: Sequence[Vector]) -> list[int]:
    """All indices, best first: by front, then by crowding distance (larger first), then by index (earlier first)."""
    order = []
    for front in fronts(vectors):
        distance = crowding(vectors, front)
        order += sorted(front, key=lambda i: (-distance[i], i))
    return order


def pareto_front(vectors: Sequence[Vector]) -> list[int]:
    return fronts(vectors)[0] if vectors else []


def select(metrics: Sequence[Mapping[str, float]], rule: Mapping, objectives: Sequence[tuple[str, str]]) -> int:
    """The index of the member of a front that `rule` picks, e.g. {"min": "trainable_params", "within":
    {"eval_accuracy": 0.01}}: among the members within each `within` tolerance of the front's best value of that
    objective, the one with the smallest (`min`) or largest (`max`) value of its metric; ties go to the better first
    objective, then the earlier member."""
    modes = dict(objectives)
    keep = list(range(len(metrics)))
    for metric, tolerance in (rule.get("within") or {}).items():
        values = [metrics[i][metric] for i in keep]
        best = max(values) if modes[metric] == "max" else min(values)
        keep = [i for i in keep if abs(metrics[i][metric] - best) <= tolerance + 1e-12]
    direction = "min" if "min" in rule else "max"
    target = rule[direction]
    first, first_mode = objectives[0]

    def key(i):
        value = metrics[i][target] if direction == "min" else -metrics[i][target]
        tie = -metrics[i][first] if first_mode == "max" else metrics[i][first]
        return value, tie, i

    return min(keep, key=key)
