"""One generation scheduler per process: continuous batching over a padded batch with a KV cache.

Requests join the running batch between decoding steps and leave it as soon as they finish, are
cancelled, or their reader goes away; the freed row and its cache go with them. Joining prompts are
prefilled together, left-padded, in chunks of at most ``prefill_chunk`` tokens, one chunk between
two decoding steps (so a burst of long prompts delays the running answers by one chunk per token,
not by the whole burst); when the last chunk is done their caches are merged into the batch's.
A prompt prefix that two fills in a row share (the chat template's system prompt, or the history
that a conversation's next turn repeats) is kept as a KV cache and not run through the model again
(``prefixes``). Every request keeps its own sampling parameters and its own LoRA adapter inside the
shared batch (``lora``; its rows and tensors: ``batch``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from chatlm.engine.batch import Fill, Row, constrain, lpad, lpad_mask, new_cache
from chatlm.engine.copy import CopyConstraint
from chatlm.engine.decode import IncrementalDecoder, StopMatcher
from chatlm.engine.generation import Generation
from chatlm.engine.lora import RowAdapters
from chatlm.engine.params import SamplingParams
from chatlm.engine.prefixes import PrefixCache
from chatlm.engine.sampling import make_generator, sample_rows
from chatlm.errors import BusyError, ChatLMError, InputError
from chatlm.torch_threads import use_all_cores

log = logging.getLogger(__name__)


class Scheduler:
    """Owns the model in one background thread and decodes every active request together."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        eos_ids: Sequence[int],
        context_window: int,
        max_batch: int = 8,
        queue_size: int = 32,
        pad_id: int = 0,
        prefill_chunk: int = 256,
        prefix_cache: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.context_window = context_window
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.pad_id = pad_id
        self.prefill_chunk = max(1, prefill_chunk)
        """Prompt tokens (rows x columns) run between two decoding steps."""
        self._fill: Fill | None = None
        self._admitting = 0
        """Requests taken from the queue whose prefill is being set up (outside the lock: a shared
        prefix may run the model), still counted against the batch, so that ``submit`` does not
        take more than the batch and the queue hold (it took 11 for 8 while a prefix was made)."""
        self.device = next(model.parameters()).device
        self.prefixes = PrefixCache(model.config, self.device, enabled=prefix_cache)
        self._pending: deque[tuple[Generation, list[int]]] = deque()
        self._copies: dict[int, CopyConstraint] = {}
        """Copy constraints of queued requests, by generation id, until they are admitted."""
        self._tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._rows: list[Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.adapters = RowAdapters(model)
        """The LoRA adapters loaded into the model; each forward names every row's."""

    # ---- public API -------------------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="chatlm-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, adapter: str | None = None,
        copy: CopyConstraint | None = None,
    ) -> Generation:
        """Queue a request; raise BusyError when the wait queue is full, InputError if too long.
        With ``copy``, the answer is a span copied from that constraint's passages."""
        prompt = list(prompt_ids)
        if not prompt:
            raise InputError("The prompt is empty.")
        room = self.context_window - len(prompt)
        if room < 1:
            raise InputError(
                f"The prompt has {len(prompt)} tokens; the context window is "
                f"{self.context_window}. Shorten the message."
            )
        if params.max_new_tokens > room:
            params = SamplingParams(**{**params.__dict__, "max_new_tokens": room})
        gen = Generation(id=next(self._ids), prompt_tokens=len(prompt), params=params,
                         adapter=adapter)
        with self._cv:
            if self._stopping:
                raise ChatLMError("The generation engine is shutting down.")
            waiting = len(self._pending) - max(0, self.max_batch - self._seated())
            if waiting >= self.queue_size:
                raise BusyError(
                    f"The server is busy ({len(self._rows)} answers running, "
                    f"{len(self._pending)} waiting); retry shortly."
                )
            gen.submitted_at = time.perf_counter()  # admitted now: a slot freed while it waited
            self._pending.append((gen, prompt))     # for the lock ended before this
            if copy is not None:
                self._copies[gen.id] = copy
            self._cv.notify_all()
        self.start()
        return gen

    def call(self, fn: Callable[[], Any], timeout: float = 120) -> Any:
        """Run ``fn`` on the scheduler thread between two decoding steps (e.g. to change the
        model's adapters without racing a forward pass) and return its result."""
        future: Future[Any] = Future()
        with self._cv:
            self._tasks.append((fn, future))
            self._cv.notify_all()
        self.start()
        return future.result(timeout=timeout)

    @property
    def active(self) -> int:
        return len(self._rows)

    def _seated(self) -> int:
        """Rows decoding, rows being prefilled, and rows taken from the queue whose prefill is being
        set up: the batch slots in use."""
        return len(self._rows) + (len(self._fill.admit) if self._fill is not None else 0) + self._admitting

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # ---- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        use_all_cores()
        while True:
            with self._cv:
                while not (self._stopping or self._pending or self._rows or self._tasks or self._fill):
                    self._cv.wait()
                if self._stopping:
                    break
                tasks = list(self._tasks)
                self._tasks.clear()
                if any(gen.cancelled for gen, _ in self._pending):  # Stop on a queued answer ends it now
                    for gen, _ in self._pending:
                        if gen.cancelled:
                            gen._finish("cancelled")
                    self._pending = deque(p for p in self._pending if not p[0].cancelled)
                admit: list[tuple[Generation, list[int]]] = []
                while self._fill is None and self._pending and self._seated() + len(admit) < self.max_batch:
                    gen, prompt = self._pending.popleft()
                    if gen.cancelled:
                        gen._finish("cancelled")
                    else:
                        admit.append((gen, prompt))
                self._admitting = len(admit)
            for fn, future in tasks:
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    if admit:
                        self._fill = self._start_fill(admit)
                    self._admitting = 0  # counted in the fill now (counted twice a moment: refuses, never over-takes)
                    while self._fill is not None:  # nothing decoding: no reason to pause between chunks
                        self._prefill_chunk()
                        if self._rows:
                            break
                    if self._rows:
                        self._decode_step()
            except Exception as exc:
                log.exception("generation step failed")
                for row in self._rows:
                    row.gen._finish("error", f"Generation failed: {exc}")
                for gen, _ in admit + (self._fill.admit if self._fill is not None else []):
                    gen._finish("error", f"Generation failed: {exc}")
                self._rows, self._cache, self._mask, self._fill = [], None, None, None
                self._admitting = 0
        for row in self._rows:
            row.gen._finish("cancelled")
        for gen, _ in list(self._pending) + (self._fill.admit if self._fill is not None else []):
            gen._finish("cancelled")

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any, adapters: list[str | None]) -> tuple[torch.Tensor, Any]:
        with self.adapters.rows(adapters):
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1,
            )
        return out.logits[:, -1, :], out.cache

    def _start_fill(self, admit: list[tuple[Generation, list[int]]]) -> Fill:
        prefix = self.prefixes.shared(admit, self._forward)
        cache = new_cache(self.model.config)
        offset = 0
        if prefix is not None:
            offset = prefix[0][0].shape[2]
            for layer, (keys, values) in enumerate(prefix):
                cache.update(keys.expand(len(admit), -1, -1, -1), values.expand(len(admit), -1, -1, -1), layer)
        rests = [p[offset:] for _, p in admit]
        width = max(len(r) for r in rests)
        ids = torch.full((len(admit), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(admit), offset + width), dtype=torch.long)
        mask[:, :offset] = 1
        for i, rest in enumerate(rests):
            ids[i, width - len(rest):] = torch.tensor(rest)
            mask[i, offset + width - len(rest):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, offset:]
        return Fill(admit, ids.to(self.device), mask.to(self.device), positions.to(self.device),
                    cache, offset=offset)

    def _prefill_chunk(self) -> None:
        """Run the next columns of the prompts being prefilled; after the last, they join."""
        fill = self._fill
        assert fill is not None
        if all(g.cancelled for g, _ in fill.admit):  # Stop while a long prompt is read: no waiting for it
            for g, _ in fill.admit:
                g._finish("cancelled")
            self._fill = None
            return
        width = fill.ids.shape[1]
        end = min(width, fill.done + max(1, self.prefill_chunk // len(fill.admit)))
        logits, fill.cache = self._forward(
            fill.ids[:, fill.done:end], fill.mask[:, :fill.offset + end], fill.positions[:, fill.done:end],
            fill.cache, [g.adapter for g, _ in fill.admit])
        fill.done = end
        for g, p in fill.admit:  # a row's prompt starts at column width - (its length past the prefix)
            g.prefilled = fill.offset + max(0, end - (width - (len(p) - fill.offset)))
        if end < width:
            return
        self._fill = None
        self._prefill(fill.admit, logits, fill.cache, fill.mask)

    def _prefill(self, admit: list[tuple[Generation, list[int]]], logits: torch.Tensor, cache: Any,
                 mask: torch.Tensor) -> None:
        """Seat prefilled prompts in the batch and sample their first tokens."""
        new_rows = [
            Row(gen=g, decoder=IncrementalDecoder(self.tokenizer, prompt_tail=p[-4:]),
                 stops=StopMatcher(g.params.stop), rng=make_generator(g.params),
                 copy=self._copies.pop(g.id, None))
            for g, p in admit
        ]
        self._merge(new_rows, cache, mask)
        start = len(self._rows) - len(new_rows)
        self._accept(logits, range(start, len(self._rows)))

    def _merge(self, rows: list[Row], cache: Any, mask: torch.Tensor) -> None:
        """Left-pad the old batch or the new rows to a common length and stack them."""
        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        assert self._mask is not None
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        target = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            old_layer.keys = torch.cat([lpad(old_layer.keys, target),
                                        lpad(new_layer.keys, target)], 0)
            old_layer.values = torch.cat([lpad(old_layer.values, target),
                                          lpad(new_layer.values, target)], 0)
        self._mask = torch.cat([lpad_mask(self._mask, target), lpad_mask(mask, target)], 0)
        self._rows.extend(rows)

    def _decode_step(self) -> None:
        assert self._mask is not None
        ids = torch.tensor([[r.last_token] for r in self._rows], device=self.device)
        positions = self._mask.sum(-1, keepdim=True)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], 1)
        logits, self._cache = self._forward(
            ids, self._mask, positions, self._cache, [r.gen.adapter for r in self._rows]
        )
        self.steps += 1
        self._accept(logits, range(len(self._rows)))

    def _accept(self, logits: torch.Tensor, rows: range) -> None:
        """Sample the next token of the given rows, stream it, and drop finished rows."""
        chosen = [self._rows[i] for i in rows]  # logits row j belongs to chosen[j]
        logits = constrain(logits, chosen)
        tokens = sample_rows(logits, [r.gen.params for r in chosen], [r.rng for r in chosen])
        finished: list[int] = []
        for i, (row, tok) in zip(rows, zip(chosen, tokens, strict=True), strict=True):
            gen = row.gen
            row.last_token = tok
            if row.copy is not None:
                if row.first_logprobs is not None:
                    gen.span_logprob = float(row.first_logprobs[tok])
                    row.first_logprobs = None
                row.copy.advance(tok)
            if gen.first_token_at is None:
                gen.first_token_at = time.perf_counter()
            if tok in self.eos_ids:
                gen._emit(row.stops.flush())
                gen._finish("stop")
                finished.append(i)
                continue
            gen.completion_tokens += 1
            gen._emit(row.stops.feed(row.decoder.push(tok)))
            if row.stops.stopped:
                gen._finish("stop")
            elif gen.completion_tokens >= gen.params.max_new_tokens:
                gen._emit(row.stops.flush())
                gen._finish("length")
            elif gen.cancelled:
                gen._emit(row.stops.flush())
                gen._finish("cancelled")
            else:
                continue
            finished.append(i)
        self._remove(finished)

    def _drop_cancelled(self) -> None:
        gone = [i for i, r in enumerate(self._rows) if r.gen.cancelled]
        for i in gone:
            self._rows[i].gen._emit(self._rows[i].stops.flush())
            self._rows[i].gen._finish("cancelled")
        self._remove(gone)

    def _remove(self, indices: list[int]) -> None:
        """Free the rows' batch slots and caches, and trim padding no remaining row needs."""
        if not indices:
            return
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._mask is not None
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        lead = int((mask.cumsum(-1) == 0).sum(-1).min().item())
        self._mask = mask[:, lead:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, lead:, :]
            layer.values = layer.values.index_select(0, index)[:, :, lead:, :]

