from __future__ import annotations

import pytest

from chatlm.chat.prompts import fit_history
from chatlm.errors import InputError


def words(messages) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)


def turn(i: int, n: int = 10) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i} " * n}, {"role": "assistant", "content": f"a{i} " * n}]


def test_short_history_is_kept_whole() -> None:
    history = turn(1) + [{"role": "user", "content": "now"}]
    plan = fit_history("be nice", history, count_tokens=words, context_window=400, max_new_tokens=50)
    assert plan.dropped == 0
    assert plan.messages[0] == {"role": "system", "content": "be nice"}
    assert plan.messages[1:] == history


def test_oldest_turns_dropped_system_prompt_stays() -> None:
    history = turn(1) + turn(2) + turn(3) + [{"role": "user", "content": "latest question"}]
    plan = fit_history("sys", history, count_tokens=words, context_window=80, max_new_tokens=20)
    assert plan.dropped > 0
    assert plan.messages[0]["role"] == "system"
    assert plan.messages[1]["role"] == "user"  # whole turns only
    assert plan.messages[-1]["content"] == "latest question"
    assert words(plan.messages) <= 80 - 20


def test_single_message_too_long_is_a_clear_error() -> None:
    history = [{"role": "user", "content": "word " * 500}]
    with pytest.raises(InputError, match="too long"):
        fit_history("sys", history, count_tokens=words, context_window=100, max_new_tokens=10)
