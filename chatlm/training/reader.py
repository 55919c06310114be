"""Reader rounds: real SQuAD questions become SFT records that teach the model to read.

A record is exactly what the chat sends for a factoid question about a loaded text: the system
prompt, then ``grounded_question(question, passages, short=True)`` with the passages the app's own
retrieval (``Library``) finds in the article, so training sees what inference sees. The completion
is the gold span (as the copy constraint can give it: no leading article), or the decline
(``NOT_FOUND``) for

- SQuAD's unanswerable questions,
- answerable questions whose retrieved passages miss the answer (the reader cannot know it), and
- answerable questions paired with other passages of the same article that do not hold the
  answer (``NEGATIVE_SHARE`` of them): the decline must be learnt from text that looks relevant.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatlm.chat.prompts import NOT_FOUND, grounded_question
from chatlm.config import Settings
from chatlm.knowledge.squad import Article, Question, load_squad

PASSAGES = 3
"""Passages per question, as the chat retrieves (``ChatService.send``'s k)."""
NEGATIVE_SHARE = 0.25
"""Share of answerable questions also asked over passages that lack the answer."""
HELDOUT = 40
"""Records kept out of training to measure the round on (loss on gold spans and declines)."""
_ARTICLE = re.compile(r"^(the|a|an)\s+", re.IGNORECASE)

Record = dict[str, Any]


def span_target(answer: str) -> str:
    """A gold answer as the chat's copy constraint can give it: no leading article, no end stop."""
    return _ARTICLE.sub("", answer.strip()).rstrip(".,;:").strip() or answer.strip()


def record(system_prompt: str, question: str, passages: list[tuple[int, str, str]], target: str) -> Record:
    """One prompt-completion record (the loss covers the completion only)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    user = {"role": "user", "content": grounded_question(question, passages, short=True)}
    return {"prompt": [*system, user], "completion": [{"role": "assistant", "content": target}]}


def in_round_order(articles: Sequence[Article], seed: int = 42) -> list[list[Question]]:
    """Each article's questions in the order a reader round reads them: shuffled with ``seed`` by a
    generator of their own, so the order never hangs on other draws (it once hung on the
    negative-passage draws of earlier articles, and a round that skipped what an earlier one read
    re-read some of it: the shipped reader's second round, 92 of its first round's questions)."""
    order = random.Random(seed)
    out = []
    for article in articles:
        questions = list(article.questions)
        order.shuffle(questions)
        out.append(questions)
    return out


def reader_records(squad: Path, settings: Settings, chat: Any, *, limit: int | None = None, skip: int = 0,
                   seed: int = 42, progress: bool = True) -> tuple[list[Record], dict[str, int]]:
    """SFT records from a SQuAD file (``limit`` questions per article at most) and their mix.

    ``chat``: a ``ChatService`` over a throwaway database, no model needed (the worker makes it with
    ``chatlm.compose.scratch``); each article is loaded into a chat of its own there.
    The questions of an article are shuffled with ``seed``; ``skip`` leaves out the first ones, so a
    round that continues an earlier one (same seed) reads questions that one did not
    (``in_round_order``)."""
    from tqdm import tqdm

    rng = random.Random(f"{seed}:negatives")
    articles = load_squad(squad)
    records: list[Record] = []
    mix: Counter[str] = Counter()
    actor = chat.actor()
    total = sum(len(a.questions[skip:][:limit]) for a in articles)
    bar = tqdm(total=total, desc="reader records", unit="q", disable=not progress)
    for article, questions in zip(articles, in_round_order(articles, seed), strict=True):
        conv = chat.new_conversation(actor)
        chat.library.load(actor=actor, conversation_id=conv.id, name=article.title, text=article.text)
        chat.library.wait_for_embeddings()
        for q in questions[skip:][:limit]:
            bar.update(1)
            wide = chat.library.retrieve(conv.id, q.question, k=PASSAGES + 6)
            top = wide[:PASSAGES]
            numbered = [(i + 1, p.document, p.text) for i, p in enumerate(top)]
            if q.is_impossible:
                records.append(record(settings.system_prompt, q.question, numbered, NOT_FOUND))
                mix["unanswerable"] += 1
                continue
            texts = [p.text for p in top]
            gold = next((a for a in q.answers if any(a in t for t in texts)), None)
            if gold is None:
                records.append(record(settings.system_prompt, q.question, numbered, NOT_FOUND))
                mix["answer_not_retrieved"] += 1
                continue
            records.append(record(settings.system_prompt, q.question, numbered, span_target(gold)))
            mix["span"] += 1
            if rng.random() < NEGATIVE_SHARE:
                others = [p for p in wide if not any(a in p.text for a in q.answers)][:PASSAGES]
                if len(others) == PASSAGES:
                    negative = [(i + 1, p.document, p.text) for i, p in enumerate(others)]
                    records.append(record(settings.system_prompt, q.question, negative, NOT_FOUND))
                    mix["negative_passages"] += 1
    bar.close()
    rng.shuffle(records)
    return records, dict(mix)


def build_round(settings: Settings, params: dict[str, Any], chat: Any) -> Any:
    """The ``RoundData`` of a reader round (``params["reader_data"]``: a SQuAD training file), its
    records retrieved through ``chat`` (see ``reader_records``)."""
    from chatlm.feedback.records import to_jsonl
    from chatlm.training.data import Counts, Heldout, RoundData

    squad = Path(str(params["reader_data"]))
    records, mix = reader_records(squad, settings, chat, limit=params.get("reader_limit"),
                                  skip=int(params.get("reader_skip") or 0),
                                  seed=int(params.get("seed") or 42), progress=False)
    held = records[:HELDOUT] if len(records) > 4 * HELDOUT else records[:max(1, len(records) // 5)]
    train = records[len(held):]
    jsonl = to_jsonl(train) + to_jsonl(held)
    return RoundData(method="reader", train=train, heldout=Heldout(liked=held, prompts=len(held)),
                     counts=Counts(sft=len(records)), dataset_hash=hashlib.sha256(jsonl.encode()).hexdigest(),
                     jsonl=jsonl, source={"reader_data": str(squad), "mix": mix, "records": len(records),
                                          "sha256": hashlib.sha256(squad.read_bytes()).hexdigest()})

