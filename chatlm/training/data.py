"""A round's dataset from stored feedback: pick the method, hold out items for evaluation, weigh KTO.

Every user's ratings count; conversations marked "exclude from training" never do. The split is by
prompt hash, so it is the same every time the same data is read, and all answers to one prompt fall
on the same side (no pair trains on a prompt that also judges it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from chatlm.errors import ChatLMError
from chatlm.feedback import load, records
from chatlm.feedback.records import RatedAnswer
from chatlm.training import METHODS

MIN_DPO = 8
"""Preference pairs needed for DPO (liked vs disliked answers of one turn, or better answers)."""
MIN_KTO = 8
"""Rated answers needed for KTO, with at least one liked and one disliked."""
MIN_SFT = 4
"""Liked or corrected answers needed for SFT."""
HELDOUT_PERCENT = 20
KTO_RATIO = (1.0, 4 / 3)
"""TRL's advice: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in this range."""

Record = dict[str, Any]


class NotEnoughDataError(ChatLMError):
    code = "not_enough_data"


@dataclass
class Counts:
    """How much of each kind of training data there is (before the held-out split)."""

    pairs: int = 0
    liked: int = 0
    disliked: int = 0
    sft: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"pairs": self.pairs, "liked": self.liked, "disliked": self.disliked, "sft": self.sft}


@dataclass
class Heldout:
    """Evaluation items in every shape the metrics need, whatever the training method."""

    pairs: list[Record] = field(default_factory=list)
    """DPO records: prompt, chosen, rejected."""
    rated: list[Record] = field(default_factory=list)
    """KTO records: prompt, completion, label (True = liked)."""
    liked: list[Record] = field(default_factory=list)
    """Prompt-completion records of liked answers and written better answers."""
    prompts: int = 0
    """Distinct held-out prompts."""
    texts: list[str] = field(default_factory=list)
    """Held-out windows of a document round's text (scored by perplexity)."""

    def within(self, keep: Callable[[list[dict[str, str]]], bool]) -> Heldout:
        """The items whose prompt ``keep`` accepts: a corrections adapter is judged on the held-out
        questions it answers (the others its baseline answers, as before)."""
        pairs, rated, liked = ([r for r in items if keep(r["prompt"])]
                               for items in (self.pairs, self.rated, self.liked))
        prompts = {json.dumps(r["prompt"], sort_keys=True, ensure_ascii=False) for r in [*pairs, *rated, *liked]}
        return Heldout(pairs, rated, liked, len(prompts), list(self.texts))


@dataclass
class RoundData:
    method: str
    train: list[Record]
    heldout: Heldout
    counts: Counts
    dataset_hash: str
    """sha256 of the round's JSONL (training records of the method, then held-out ones)."""
    jsonl: str
    kto_weights: tuple[float, float] | None = None
    """(desirable_weight, undesirable_weight) for KTO."""
    source: dict[str, Any] | None = None
    """A document round's text: its name, id or file, sha256, tokens and windows."""
    knowledge: bool = False
    """Most rated answers are about loaded texts: the round continues from the reader adapter."""
    corrections: list[tuple[list[dict[str, str]], str]] = field(default_factory=list)
    """(prompt, the better answer a user wrote) of the training set: what the round must learn."""
    liked: list[tuple[list[dict[str, str]], str]] = field(default_factory=list)
    """(prompt, a liked answer) of the training set: what the round must keep."""

    def summary(self) -> dict[str, Any]:
        out = {"method": self.method, "train": len(self.train), "heldout_prompts": self.heldout.prompts,
               "counts": self.counts.as_dict(), "dataset_hash": self.dataset_hash,
               "kto_weights": list(self.kto_weights) if self.kto_weights else None}
        return {**out, "document": self.source} if self.source else out


def _prompt_key(answer: RatedAnswer) -> str:
    return hashlib.sha256(json.dumps(answer.prompt, ensure_ascii=False).encode()).hexdigest()


def split(answers: Sequence[RatedAnswer]) -> tuple[list[RatedAnswer], list[RatedAnswer]]:
    """(train, held-out): the HELDOUT_PERCENT of prompts with the lowest hashes (at least one when
    there are two prompts), so the split is exact in size and the same for the same data. A prompt
    with a written better answer always trains: a correction is what the user asked the model to
    learn, not a sample to judge it by (held out, a fifth of them were never learnt)."""
    corrected = {_prompt_key(a) for a in answers if a.better_answer}
    keys = sorted({_prompt_key(a) for a in answers} - corrected)
    n = max(1, round(len(keys) * HELDOUT_PERCENT / 100)) if len(keys) >= 2 else 0
    held = set(keys[:n])
    return ([a for a in answers if _prompt_key(a) not in held],
            [a for a in answers if _prompt_key(a) in held])


def _as_prompt_completion(rec: Record) -> Record:
    """SFT records as prompt + completion, so the loss covers the answer only."""
    msgs = rec["messages"]
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def method_records(method: str, answers: Sequence[RatedAnswer]) -> list[Record]:
    recs, _ = records.build(method, answers)
    return [_as_prompt_completion(r) for r in recs] if method == "sft" else recs


