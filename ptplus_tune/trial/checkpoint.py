"""Trial checkpoints: trainable weights, optimizer, scheduler, step, data position and RNG state, written atomically."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptplus_tune.atomic import replacing_folder
from ptplus_tune.errors import PTPlusError
from ptplus_tune.trial.layout import ADAPTER_DIR, CONFIG_FILE, STATE_FILE, TASK_FILE


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_state(folder: str | os.PathLike, *, model, optimizer, scheduler, step: int, microbatches: int,
               hyperparameters: dict[str, Any], task: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint's files into `folder` (which the caller makes atomic or throws away)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({
        "step": step, "microbatches": microbatches, "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
        "extra": extra or {},
    }, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(hyperparameters, sort_keys=True, indent=1))
    model.save_pretrained(folder / ADAPTER_DIR)  # the adapter as users load it, so any checkpoint can be shipped
    if task is not None:
        (folder / TASK_FILE).write_text(json.dumps(task, indent=1))
    return folder


def write_checkpoint(parent: str | os.PathLike, **state: Any) -> Path:
    """A new checkpoint folder `checkpoint_<step>` under `parent`; complete or absent, never half-written."""
    final = Path(parent) / f"checkpoint_{state['step']:06d}"
    with replacing_folder(final) as tmp:
        save_state(tmp, **state)
    return final


def read_checkpoint(directory: str | os.PathLike, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise PTPlusError(f"{directory} is not a trial checkpoint (no {STATE_FILE})")
    saved = json.loads((directory / CONFIG_FILE).read_text())
    changed = sorted(k for k in set(saved) | set(hyperparameters) if saved.get(k) != hyperparameters.get(k))
    if changed:
        raise PTPlusError(f"checkpoint {directory} was written with other hyperparameters ({', '.join(changed)})")
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)


def restore(state: dict[str, Any], *, model, optimizer, scheduler) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
