"""Bad input of every class (space files, parameter ranges, trial settings, flags, data files, model folders) is one
`error:` line and exit 2 before Ray starts, with nothing written."""

import json

import pytest
import yaml

from ptplus_tune.cli import main

BASE_PARAMETERS = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _space(tmp_path, tiny_trial, parameters=None, trial=None, raw: bytes | None = None):
    path = tmp_path / "space.yaml"
    if raw is not None:
        path.write_bytes(raw)
        return str(path)
    parameters = parameters or BASE_PARAMETERS
    settings = {k: v for k, v in tiny_trial.items() if k not in ("num_threads", *parameters)}
    data = {"name": "bad", "num_samples": 2, "resources": {"cpus": 1}, "scheduler": {"grace_period": 4},
            "trial": {**settings, **(trial or {})},
            "parameters": parameters}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _optuna_db_with(tmp_path, study: str) -> str:
    """An Optuna database that already holds a study of that name (another user's, or an earlier run's)."""
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name=study, storage=url)
    return url


def _data(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


ONE_CLASS = "\n".join(json.dumps({"text": f"the sea {i}", "label": "blue"}) for i in range(60)).encode()
CASES = {  # id: (how to build the space path and extra flags, expected message)
    "binary space file": (lambda t, tt: (_space(t, tt, raw=b"\x89PNG\r\n\x1a\n\x00\xff"), []),
                          "not a text (UTF-8) YAML file"),
    "space that is a list": (lambda t, tt: (_space(t, tt, raw=b"- a\n- b\n"), []), "expected a mapping"),
    "negative prefix range": (lambda t, tt: (_space(t, tt, {**BASE_PARAMETERS, "prefix_length":
                                                            {"type": "int", "low": -4, "high": 8}}), []),
                              "parameter 'prefix_length': a trial would reject -4"),
    "zero learning rate": (lambda t, tt: (_space(t, tt, {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1}}),
                                          []), "learning_rate must be > 0"),
    "zero batch size choice": (lambda t, tt: (_space(t, tt, {**BASE_PARAMETERS, "batch_size":
                                                             {"type": "categorical", "choices": [0, 4]}}), []),
                               "batch_size must be an integer >= 1"),
    "dropout of one": (lambda t, tt: (_space(t, tt, {**BASE_PARAMETERS, "lora_dropout":
                                                     {"type": "float", "low": 0.0, "high": 1.0}}), []),
                       "lora_dropout must be in [0, 1)"),
    "conditional range": (lambda t, tt: (_space(t, tt, {**BASE_PARAMETERS,
                                                        "feature_map": {"type": "categorical",
                                                                        "choices": ["elu", "mlp"]},
                                                        "feature_dim": {"type": "int", "low": 0, "high": 8,
                                                                        "when": {"feature_map": "mlp"}}}), []),
                          "parameter 'feature_dim': a trial would reject 0"),
    "zero max_length": (lambda t, tt: (_space(t, tt, trial={"max_length": 0}), []), "max_length must be"),
    "warmup of 1.5": (lambda t, tt: (_space(t, tt, trial={"warmup_ratio": 1.5}), []), "warmup_ratio must be in"),
    "zero k_shot": (lambda t, tt: (_space(t, tt, trial={"k_shot": 0}), []), "k_shot must be an integer >= 1"),
    "prompt without text": (lambda t, tt: (_space(t, tt, trial={"prompt_template": "Label:"}), []),
                            "prompt_template must contain {text}"),
    "zero samples flag": (lambda t, tt: (_space(t, tt), ["--num-samples", "0"]), "num_samples: must be >= 1"),
    "zero cpus flag": (lambda t, tt: (_space(t, tt), ["--cpus-per-trial", "0"]), "cpus must be > 0"),
    "empty csv": (lambda t, tt: (_space(t, tt, trial={"dataset": _data(t, "e.csv", b"")}), []), "e.csv is empty"),
    "header-only csv": (lambda t, tt: (_space(t, tt, trial={"dataset": _data(t, "h.csv", b"text,label\n")}), []),
                        "h.csv has no rows"),
    "broken jsonl": (lambda t, tt: (_space(t, tt, trial={"dataset": _data(
        t, "b.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "lab\n')}), []), "b.jsonl is not valid JSON"),
    "binary csv": (lambda t, tt: (_space(t, tt, trial={"dataset": _data(t, "x.csv", b"\xff\xfe\x00\x01" * 40)}), []),
                   "x.csv is not UTF-8 text"),
    "csv without the columns": (lambda t, tt: (_space(t, tt, trial={"dataset": _data(
        t, "c.csv", b"body,topic\n" + b"some text,red\n" * 60)}), []), "has no column 'text'"),
    "one class": (lambda t, tt: (_space(t, tt, trial={"dataset": _data(t, "one.jsonl", ONE_CLASS)}), []),
                  "only the class 'blue'"),
    "too few rows for the splits": (lambda t, tt: (_space(t, tt, trial={"validation_size": 60, "test_size": 60}), []),
                                    "colours.jsonl has 90 rows but the splits need 123"),
    "k_shot beyond the data": (lambda t, tt: (_space(t, tt, trial={"k_shot": 40}), []),
                               "has 90 rows but the splits need 150"),
    "pack flag not a number": (lambda t, tt: (_space(t, tt), ["--pack", "many"]),
                               "--pack takes a whole number of trials or auto, got 'many'"),
    "zero pack flag": (lambda t, tt: (_space(t, tt), ["--pack", "0"]), "resources.pack: must be an integer >= 1"),
    "pack flag without Prefix-Tuning+ trials": (lambda t, tt: (_space(t, tt, parameters={
        "method": "lora", "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}),
        ["--pack", "2"]),
        "resources.pack: packs Prefix-Tuning+ trials, and this space has none (method: lora)"),
    "pack auto without Prefix-Tuning+ trials": (lambda t, tt: (_space(t, tt, parameters={
        "method": "lora", "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}),
        ["--pack", "auto"]), "resources.pack: packs Prefix-Tuning+ trials, and this space has none (method: lora)"),
    "zero max-concurrent flag": (lambda t, tt: (_space(t, tt), ["--max-concurrent", "0"]), "max_concurrent"),
    "storage uri without an optuna database": (lambda t, tt: (_space(t, tt), ["--storage-path", f"file://{t}/r2"]),
                                               "needs --optuna-storage"),
    "optuna storage that cannot be opened": (lambda t, tt: (_space(t, tt), ["--optuna-storage",
                                                                            f"sqlite:///{t}/no/such/dir/o.db"]),
                                             "cannot be opened"),
    "optuna study name taken": (lambda t, tt: (_space(t, tt), ["--optuna-storage", _optuna_db_with(t, "taken"),
                                                               "--name", "taken"]),
                                "already has a study named 'taken'; choose another --name"),
    "model folder without config": (lambda t, tt: (_space(t, tt, trial={"model": str(t)}), []), "has no config.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_ray_starts(case, tmp_path, tiny_trial, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    build, message = CASES[case]
    space, flags = build(tmp_path, tiny_trial)
    before = set(tmp_path.iterdir())
    assert main(["--space", space, "--storage-path", str(tmp_path / "results"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert set(tmp_path.iterdir()) == before  # no study folder, no mlflow.db
    import ray

    assert not ray.is_initialized()