def count(answers: Sequence[RatedAnswer]) -> Counts:
    """The method thresholds' view of ``records.contribution`` (liked counts KTO's desirable
    records: liked answers and better answers)."""
    c = records.contribution(answers)
    return Counts(pairs=c.pairs, liked=c.liked + c.better, disliked=c.disliked, sft=c.sft)


def _needs(c: Counts) -> dict[str, str]:
    return {
        "dpo": f"DPO needs {MIN_DPO} preference pairs (a liked and a disliked answer to the same "
               f"question, or a disliked answer with a written better answer); there are {c.pairs}",
        "kto": f"KTO needs {MIN_KTO} rated answers with at least one liked and one disliked; there are "
               f"{c.liked + c.disliked} ({c.liked} liked, {c.disliked} disliked)",
        "sft": f"SFT needs {MIN_SFT} liked or corrected answers; there are {c.sft}",
    }


def _enough(method: str, c: Counts) -> bool:
    if method == "dpo":
        return c.pairs >= MIN_DPO
    if method == "kto":
        return c.liked >= 1 and c.disliked >= 1 and c.liked + c.disliked >= MIN_KTO
    return c.sft >= MIN_SFT


def choose_method(requested: str, c: Counts, *, knowledge: bool = False, corrections: bool = False) -> str:
    """DPO when there are enough pairs, else KTO, else SFT; too little data is a clear error.
    ``knowledge`` (most rated answers are about a loaded text): SFT first. A correction there is the
    span (or the decline) to copy, and on 160 rated questions of one shared article SFT lifted the
    other article's F1 from 14.2 to 18.4 in 3 minutes of training at 2.6 GB, where DPO on the same
    ratings changed no answer in 4 minutes at 4.3 GB (``bench/knowledge_round.py``).
    ``corrections`` (written better answers are most of the ratings): SFT first too, as
    what the user asked for is that answer, word for word (``bench/corrections.py chat``)."""
    if requested not in METHODS:
        raise ChatLMError(f"The training method must be one of {', '.join(METHODS)}, not {requested!r}.")
    if requested == "document":  # its data is a text, read by chatlm.training.document
        raise ChatLMError("A document round trains on a text, not on ratings: give it --document or --text.")
    needs = _needs(c)
    if requested != "auto":
        if not _enough(requested, c):
            raise NotEnoughDataError(f"Not enough feedback to train: {needs[requested]}.")
        return requested
    for method in ("sft", "dpo", "kto") if knowledge or corrections else ("dpo", "kto", "sft"):
        if _enough(method, c):
            return method
    raise NotEnoughDataError("Not enough feedback to train. " + "; ".join(needs.values()) + ". "
                             "Rate more answers (thumbs up/down, or write a better answer).")


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """Weights that bring the weighted liked/disliked ratio into TRL's recommended range."""
    if not n_desirable or not n_undesirable:
        return 1.0, 1.0
    ratio = n_desirable / n_undesirable
    low, high = KTO_RATIO
    middle = (low + high) / 2
    if ratio < low:  # more disliked than liked: weigh liked answers up
        return round(middle / ratio, 4), 1.0
    if ratio > high:  # more liked: weigh disliked answers up
        return 1.0, round(ratio / middle, 4)
    return 1.0, 1.0


def heldout_views(answers: Sequence[RatedAnswer]) -> Heldout:
    return Heldout(pairs=method_records("dpo", answers), rated=method_records("kto", answers),
                   liked=method_records("sft", answers), prompts=len({_prompt_key(a) for a in answers}))


def build_round(session: Session, method: str = "auto", *, guests: bool = False) -> RoundData:
    """Read all usable feedback and prepare the round (raises NotEnoughDataError when too little).
    Guests' ratings count only when the admin asks (``guests``): anyone can be a guest."""
    answers = [a for a in load.rated_answers(session, guests=guests) if not a.excluded]
    return prepare(answers, method)


def prepare(answers: Sequence[RatedAnswer], method: str = "auto") -> RoundData:
    counts = count(answers)
    knowledge = sum(a.knowledge for a in answers) * 2 > len(answers)
    corrected = sum(bool(a.better_answer) for a in answers) * 2 > len(answers)
    chosen = choose_method(method, counts, knowledge=knowledge, corrections=corrected)
    train_answers, held_answers = split(answers)
    train = method_records(chosen, train_answers)
    if not train:
        raise NotEnoughDataError(f"Every {chosen.upper()} record fell into the held-out set; rate answers "
                                 "to a few more questions.")
    heldout = heldout_views(held_answers)
    jsonl = records.to_jsonl(train) + records.to_jsonl(method_records(chosen, held_answers))
    weights = None
    if chosen == "kto":
        liked = sum(1 for r in train if r["label"])
        weights = kto_weights(liked, len(train) - liked)
    corrections = {_prompt_key(a): (a.prompt_messages, a.better_answer) for a in train_answers if a.better_answer}
    liked = {_prompt_key(a): (a.prompt_messages, a.answer) for a in train_answers
             if a.rating == 1 and _prompt_key(a) not in corrections}
    return RoundData(method=chosen, train=train, heldout=heldout, counts=counts,
                     dataset_hash=hashlib.sha256(jsonl.encode()).hexdigest(), jsonl=jsonl,
                     kto_weights=weights, knowledge=knowledge, corrections=list(corrections.values()),
                     liked=list(liked.values()))
