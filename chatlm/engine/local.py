"""The in-process backend: the loaded model, its chat template and the shared scheduler."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from chatlm.config import Settings
from chatlm.engine import adapters, loader, quantize
from chatlm.engine.backend import Backend, ChatMessages
from chatlm.engine.copy import CopyConstraint
from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams
from chatlm.engine.scheduler import Scheduler
from chatlm.errors import NotFoundError

CONTEXT_CAP = 8192


class LocalBackend(Backend):
    """Generates with a transformers model in this process; one scheduler shared by all callers."""

    supports_copy = True

    def __init__(self, loaded: loader.LoadedModel, *, context_window: int = 0, max_batch: int = 8,
                 queue_size: int = 32, prefix_cache: bool = True) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.model_id = loaded.model_id
        self._adapters: dict[str, Path] = {}
        limit = int(getattr(loaded.model.config, "max_position_embeddings", CONTEXT_CAP))
        self.context_window = min(context_window or limit, limit, CONTEXT_CAP)
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
        pad = self.tokenizer.pad_token_id
        self.scheduler = Scheduler(
            loaded.model, self.tokenizer, eos_ids=[i for i in eos_ids if i is not None],
            context_window=self.context_window, max_batch=max_batch, queue_size=queue_size,
            pad_id=pad if pad is not None else 0, prefix_cache=prefix_cache,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        mode = quantize.resolve(settings.quantize, loader.pick_device(settings.device)[0])
        loaded = loader.load(settings.model, Path(settings.data_dir), settings.device, quantize=mode)
        return cls(loaded, context_window=settings.context_window, max_batch=settings.max_batch,
                   queue_size=settings.queue_size)

    def encode(self, messages: ChatMessages, *, continue_final: bool = False) -> list[int]:
        """The prompt's tokens; ``continue_final``: the last (assistant) message is left open, so
        that generation goes on writing it (Continue after an answer was cut)."""
        ids = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=not continue_final, continue_final_message=continue_final,
            tokenize=True, return_dict=False,
        )
        return list(ids)

    def count_tokens(self, messages: ChatMessages) -> int:
        return len(self.encode(messages))

    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def load_adapter(self, name: str, path: Path) -> float:
        """Load (or reload) a LoRA adapter while serving; returns the seconds it took."""
        start = time.perf_counter()
        adapters.check_adapter(path, self.loaded.model, name)

        def swap() -> None:
            self.scheduler.adapters.load(name, path)
            self.scheduler.prefixes.forget()  # a reloaded adapter makes its cached prefixes stale

        self.scheduler.call(swap)
        self._adapters[name] = path
        return time.perf_counter() - start

    def unload_adapter(self, name: str) -> bool:
        """Stop serving an adapter (new requests naming it are refused). Its weights stay in the
        model until it is loaded again under that name: a row may still be decoding with them."""
        return self._adapters.pop(name, None) is not None

    def chat(self, messages: ChatMessages, params: SamplingParams, *,
             adapter: str | None = None, copy_from: Sequence[str] | None = None,
             avoid_first: Sequence[str] = (), continue_final: bool = False, decline: str = "",
             prefer: Sequence[int] = (), sure: float = float("inf")) -> Generation:
        """Start an answer; with ``copy_from`` it is a span copied from those passages (starting
        with none of the words ``avoid_first``; from the ``prefer`` passages unless the model's
        first token elsewhere has log-probability ``sure`` or more); ``decline`` (a reply that says
        the text does not answer) is scored against copying at the first step, as
        ``Generation.decline_score``, and its opening token starts no span."""
        if adapter is not None and adapter not in self._adapters:
            raise NotFoundError(f"No adapter named {adapter!r} is loaded.")
        copy = None
        if copy_from:
            copy = CopyConstraint.build(
                copy_from, encode=lambda t: self.tokenizer.encode(t, add_special_tokens=False),
                token_text=lambda i: self.tokenizer.decode([i]), eos_ids=self.scheduler.eos_ids,
                avoid_first=avoid_first, decline=decline, prefer=prefer, sure=sure)
        return self.scheduler.submit(self.encode(messages, continue_final=continue_final), params,
                                     adapter=adapter, copy=copy)

    def waiting(self) -> int:
        return self.scheduler.waiting

    def close(self) -> None:
        self.scheduler.close()
