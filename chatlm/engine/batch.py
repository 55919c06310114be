"""The scheduler's batch as tensors: a row's state, the prompts being prefilled, left-padding, and the mask
that keeps a copied answer inside its passages. Apart from the scheduler so that its loop reads as a loop."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from chatlm.engine.copy import CopyConstraint
from chatlm.engine.decode import IncrementalDecoder, StopMatcher
from chatlm.engine.generation import Generation

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the (keys, values) of one cached row."""


@dataclass
class Fill:
    """Prompts being prefilled, chunk by chunk, in their own cache until they join the batch."""

    admit: list[tuple[Generation, list[int]]]
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: Any
    offset: int = 0
    """Columns of a cached shared prefix the cache starts with (``mask`` covers them, ``ids`` not)."""
    done: int = 0
    """Columns of ``ids`` already run through the model."""


@dataclass
class Row:
    gen: Generation
    decoder: IncrementalDecoder
    stops: StopMatcher
    rng: torch.Generator | None
    last_token: int = 0
    copy: CopyConstraint | None = None
    """When set, every token continues a span of its passages (extractive answers)."""
    first_logprobs: torch.Tensor | None = None
    """A copied answer's unconstrained first-step log-probabilities (for ``span_logprob``)."""


def new_cache(config: Any) -> Any:
    """An empty KV cache for a model of this config (an adapter leaves the config as it is), whose
    layers grow in place (``GrowingLayer``)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    growing = growing_layer()
    cache.layers = [growing() if type(layer) is DynamicLayer else layer for layer in cache.layers]  # sliding ones stay
    return cache


@functools.cache
def growing_layer() -> type:
    """``GrowingLayer``, made on first use: transformers is imported only by a process that runs a model."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer whose keys and values live in a buffer with room to grow: a decoding step
        writes its token in place, where transformers' ``DynamicLayer`` copies the whole cache to
        append one (``torch.cat``: a fifth of a step for eight chats, a tenth for one). ``keys``
        and ``values`` read as the filled part; setting them (the scheduler joins, drops and trims
        rows) takes the tensor as it is, and the next token moves it into a roomier buffer."""

        def __init__(self) -> None:
            self._k: torch.Tensor | None = None
            self._v: torch.Tensor | None = None
            self._filled = [0, 0]
            """Columns of keys and of values in use (set apart: the scheduler replaces one, then
            reads the other)."""
            self._room = 0
            """Columns that the next tokens may be written into: the size of a buffer this layer
            made, else what is filled (a tensor it was given is never written)."""
            super().__init__()

        @property
        def keys(self) -> torch.Tensor | None:  # type: ignore[override]
            return None if self._k is None else self._k[:, :, :self._filled[0]]

        @keys.setter
        def keys(self, tensor: torch.Tensor | None) -> None:
            self._k = tensor if tensor is not None and tensor.dim() == 4 else None
            self._filled[0] = 0 if self._k is None else self._k.shape[2]
            self._room = 0

        @property
        def values(self) -> torch.Tensor | None:  # type: ignore[override]
            return None if self._v is None else self._v[:, :, :self._filled[1]]

        @values.setter
        def values(self, tensor: torch.Tensor | None) -> None:
            self._v = tensor if tensor is not None and tensor.dim() == 4 else None
            self._filled[1] = 0 if self._v is None else self._v.shape[2]
            self._room = 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys, values = self.keys, self.values
            if keys is None or values is None:
                self.keys, self.values = key_states, value_states
                return key_states, value_states
            start, end = keys.shape[2], keys.shape[2] + key_states.shape[2]
            if end > self._room:
                room = end + max(64, end // 4)
                self._k = keys.new_empty((*keys.shape[:2], room, keys.shape[3]))
                self._v = values.new_empty((*values.shape[:2], room, values.shape[3]))
                self._k[:, :, :start] = keys
                self._v[:, :, :start] = values
                self._room = room
            self._k[:, :, start:end] = key_states
            self._v[:, :, start:end] = value_states
            self._filled = [end, end]
            return self.keys, self.values

    return GrowingLayer


def constrain(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """Mask out, for rows copying from passages, every token that would leave the span."""
    if all(r.copy is None for r in rows):
        return logits
    logits = logits.float().clone()
    for j, row in enumerate(rows):
        if row.copy is None:
            continue
        allowed = None
        if row.copy.state is None:  # the first step: what the model wants before any constraint
            first = torch.log_softmax(logits[j], -1).cpu()
            row.first_logprobs = first
            if row.copy.decline_ids:
                row.gen.decline_score = row.copy.score_decline(first.tolist())
            allowed = row.copy.first_allowed(first)
        keep = torch.tensor(allowed if allowed is not None else row.copy.allowed(), dtype=torch.long,
                            device=logits.device)
        masked = torch.full_like(logits[j], float("-inf"))
        masked[keep] = logits[j, keep]
        logits[j] = masked
    return logits


def lpad(t: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
    return torch.cat([pad, t], 2)


def lpad_mask(m: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - m.shape[1]
    return m if missing == 0 else torch.cat([m.new_zeros((m.shape[0], missing)), m], 1)
