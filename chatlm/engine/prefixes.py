"""The prompt prefixes that fills share (the chat template's system prompt, or the history that a
conversation's next turn repeats), kept as KV caches so that the model does not read them again."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chatlm.engine.batch import KV, new_cache
from chatlm.engine.generation import Generation

MIN_PREFIX = 16
"""Shared prompt tokens worth caching (fewer cost more bookkeeping than they save)."""
MAX_PREFIX = 4096
MAX_PREFIXES = 8
"""Cached prefixes kept (least recently used dropped first): a few MB each for a small model."""
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, list[str | None]], tuple[torch.Tensor, Any]]
"""The scheduler's forward pass: (ids, mask, positions, cache, adapters) -> (last logits, cache)."""


class PrefixCache:
    """Cached prompt prefixes by (adapter, tokens), used only on the scheduler's thread."""

    def __init__(self, config: Any, device: torch.device, *, enabled: bool = True) -> None:
        self.config = config
        """The model's config, which shapes a cache (the model itself changes when an adapter is
        attached; the forward pass comes with each ``shared`` call)."""
        self.device = device
        self.enabled = enabled
        """Keep and reuse shared prompt prefixes (off: every prompt is prefilled whole; benchmarks)."""
        self._prefixes: OrderedDict[tuple[str | None, tuple[int, ...]], KV] = OrderedDict()
        """Per layer (keys, values) of one row, newest last."""
        self._last_prompt: tuple[str | None, list[int]] | None = None
        self.tokens_reused = 0
        """Prompt tokens that a cached prefix saved from being prefilled (for tests and benchmarks)."""
        self.tokens_made = 0
        """Prompt tokens run through the model to make cached prefixes (the reuse's price)."""

    def forget(self) -> None:
        """Drop the cached prefixes (an adapter's weights changed: its prefixes are stale).
        Call on the scheduler thread (``Scheduler.call``)."""
        self._prefixes.clear()
        self._last_prompt = None

    def shared(self, admit: list[tuple[Generation, list[int]]], forward: Forward) -> KV | None:
        """The cached KV of the longest prefix every admitted prompt starts with (all under one
        adapter), made now when these prompts share at least ``MIN_PREFIX`` tokens with each other
        or with the previous fill's prompt (run through ``forward``); None when there is none."""
        adapters = {g.adapter for g, _ in admit}
        if not self.enabled or len(adapters) != 1:
            return None
        adapter = adapters.pop()
        prompts = [p for _, p in admit]
        room = min(len(p) for p in prompts) - 1  # the last token of each prompt must run: its logits
        best: tuple[int, ...] | None = None
        for key_adapter, tokens in self._prefixes:
            if key_adapter == adapter and len(tokens) <= room and (best is None or len(tokens) > len(best)) \
                    and all(tuple(p[:len(tokens)]) == tokens for p in prompts):
                best = tokens
        others = prompts[1:] if len(prompts) > 1 else (
            [self._last_prompt[1]] if self._last_prompt and self._last_prompt[0] == adapter else [])
        self._last_prompt = (adapter, prompts[0])
        common = min((_common_length(prompts[0], o) for o in others), default=0)
        common = min(common, room, MAX_PREFIX)
        if common >= MIN_PREFIX and (best is None or common > len(best) + MIN_PREFIX):
            # made by extending the longest cached prefix, so a conversation's next turn reads only
            # what the last two turns added, not its whole history again
            tokens = tuple(prompts[0][:common])
            start = len(best) if best is not None else 0
            cache = new_cache(self.config)
            if best is not None:
                for layer, (keys, values) in enumerate(self._prefixes[(adapter, best)]):
                    cache.update(keys, values, layer)
            ids = torch.tensor([tokens[start:]], device=self.device)
            _, cache = forward(ids, torch.ones((1, common), dtype=torch.long, device=self.device),
                               torch.arange(start, common, device=self.device)[None], cache, [adapter])
            self._prefixes[(adapter, tokens)] = [(layer.keys, layer.values) for layer in cache.layers]
            self.tokens_made += common - start
            while len(self._prefixes) > MAX_PREFIXES:
                self._prefixes.popitem(last=False)
            best = tokens
        if best is None:
            return None
        self._prefixes.move_to_end((adapter, best))
        self.tokens_reused += len(best) * len(admit)
        return self._prefixes[(adapter, best)]


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
