"""Pure builders: rated answers -> SFT / KTO / DPO / messages records in TRL's formats.

The prompt of every record is what the model saw when it answered (system prompt, knowledge
passages, trimmed history), as stored with the answer, so grounded answers train with their
passages: an extractive answer (a span copied from the passages) on all of them, as the chat
quotes them. A free-form answer about a loaded text (stored before answers were extractive) trains
on the one passage that holds its target (``focus``), which keeps old ratings' long prompts within
a round's budget. Output is sorted and deduplicated, so the same data always gives the same file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatlm.chat.prompts import grounded_question, split_grounded

Message = dict[str, str]
FORMATS = ("messages", "sft", "kto", "dpo")


@dataclass(frozen=True)
class RatedAnswer:
    """One assistant answer with one user's current rating of it (if any)."""

    message_id: int
    conversation_id: int
    parent_id: int | None
    prompt: tuple[tuple[str, str], ...]
    """(role, content) pairs the model saw, in order."""
    answer: str
    rating: int | None = None
    better_answer: str | None = None
    excluded: bool = False
    """The conversation is marked as not to be used for training."""
    extractive: bool = False
    """A span copied from a loaded text's passages (or its decline)."""
    knowledge: bool = False
    """An answer to a question about a loaded text (its prompt quotes passages), extractive or not."""

    @property
    def prompt_messages(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.prompt]


@dataclass(frozen=True)
class Conversation:
    conversation_id: int
    messages: tuple[tuple[str, str], ...]
    excluded: bool = False


