"""Rated conversations written straight into the store, as a user's ratings would leave them."""

from __future__ import annotations

from chatlm.store import db, repo


def add_turn(sessions, uid: int, question: str, answers: list[tuple[str, int | None, str | None]], *,
             prompt: list[dict[str, str]] | None = None, excluded: bool = False) -> None:
    """One question with sibling answers, each rated (+1/-1/None) with an optional better answer;
    the answers are stored as the model's, with the prompt it saw."""
    prompt = prompt or [{"role": "user", "content": question}]
    with db.transaction(sessions) as s:
        conv = repo.create_conversation(s, user_id=uid, system_prompt="")
        conv.exclude_from_training = excluded
        q = repo.add_message(s, conversation_id=conv.id, role="user", content=question)
        for text, value, better in answers:
            a = repo.add_message(s, conversation_id=conv.id, role="assistant", content=text, parent_id=q.id,
                                 prompt_messages=prompt, model_id="m")
            if value is not None:
                repo.set_rating(s, message_id=a.id, user_id=uid, value=value, better_answer=better)


def seed_pairs(sessions, uid: int, n: int) -> None:
    for i in range(n):
        add_turn(sessions, uid, f"What is {i} plus {i}?", [(f"{2 * i}", 1, None), (f"Maybe {i + 7}?", -1, None)])


class StubEmbedder:
    """Stands in for MiniLM where a test stores texts but does not search them by meaning (the
    real model would load in a background thread and race the next test's imports)."""

    def embed(self, texts, **_):
        import numpy as np

        return np.zeros((len(texts), 384), dtype=np.float32)

    def embed_query(self, text):
        import numpy as np

        return np.zeros(384, dtype=np.float32)
