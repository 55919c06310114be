"""Generation on any OpenAI-compatible server (vLLM, TGI, llama.cpp, another chatlm).

Storage, knowledge and ratings stay in this process; only the tokens come from elsewhere, which is
how a deployment outgrows one machine. A promoted adapter reaches the engine through vLLM's runtime
LoRA endpoints (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), which chatlm also serves.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from chatlm.config import Settings
from chatlm.engine.backend import Backend, ChatMessages
from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams
from chatlm.errors import AdapterError, ModelLoadError

CHARS_PER_TOKEN = 3
"""Remote servers do not tokenise for us; this conservative estimate drives context trimming."""
DEFAULT_CONTEXT = 8192


class RemoteBackend(Backend):
    """Streams chat completions from a remote server into the same ``Generation`` handles."""

    def __init__(self, base_url: str, *, api_key: str = "", model: str = "",
                 context_window: int = 0) -> None:
        import openai

        self.base_url, self.api_key = base_url.rstrip("/"), api_key
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=1)
        try:
            self._refresh()
        except openai.OpenAIError as exc:
            raise ModelLoadError(f"The remote backend at {base_url} did not answer: {exc}") from exc
        listed = self.remote_models
        if model and model not in listed:
            raise ModelLoadError(f"The remote backend has no model {model!r}; it has {listed}")
        if not listed:
            raise ModelLoadError(f"The remote backend at {base_url} lists no models")
        self.model_id = model or listed[0]
        self.context_window = context_window or DEFAULT_CONTEXT
        self._ids = itertools.count(1)

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteBackend:
        return cls(settings.remote_url, api_key=settings.remote_api_key,
                   model=settings.remote_model, context_window=settings.context_window)

    def count_tokens(self, messages: ChatMessages) -> int:
        return sum(len(m["content"]) // CHARS_PER_TOKEN + 4 for m in messages) + 2

    def adapter_names(self) -> list[str]:
        """The remote server's other models stand for adapters (chatlm lists them that way)."""
        return [m for m in self.remote_models if m != self.model_id]

    unload_on_switch = True
    """An engine holds few adapters at once (vLLM's ``--max-loras``): the one no longer active goes."""

    def load_adapter(self, name: str, path: Path) -> float:
        """Load a LoRA adapter into the engine through its runtime endpoint (vLLM started with
        ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, or another chatlm): ``path``
        must be on storage the engine sees at the same place. Requests then name it as the model."""
        start = time.perf_counter()
        answer = self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if answer.status_code >= 400 and "already been loaded" not in answer.text:
            raise AdapterError(f"The engine did not load adapter {name!r}: {answer.text.strip()[:500]}")
        self._refresh()
        if name not in self.remote_models:
            raise AdapterError(f"The engine says it loaded {name!r} but does not list it.")
        return time.perf_counter() - start

    def unload_adapter(self, name: str) -> bool:
        answer = self._post("/unload_lora_adapter", {"lora_name": name})
        self._refresh()
        return answer.status_code < 400

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        try:
            return httpx.post(f"{self.base_url}{path}", json=body, timeout=300,
                              headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        except httpx.HTTPError as exc:
            raise AdapterError(f"The engine at {self.base_url} did not answer: {exc}") from exc

    def _refresh(self) -> None:
        """What the engine serves now: its base model and the adapters loaded into it."""
        self.remote_models: list[str] = [m.id for m in self.client.models.list().data]

    def chat(self, messages: ChatMessages, params: SamplingParams, *,
             adapter: str | None = None, continue_final: bool = False) -> Generation:
        gen = Generation(id=next(self._ids), prompt_tokens=self.count_tokens(messages),
                         params=params, adapter=adapter)
        threading.Thread(target=self._run, args=(gen, list(messages), adapter, continue_final), daemon=True,
                         name=f"remote-{gen.id}").start()
        return gen

    def _run(self, gen: Generation, messages: list[Any], adapter: str | None, continue_final: bool) -> None:
        p = gen.params
        # vLLM's (and chatlm's) way to go on writing the last assistant message
        extra = {"continue_final_message": True, "add_generation_prompt": False} if continue_final else None
        try:
            stream = self.client.chat.completions.create(
                model=adapter or self.model_id, messages=messages, stream=True,
                stream_options={"include_usage": True}, temperature=p.temperature, top_p=p.top_p,
                max_tokens=p.max_new_tokens, stop=list(p.stop) or None, seed=p.seed, extra_body=extra,
            )
            finish = "stop"
            with stream:
                for chunk in stream:
                    if gen.cancelled:
                        gen._finish("cancelled")  # closing the stream stops the remote work
                        return
                    if chunk.usage is not None:
                        gen.prompt_tokens = chunk.usage.prompt_tokens
                        gen.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.delta.content:
                            if gen.first_token_at is None:
                                gen.first_token_at = time.perf_counter()
                            gen._emit(choice.delta.content)
                        if choice.finish_reason:
                            finish = "length" if choice.finish_reason == "length" else "stop"
            gen._finish("cancelled" if gen.cancelled else finish)
        except Exception as exc:
            gen._finish("error", f"The remote backend failed: {exc}")

    def close(self) -> None:
        self.client.close()
