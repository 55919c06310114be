"""Learn a document: a round that trains a LoRA adapter on one text itself, with the causal-LM loss
on every token, and judges it by the perplexity of windows of that text it never trained on.

The text is a document stored in the library (what a chat loaded) or a file read by the app's own
parser, so a file and the same file loaded in a chat give the same words. It is cut into windows of
the model's tokens; every tenth window (at least one) is held out. The cut depends on the text, the
tokenizer and the window size only, so ``eval perplexity --heldout`` finds the same held-out windows.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatlm.config import Settings
from chatlm.errors import InputError
from chatlm.feedback import records
from chatlm.store.models import Document
from chatlm.training.data import Counts, Heldout, RoundData
from chatlm.training.options import WINDOW

HOLDOUT_EVERY = 10
BATCH = 4


def read_text_file(path: Path) -> str:
    """A file's text as the library reads an upload (.txt, .md, .html, .pdf; size-capped)."""
    from chatlm.knowledge.parse import parse_bytes

    if not path.is_file():
        raise InputError(f"No file at {path}.")
    return parse_bytes(path.read_bytes(), path.name)


def _stored(session: Session, document_id: int) -> Document:
    doc = session.get(Document, document_id)
    if doc is not None:
        return doc
    known = list(session.scalars(select(Document).order_by(Document.id).limit(10)))
    hint = ("stored texts: " + ", ".join(f"{d.id} ({d.name})" for d in known) if known else
            "no text is stored yet: load one in a chat, or use --text FILE")
    raise InputError(f"No document with id {document_id}; {hint}.")


def source_text(session: Session, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(description, text) of the round's text; a file that changed since the round was started is
    refused, so the round trains on the text that was checked."""
    if params.get("document") is not None:
        doc = _stored(session, int(params["document"]))
        about: dict[str, Any] = {"document_id": doc.id, "name": doc.name}
        text = doc.text
    else:
        path = Path(str(params["text"]))
        text = read_text_file(path)
        about = {"file": str(path), "name": path.name}
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if params.get("text_sha256") not in (None, digest):
        raise InputError(f"{about['name']} changed after the round was started; start it again.")
    return {**about, "sha256": digest}, text


def load_tokenizer(settings: Settings) -> Any:
    """The configured model's tokenizer alone (checking a text needs no weights)."""
    from transformers import AutoTokenizer

    from chatlm.engine import loader

    source = loader.resolve(settings.model, settings.device)
    return AutoTokenizer.from_pretrained(loader.local_path(source, Path(settings.data_dir)))


def windows(tokenizer: Any, text: str, window: int = WINDOW) -> list[str]:
    """The text cut at token boundaries into pieces of ``window`` tokens that together are the
    whole text; a tail under half a window joins the window before it."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts: list[int] | None = [a for a, _ in enc["offset_mapping"]]
        ids = enc["input_ids"]
    except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer has no offsets
        starts, ids = None, tokenizer(text, add_special_tokens=False)["input_ids"]
    cuts = list(range(0, len(ids), window))
    if len(cuts) > 1 and len(ids) - cuts[-1] < window // 2:
        cuts.pop()
    if starts is None:
        ends = [*cuts[1:], len(ids)]
        return [tokenizer.decode(ids[a:b]) for a, b in zip(cuts, ends, strict=True)]
    bounds = [0 if i == 0 else starts[c] for i, c in enumerate(cuts)] + [len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b].strip()]


def split(pieces: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train, held-out): every HOLDOUT_EVERY-th window, or the last one when there are fewer."""
    held = {i for i in range(len(pieces)) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1} or {len(pieces) - 1}
    return ([p for i, p in enumerate(pieces) if i not in held], [p for i, p in enumerate(pieces) if i in held])


def build_round(session: Session, settings: Settings, params: dict[str, Any], tokenizer: Any = None) -> RoundData:
    """The round's data: language-modelling records of the training windows, held-out windows for
    perplexity. A text too short for one window of each is refused."""
    about, text = source_text(session, params)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings)
    window = int(params.get("window") or WINDOW)
    pieces = windows(tokenizer, text, window)
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(pieces) < 2:
        raise InputError(f"{about['name']} is {tokens} tokens long: too short to learn and hold out a part. "
                         f"A document round needs at least {window + window // 2} tokens "
                         f"({window}-token windows; try a smaller --window).")
    train, held = split(pieces)
    train_recs, held_recs = [{"text": p} for p in train], [{"text": p} for p in held]
    jsonl = records.to_jsonl(train_recs) + records.to_jsonl(held_recs)
    source = {**about, "tokens": tokens, "window": window, "windows": len(pieces), "heldout_windows": len(held)}
    return RoundData(method="document", train=train_recs, heldout=Heldout(texts=held), counts=Counts(),
                     dataset_hash=hashlib.sha256(jsonl.encode()).hexdigest(), jsonl=jsonl, source=source)


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = BATCH,
               progress: bool = False) -> tuple[float, int]:
    """(exp of the mean per-token negative log-likelihood, tokens scored) of the model as it is now
    over ``texts``, each tokenised as the trainer tokenises a window; one figure for rounds and CLI."""
    import torch
    from tqdm import tqdm

    device = next(model.parameters()).device
    encoded = [list(tokenizer(text=t)["input_ids"]) for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll, count = 0.0, 0
    bar = tqdm(total=len(encoded), desc="perplexity", unit="window", file=sys.stderr, disable=not progress)
    with torch.no_grad(), bar:
        for b in range(0, len(encoded), batch_size):
            batch = [ids for ids in encoded[b:b + batch_size] if len(ids) >= 2]
            bar.update(min(batch_size, len(encoded) - b))
            if not batch:
                continue
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, seq in enumerate(batch):
                ids[row, :len(seq)] = labels[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
            targets = labels[:, 1:].to(device)
            nll += float(torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                           targets.reshape(-1), ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    if not count:
        raise InputError("The text is too short to measure: it needs at least two tokens.")
    return math.exp(nll / count), count
