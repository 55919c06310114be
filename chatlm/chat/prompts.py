"""Prompt assembly: system prompt plus as much recent history as the context window holds."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chatlm.errors import InputError

ChatMessage = dict[str, str]
MIN_ANSWER_TOKENS = 16


@dataclass(frozen=True)
class PromptPlan:
    messages: list[ChatMessage]
    """What the model sees, in order."""
    dropped: int
    """How many of the oldest history messages were left out to fit."""
    prompt_tokens: int


def answer_reserve(context_window: int, max_new_tokens: int) -> int:
    """Tokens kept free for the answer: what was asked, but never more than a quarter."""
    return max(MIN_ANSWER_TOKENS, min(max_new_tokens, context_window // 4))


def fit_history(
    system_prompt: str,
    history: Sequence[ChatMessage],
    *,
    count_tokens: Callable[[list[ChatMessage]], int],
    context_window: int,
    max_new_tokens: int,
) -> PromptPlan:
    """Drop the oldest turns (never the system prompt or the newest message) until it fits."""
    if not history:
        raise InputError("There is no message to answer.")
    budget = context_window - answer_reserve(context_window, max_new_tokens)
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    start = 0
    while True:
        messages = system + [dict(m) for m in history[start:]]
        tokens = count_tokens(messages)
        if tokens <= budget:
            return PromptPlan(messages=messages, dropped=start, prompt_tokens=tokens)
        if start >= len(history) - 1:
            raise InputError(
                f"This message is too long for the model: it needs {tokens} tokens with the "
                f"system prompt, and at most {budget} fit in the context window of "
                f"{context_window}. Shorten it."
            )
        start += 1
        # keep turns whole: never start the kept history on an assistant message
        while start < len(history) - 1 and history[start]["role"] == "assistant":
            start += 1


NOT_FOUND = "I could not find that in the document."
GROUNDED_PREFIX = "Passages:\n\n"
"""How a question about loaded documents starts (``grounded_question``); evaluation finds them by it."""


def grounded_question(question: str, passages: Sequence[tuple[int, str, str]], *,
                      short: bool = False) -> str:
    """The user turn for a question about loaded documents: numbered passages ``(n, document,
    text)``, the question, and the instruction to cite them and to decline when they do not
    answer it. ``short`` asks for a short extractive answer (the QA harness scores those)."""
    blocks = "\n\n".join(f"[{n}] ({doc})\n{text.strip()}" for n, doc, text in passages)
    if short:
        how = ("Answer with the shortest exact phrase copied from the passages. If the passages do "
               f"not contain the answer, reply exactly: {NOT_FOUND}")
    else:
        how = ("Answer using only these passages and cite the ones you use like [1]. If the "
               f"passages do not contain the answer, say: {NOT_FOUND}")
    return f"{GROUNDED_PREFIX}{blocks}{QUESTION_MARK}{question.strip()}\n\n{how}"


QUESTION_MARK = "\n\nQuestion: "
_PASSAGE_HEAD = re.compile(r"(?:^|\n\n)\[(\d+)\] \(([^\n]*)\)\n")


def split_grounded(content: str) -> tuple[str, list[tuple[int, str, str]]] | None:
    """The question and numbered passages ``(n, document, text)`` of a ``grounded_question`` turn
    (None for any other text): a round retrains a rated answer on the passage that held it."""
    if not content.startswith(GROUNDED_PREFIX) or QUESTION_MARK not in content:
        return None
    body, _, tail = content[len(GROUNDED_PREFIX):].rpartition(QUESTION_MARK)
    heads = list(_PASSAGE_HEAD.finditer(body))
    if not heads or heads[0].start() != 0:
        return None
    passages = [(int(m.group(1)), m.group(2), body[m.end():nxt.start() if nxt else len(body)])
                for m, nxt in zip(heads, [*heads[1:], None], strict=True)]
    return tail.rsplit("\n\n", 1)[0], passages
