"""The scheduler's batch as tensors: a row's state, the prompts being prefilled, left-padding, and the mask
that keeps a copied answer inside its passages. Apart from the scheduler so that its loop reads as a loop."""

from __future__ import annotations

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
    """An empty KV cache for a model of this config (an adapter leaves the config as it is)."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


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
