"""Per-row LoRA at serving time: every row of a shared batch gets its own adapter (or none).

peft does this too (``adapter_names``), but at a price a 135M model on a CPU cannot pay: each forward
registers and removes a hook on every LoRA layer and groups the batch again in each of the 210
layers, so a decoding step whose rows all use the base model took 54 ms instead of 38 (a third of
one user's speed, ``bench/serve.py``). Here the rows are grouped once per forward (``Routing``) and
a layer that no row's adapter touches costs one attribute read.

The weights are the ones a round saved with peft (``adapter_model.safetensors``, checked by
``chatlm.engine.adapters`` first), applied as peft applies them: ``y = base(x) + B(A(x)) * scale``,
so an answer is the same token for token. Training and held-out evaluation keep peft itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from chatlm.errors import AdapterError

Weights = tuple[torch.Tensor, torch.Tensor, float]
"""One adapter's (A, B, scale) for one layer."""


class Routing:
    """Which rows of the batch now in the model use which adapter: set once per forward."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, torch.Tensor | None]] = []
        """(adapter, its rows; None when it is every row), empty when all rows use the base model."""


class RowLoRA(nn.Module):
    """A linear layer plus any number of LoRA adapters, each applied to its own rows only."""

    def __init__(self, base_layer: nn.Module, routing: Routing) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.routing = routing
        self.adapters: dict[str, Weights] = {}
        self.in_features: int = base_layer.in_features
        self.out_features: int = base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (transformers reads it for a layer's dtype and device)."""
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for name, rows in self.routing.groups:
            weights = self.adapters.get(name)
            if weights is None:
                continue
            a, b, scale = weights
            if rows is None:
                y = y + F.linear(F.linear(x, a), b) * scale
            else:
                y[rows] += F.linear(F.linear(x[rows], a), b) * scale
        return y


class RowAdapters:
    """The adapters loaded into one served model, and the per-row choice of them in a forward."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.routing = Routing()
        self.device = next(model.parameters()).device

    def load(self, name: str, path: Path) -> int:
        """Load (or load again) the adapter saved in ``path`` under ``name``; return how many
        layers it changes. Loading first reads every tensor, so a bad file changes nothing."""
        from safetensors.torch import load_file

        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        scale = _scale(config, path)
        tensors = load_file(str(path / "adapter_model.safetensors"))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            target, sep, rest = key.partition(".lora_")
            if not sep or rest not in ("A.weight", "B.weight"):
                raise AdapterError(f"Adapter {path.name} holds {key!r}: only LoRA on linear layers is served")
            pairs.setdefault(target.removeprefix("base_model.model."), {})[rest[0]] = value
        layers: dict[str, tuple[RowLoRA | nn.Module, Weights]] = {}
        for target, pair in pairs.items():
            try:
                module = self.model.get_submodule(target)
            except AttributeError as exc:
                raise AdapterError(f"Adapter {path.name} targets {target}, which this model lacks") from exc
            if set(pair) != {"A", "B"}:
                raise AdapterError(f"Adapter {path.name} is incomplete at {target}")
            ref = module.base_layer if isinstance(module, RowLoRA) else module
            dtype = ref.weight.dtype if ref.weight.is_floating_point() else torch.float32
            device = ref.weight.device
            layers[target] = (module, (pair["A"].to(device, dtype), pair["B"].to(device, dtype), scale))
        changed: set[RowLoRA] = set()
        for name_of_layer, (module, weights) in layers.items():
            wrapped = module if isinstance(module, RowLoRA) else self._wrap(name_of_layer, module)
            wrapped.adapters[name] = weights
            changed.add(wrapped)
        for module in self.model.modules():  # layers an older copy of this adapter changed
            if isinstance(module, RowLoRA) and module not in changed:
                module.adapters.pop(name, None)
        return len(layers)

    def _wrap(self, target: str, module: nn.Module) -> RowLoRA:
        wrapped = RowLoRA(module, self.routing)
        self.model.set_submodule(target, wrapped)
        return wrapped

    @contextmanager
    def rows(self, adapters: Sequence[str | None]) -> Iterator[None]:
        """Within it, a forward applies ``adapters[i]`` (None: the base model) to row ``i``."""
        groups: list[tuple[str, torch.Tensor | None]] = []
        wanted = [a for a in dict.fromkeys(adapters) if a is not None]
        for name in wanted:
            if len(wanted) == 1 and all(a == name for a in adapters):
                groups.append((name, None))
            else:
                index = [i for i, a in enumerate(adapters) if a == name]
                groups.append((name, torch.tensor(index, device=self.device)))
        self.routing.groups = groups
        try:
            yield
        finally:
            self.routing.groups = []


def _scale(config: dict[str, Any], path: Path) -> float:
    """peft's ``scaling``: alpha / r (alpha / sqrt(r) with rsLoRA); what it varies by layer or
    adds on top (DoRA, biases, extra saved modules) is refused rather than served wrong."""
    for key in ("use_dora", "lora_bias", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save",
                "layer_replication"):
        if config.get(key):
            raise AdapterError(f"Adapter {path.name}: `{key}` adapters are not served")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"Adapter {path.name}: adapters with trained biases are not served")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else r)
