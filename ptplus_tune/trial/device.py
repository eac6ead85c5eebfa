"""Where a trial computes: the device and dtype it asks for, seeding, and peak memory."""

from __future__ import annotations

import random
import resource

import numpy as np
import torch

from ptplus_tune.errors import PTPlusError


def pick_device(requested: str) -> tuple[torch.device, torch.dtype]:
    """`auto`, `cpu`, `cuda` or `cuda:N` as (device, dtype): bf16 (else fp16) on a GPU, fp32 on CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PTPlusError("device=cuda was asked for, but torch sees no GPU")
        return torch.device(requested), (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.device("cpu"), torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; whole process
