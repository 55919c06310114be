"""Copy-constrained decoding: whatever the model prefers, an extractive answer is a word-aligned
phrase of one passage that does not start with an article (real tokenizer, tiny random model)."""

from __future__ import annotations

import random
import re

import pytest

from chatlm.engine.copy import CopyConstraint
from chatlm.engine.params import SamplingParams

PASSAGES = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a "
    "region in France.",
    "Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma; its head office moved to Boise "
    "(Idaho) in 2004.",
    "Café owners in Zürich pay €3,200 a month — naïve estimates say less.",
]


def _constraint(tokenizer) -> CopyConstraint:
    eos = {tokenizer.eos_token_id}
    return CopyConstraint.build(PASSAGES, encode=lambda t: tokenizer.encode(t, add_special_tokens=False),
                                token_text=lambda i: tokenizer.decode([i]), eos_ids=eos)


def _is_word_aligned_span(text: str) -> bool:
    for passage in PASSAGES:
        for m in re.finditer(re.escape(text), passage):
            before = passage[m.start() - 1] if m.start() else " "
            after = passage[m.end()] if m.end() < len(passage) else " "
            if not before.isalnum() and not (after.isalnum() and text[-1:].isalnum()):
                return True
    return False


@pytest.mark.parametrize("seed", range(40))
def test_any_walk_through_the_allowed_tokens_is_a_passage_phrase(tiny, seed) -> None:
    tokenizer = tiny.tokenizer
    constraint = _constraint(tokenizer)
    rng = random.Random(seed)
    chosen: list[int] = []
    for _ in range(30):
        allowed = constraint.allowed()
        assert allowed
        ends = [t for t in allowed if t == tokenizer.eos_token_id]
        tok = ends[0] if ends and rng.random() < 0.25 else rng.choice([t for t in allowed if t not in ends] or ends)
        constraint.advance(tok)
        if tok == tokenizer.eos_token_id:
            break
        chosen.append(tok)
    text = tokenizer.decode(chosen).strip()
    assert text and _is_word_aligned_span(text), text
    assert text.split()[0].lower() not in {"the", "a", "an"}
    assert any(text in passage for passage in PASSAGES)  # copied whole from one passage


def test_the_first_token_may_be_a_word_without_its_space(tiny) -> None:
    tokenizer = tiny.tokenizer
    constraint = _constraint(tokenizer)
    first = tokenizer.encode("Dana", add_special_tokens=False)[0]
    spaced = tokenizer.encode(" Dana", add_special_tokens=False)[0]
    assert first != spaced and {first, spaced} <= set(constraint.allowed())
    for tok in tokenizer.encode("Dana Kowalski", add_special_tokens=False):
        assert tok in constraint.allowed()
        constraint.advance(tok)
    assert tokenizer.eos_token_id in constraint.allowed()  # a whole word: the span may end
    assert tokenizer.encode(" The", add_special_tokens=False)[0] not in _constraint(tokenizer).allowed()


def test_the_scheduler_keeps_a_random_model_inside_the_passages(tiny_backend) -> None:
    messages = [{"role": "user", "content": "Who founded Acme Widgets?"}]
    free_in_passages = 0
    for seed in range(6):
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=seed)
        free = tiny_backend.chat(messages, params).wait().strip()
        free_in_passages += bool(free) and any(free in p for p in PASSAGES)
        copied = tiny_backend.chat(messages, params, copy_from=PASSAGES).wait().strip()
        assert copied and any(copied in p for p in PASSAGES), copied
    assert free_in_passages == 0  # unconstrained, the random model babbles: the constraint did it


def test_a_preferred_passage_holds_the_answer_unless_the_model_is_sure_elsewhere(tiny_backend) -> None:
    """A reader copies from every sentence but keeps to the best-agreeing one unless its first
    token elsewhere is at least ``sure`` likely: with ``sure`` out of reach every answer stays in
    the preferred passage; with none preferred, the (random) model starts anywhere. The first
    token's unconstrained log-probability is reported, so a taught answer can be told apart."""
    messages = [{"role": "user", "content": "Who founded Acme Widgets?"}]
    kept, anywhere = 0, 0
    for seed in range(8):
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=seed)
        held = tiny_backend.chat(messages, params, copy_from=PASSAGES, prefer=[1], sure=0.5)
        kept += held.wait().strip() in PASSAGES[1]
        assert held.span_logprob is not None and held.span_logprob <= 0.0
        free = tiny_backend.chat(messages, params, copy_from=PASSAGES).wait().strip()
        anywhere += free not in PASSAGES[1]
    assert kept == 8 and anywhere >= 2, (kept, anywhere)


def test_a_sure_first_token_elsewhere_lifts_the_preference(tiny) -> None:
    tokenizer = tiny.tokenizer
    constraint = CopyConstraint.build(PASSAGES, encode=lambda t: tokenizer.encode(t, add_special_tokens=False),
                                      token_text=lambda i: tokenizer.decode([i]), eos_ids={tokenizer.eos_token_id},
                                      prefer=[0], sure=-0.5)
    dana = tokenizer.encode("Dana", add_special_tokens=False)[0]
    normans = tokenizer.encode("Normans", add_special_tokens=False)[0]
    unsure = [-5.0] * len(tokenizer)
    held = constraint.first_allowed(unsure)
    assert normans in held and dana not in held  # passage 0 only
    sure = list(unsure)
    sure[dana] = -0.1  # the model is sure of "Dana" (passage 1): every start is open
    assert set(constraint.first_allowed(sure)) == set(constraint.allowed()) and dana in constraint.first_allowed(sure)
    assert _constraint(tokenizer).first_allowed(unsure) == _constraint(tokenizer).allowed()  # nothing preferred
