"""Everyday questions with known answers: does a chat round leave what the model knew alone?

A round on a handful of written corrections must move the model hard to learn them, and that can
change what nobody corrected ("The capital of France is Paris." became "L'Étoile." in
``bench/corrections.py chat``). No held-out rating says so when every rating was a correction (they
all train), so a chat round is also judged on these questions: how many the model answers right
before and after, by a word the right answer says. They are asked as the user's chats are (their
system prompt), greedily. Not the benchmark's own everyday questions: those judge the round from
outside.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatlm.training.data import RoundData

Messages = list[dict[str, str]]

QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (  # (question, words one of which a right answer says)
    ("What is the capital of Italy?", ("rome",)),
    ("How many days are in a week?", ("7", "seven")),
    ("What colour is grass?", ("green",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("What is the chemical formula of water?", ("h2o",)),
    ("Which animal is called the king of the jungle?", ("lion", "lions")),
    ("What is ten minus four?", ("6", "six")),
    ("Which season comes after winter?", ("spring",)),
    ("What gas do people need to breathe?", ("oxygen",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("How many continents are there?", ("7", "seven")),
    ("What is the tallest animal?", ("giraffe", "giraffes")),
    ("What does a caterpillar turn into?", ("butterfly", "moth")),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("At what temperature in Celsius does water freeze?", ("0", "zero")),
)
TOKENS = 48


def says(answer: str, words: Sequence[str]) -> bool:
    """Whether ``answer`` says one of ``words`` as a whole word (any case)."""
    said = set(re.findall(r"[\w-]+", answer.lower()))
    return any(w in said for w in words)


def asked_with(round_data: RoundData) -> Messages | None:
    """The system prompt a round's everyday questions are asked with (maybe none), or None when the
    round is not judged on them: it is not on ratings of chat answers (answers about texts, the
    reader, a document)."""
    if round_data.method not in ("sft", "dpo", "kto") or round_data.knowledge:
        return None
    return system_of([r["prompt"] for r in round_data.train if "prompt" in r])


def system_of(prompts: Sequence[Messages]) -> Messages:
    """The system message the user's chats were asked with (the first one found), if any."""
    for prompt in prompts:
        if prompt and prompt[0].get("role") == "system":
            return [dict(prompt[0])]
    return []