@dataclass
class ExportCounts:
    """How many records an exported dataset holds, and how many of them are liked or disliked."""

    records: int = 0
    desirable: int = 0
    undesirable: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.records} records"
        if self.desirable or self.undesirable:
            text += f" ({self.desirable} liked/desirable, {self.undesirable} disliked/undesirable)"
        return text


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def focus(prompt: tuple[tuple[str, str], ...], targets: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The prompt of an answer about a text cut to the passage holding the first of ``targets`` found
    in one (the correction, then the answer), else the best-ranked passage (a decline: the text did
    not say, judged from its closest passage). Any other prompt is returned as it is."""
    if not prompt or prompt[-1][0] != "user" or (parts := split_grounded(prompt[-1][1])) is None:
        return prompt
    question, passages = parts
    chosen = passages[0]
    for target in filter(None, map(_squash, targets)):
        found = next((p for p in passages if target in _squash(p[2])), None)
        if found is not None:
            chosen = found
            break
    return (*prompt[:-1], ("user", grounded_question(question, [chosen], short=True)))


def with_passage(prompt: tuple[tuple[str, str], ...], target: str,
                 texts: Callable[[], Sequence[tuple[str, str]]]) -> tuple[tuple[str, str], ...]:
    """The prompt of an extractive answer about a text, with the passage that holds ``target`` (a
    correction the passages quoted did not hold) in place of the last one: chosen among ``texts()``
    (``(document, chunk text)`` of the chat's documents, read only when the quoted passages lack
    the target) as the one sharing most of the question's words. A span no passage can show
    cannot be copied, so cannot be learnt. Any other prompt, or a target no text holds, is
    returned as it is."""
    wanted = _squash(target)
    if not wanted or not prompt or prompt[-1][0] != "user" or (parts := split_grounded(prompt[-1][1])) is None:
        return prompt
    question, passages = parts
    if any(wanted in _squash(p[2]) for p in passages):
        return prompt
    words = {w for w in _squash(question).split() if len(w) > 3}
    holding = [(doc, text) for doc, text in texts() if wanted in _squash(text)]
    if not holding:
        return prompt
    doc, text = max(holding, key=lambda h: len(words & set(_squash(h[1]).split())))
    last = passages[-1][0]
    changed = [*passages[:-1], (last, doc, text.strip())]
    return (*prompt[:-1], ("user", grounded_question(question, changed, short=True)))


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def messages_records(conversations: Iterable[Conversation]) -> list[dict[str, Any]]:
    return [{"messages": [{"role": r, "content": c} for r, c in conv.messages]}
            for conv in conversations if not conv.excluded and conv.messages]


def sft_records(answers: Iterable[RatedAnswer]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for a in answers:
        if a.excluded:
            continue
        if a.rating == 1:
            out.append({"messages": [*a.prompt_messages, _assistant(a.answer)]})
        if a.better_answer:
            out.append({"messages": [*a.prompt_messages, _assistant(a.better_answer)]})
    return out


def kto_records(answers: Iterable[RatedAnswer]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for a in answers:
        if a.excluded:
            continue
        if a.rating in (1, -1):
            out.append({"prompt": a.prompt_messages, "completion": [_assistant(a.answer)],
                        "label": a.rating == 1})
        if a.better_answer:
            out.append({"prompt": a.prompt_messages, "completion": [_assistant(a.better_answer)],
                        "label": True})
    return out


def dpo_records(answers: Iterable[RatedAnswer]) -> list[dict[str, Any]]:
    """Pairs mined from the data: liked vs disliked siblings of one turn (same parent and same
    prompt), and a written better answer vs the answer it replaced."""
    out: list[dict[str, Any]] = []
    turns: dict[tuple[int | None, tuple[tuple[str, str], ...]], list[RatedAnswer]] = defaultdict(list)
    for a in answers:
        if a.excluded:
            continue
        turns[(a.parent_id, a.prompt)].append(a)
        if a.better_answer and a.better_answer.strip() != a.answer.strip():
            out.append({"prompt": a.prompt_messages, "chosen": [_assistant(a.better_answer)],
                        "rejected": [_assistant(a.answer)]})
    for siblings in turns.values():
        liked = [a for a in siblings if a.rating == 1]
        disliked = [a for a in siblings if a.rating == -1]
        for good in liked:
            for bad in disliked:
                if good.answer.strip() != bad.answer.strip():
                    out.append({"prompt": good.prompt_messages, "chosen": [_assistant(good.answer)],
                                "rejected": [_assistant(bad.answer)]})
    return out


def build(fmt: str, answers: Sequence[RatedAnswer],
          conversations: Sequence[Conversation] = ()) -> tuple[list[dict[str, Any]], ExportCounts]:
    """Records of one format, deduplicated and in a stable order, with their counts."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    ordered = sorted(answers, key=lambda a: a.message_id)
    raw = {
        "messages": lambda: messages_records(sorted(conversations, key=lambda c: c.conversation_id)),
        "sft": lambda: sft_records(ordered),
        "kto": lambda: kto_records(ordered),
        "dpo": lambda: dpo_records(ordered),
    }[fmt]()
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    for rec in raw:
        key = json.dumps(rec, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            records.append(rec)
    counts = ExportCounts(records=len(records))
    if fmt == "kto":
        counts.desirable = sum(1 for r in records if r["label"])
        counts.undesirable = counts.records - counts.desirable
    return records, counts


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


@dataclass(frozen=True)
class Contribution:
    """What rated answers give training: the one definition the Feedback tab, the Training tab
    and the dataset downloads all show (their counts are the datasets' own, built the same way)."""

    ratings: int = 0
    liked: int = 0
    disliked: int = 0
    better: int = 0
    examples: int = 0
    """KTO's records: every rated answer and every written better answer (deduplicated)."""
    sft: int = 0
    """SFT's records: the liked answers and the better answers."""
    pairs: int = 0
    """DPO's records: a better and a worse answer to the same question."""

    def sentence(self) -> str:
        if not self.ratings:
            return "No ratings yet: rate answers with the thumbs up or down in the chat to make training examples."
        parts = [text for count, text in (
            (self.liked, _n(self.liked, "liked answer")), (self.disliked, _n(self.disliked, "disliked answer")),
            (self.better, f"your {_n(self.better, 'better answer')}")) if count]
        given = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
        return (f"Your {_n(self.ratings, 'rating')} ({self.liked} liked, {self.disliked} disliked"
                f"{f', {self.better} with a better answer' if self.better else ''}) "
                f"{'give' if self.ratings != 1 else 'gives'} **{_n(self.examples, 'training example')}**: "
                f"{given}. SFT learns from the liked and better answers ({self.sft}), KTO from all "
                f"{self.examples}, DPO from {_n(self.pairs, 'pair')} of a better and a worse answer "
                "to the same question.")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def contribution(answers: Sequence[RatedAnswer]) -> Contribution:
    """Count what ``answers`` give each training method (excluded conversations give nothing)."""
    kept = [a for a in answers if not a.excluded and (a.rating in (1, -1) or a.better_answer)]
    kto, _ = build("kto", kept)
    return Contribution(
        ratings=sum(1 for a in kept if a.rating in (1, -1)),
        liked=sum(1 for a in kept if a.rating == 1), disliked=sum(1 for a in kept if a.rating == -1),
        better=sum(1 for a in kept if a.better_answer), examples=len(kto),
        sft=len(build("sft", kept)[0]), pairs=len(build("dpo", kept)[0]))
