"""Packed Prefix-Tuning+: several adapters on one frozen base model, each sample through its own adapter.

A packed forward runs one ordinary batch through the base model, concatenated from the adapters' batches; rows
[start, end) get the memory read-out of the adapter they belong to. The taps are PTPlusModel's (the query
projection's output, the attention output projection's input), so the attention kernel is untouched. Attention never
mixes the samples of a batch and an adapter reads only its own rows, so each adapter's outputs and gradients are
those it would get alone (up to floating-point summation order). Adapters may differ in feature map, memory kind,
prefix length and adapted layers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ptplus_tune.adapter.architectures import find_attention_sites
from ptplus_tune.adapter.config import PTPlusConfig
from ptplus_tune.adapter.model import AdapterAPI, make_layers


class PackedPTPlus:
    """The base model (frozen) with hooks that route batch rows to adapters; `add` makes a new adapter."""

    def __init__(self, base_model: nn.Module):
        self.base_model = base_model
        for parameter in base_model.parameters():
            parameter.requires_grad_(False)
        self.sites = find_attention_sites(base_model)
        self.adapters: list[PackedAdapter] = []
        self._local = threading.local()  # the route (and captured queries) of this thread's pass: passes may overlap
        self._handles = []
        for site in self.sites:
            self._attach(site)

    @property
    def _route(self) -> list[tuple[PackedAdapter, slice]] | None:
        return getattr(self._local, "route", None)

    @_route.setter
    def _route(self, route: list[tuple[PackedAdapter, slice]] | None) -> None:
        self._local.route = route

    def _attach(self, site) -> None:
        captured = threading.local()
        key = str(site.layer_index)

        def keep_query(module, args, output):
            if self._route is not None:
                captured.query = site.to_heads(output)

        def add_memory(module, args):
            if self._route is None:  # the bare base model
                return None
            query, hidden = captured.query, args[0]
            del captured.query
            pieces = []
            for adapter, rows in self._route:
                layer = adapter.ptplus_layers[key] if key in adapter.ptplus_layers else None
                part = query[rows]
                pieces.append(layer(part).to(hidden.dtype) if layer is not None
                              else hidden.new_zeros(*part.shape[:-2], hidden.shape[-1]))
            memory = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            return (hidden + memory, *args[1:])

        self._handles.append(site.query_source.register_forward_hook(keep_query))
        self._handles.append(site.output_projection.register_forward_pre_hook(add_memory))

    def add(self, config: PTPlusConfig) -> PackedAdapter:
        """A new adapter, initialised exactly as `get_ptplus_model(base, config)` would under the same RNG state."""
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(self.base_model.config, "_name_or_path", None) or None
        adapter = PackedAdapter(self, config)
        self.adapters.append(adapter)
        return adapter

    def remove(self, adapter: PackedAdapter) -> None:
        self.adapters = [a for a in self.adapters if a is not adapter]

    @contextmanager
    def routed(self, parts: Sequence[tuple[PackedAdapter, int | None]]):
        """Rows of the next forward passes: the first n_1 through parts[0]'s adapter, the next n_2 through
        parts[1]'s, ...; n = None (one part only): every row."""
        route, start = [], 0
        for adapter, rows in parts:
            if adapter.pack is not self or adapter not in self.adapters:
                raise ValueError("that adapter is not in this pack")
            route.append((adapter, slice(None) if rows is None else slice(start, start + rows)))
            start += rows or 0
        previous, self._route = self._route, route
        try:
            yield
        finally:
            self._route = previous

    def unload(self) -> nn.Module:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.adapters.clear()
        return self.base_model


class PackedAdapter(AdapterAPI, nn.Module):
    """One adapter of a pack. Alone it behaves like a PTPlusModel (forward, generate, save_pretrained, the same
    parameter names, so checkpoints move freely between packed and unpacked trials); the base model is not one of
    its submodules, so `parameters()` are the adapter's only."""

    def __init__(self, pack: PackedPTPlus, config: PTPlusConfig):
        nn.Module.__init__(self)
        self.ptplus_config = config
        object.__setattr__(self, "pack", pack)  # not a submodule
        reference = next(pack.base_model.parameters())
        self.ptplus_layers = make_layers(pack.sites, config, reference.device)

    @property
    def base_model(self) -> nn.Module:
        return self.pack.base_model

    def forward(self, *args, **kwargs):
        with self.pack.routed([(self, None)]):
            return self.pack.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.pack.routed([(self, None)]):
            return self.pack.base_model.generate(*args, **kwargs)

    def train(self, mode: bool = True):
        self.pack.base_model.train(mode)
        return super().train(mode)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.pack.base_model, name)

    def unload(self) -> nn.Module:
        """Leave the pack; the base model stays as it is for the other adapters."""
        self.pack.remove(self)
        return self.pack.base_model
