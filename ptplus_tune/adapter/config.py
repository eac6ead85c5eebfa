"""Configuration of a Prefix-Tuning+ adapter (dataclass, JSON round trip)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ptplus_tune.errors import PTPlusError

FEATURE_MAPS = ("elu", "elu_plus_one", "gelu", "relu", "identity", "mlp")
MEMORIES = ("slots", "full")
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class PTPlusConfig:
    """What to inject. See `ptplus_tune.adapter.layer` for the maths.

    feature_map: φ applied to queries (and, for `slots`, to the slot keys).
    memory: `slots` (M_h = φ(K_h)ᵀ V_h with `prefix_length` trainable key/value slots per query head) or
        `full` (a free M_h of shape d_φ × head_dim).
    prefix_length: number of slots p; sets the rank of M_h. Ignored by `full`.
    feature_dim: d_φ of the `mlp` kernel ReLU(Wx + b); the other maps keep d_φ = head_dim. None: head_dim.
    layers: indices of the decoder layers to adapt; None adapts all of them.
    """

    feature_map: str = "elu"
    memory: str = "slots"
    prefix_length: int = 16
    feature_dim: int | None = None
    layers: list[int] | None = None
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="PTPLUS", init=False)

    def __post_init__(self) -> None:
        if self.feature_map not in FEATURE_MAPS:
            raise PTPlusError(f"unknown feature_map {self.feature_map!r}; choose one of: {', '.join(FEATURE_MAPS)}")
        if self.memory not in MEMORIES:
            raise PTPlusError(f"unknown memory {self.memory!r}; choose one of: {', '.join(MEMORIES)}")
        if isinstance(self.prefix_length, bool) or not isinstance(self.prefix_length, int) or self.prefix_length < 1:
            raise PTPlusError(f"prefix_length must be an integer >= 1, got {self.prefix_length!r}")
        if self.feature_dim is not None and (
            isinstance(self.feature_dim, bool) or not isinstance(self.feature_dim, int) or self.feature_dim < 1
        ):
            raise PTPlusError(f"feature_dim must be an integer >= 1 (or null for head_dim), got {self.feature_dim!r}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> PTPlusConfig:
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - known - {"peft_type"}
        if unknown:
            raise PTPlusError(f"unknown adapter config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> PTPlusConfig:
        return cls.from_dict(json.loads(text))
