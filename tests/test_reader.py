"""The reader (issue 23): SQuAD records with the chat's own prompt, a reader round on a tiny model,
the learnt decline scored at the first step, and the shipped reader served for knowledge answers."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest

from chatlm.chat.prompts import NOT_FOUND, grounded_question, split_grounded
from chatlm.compose import sessions_for
from chatlm.config import Settings
from chatlm.engine.copy import CopyConstraint
from chatlm.errors import InputError
from chatlm.store import db, registry
from chatlm.training import reader, worker
from chatlm.training.options import RoundOptions

SQUAD = Path(__file__).resolve().parent / "data" / "squad-mini.json"


def _words(text: str) -> list[int]:
    """A toy tokeniser: one id per word (spaced and unspaced spellings alike)."""
    return [sum(ord(c) for c in w) % 997 + 3 for w in text.split()]


def test_the_decline_is_scored_against_every_span_start() -> None:
    c = CopyConstraint.build(["Paris is the capital."], encode=_words,
                             token_text=lambda i: f" w{i}", eos_ids=[0], decline=NOT_FOUND)
    decline = c.decline_ids[0]
    assert c.decline_ids == (_words("I")[0],)
    logprobs = [-50.0] * 1000
    starts = [t for t in c.allowed() if t != decline]
    for t in starts:
        logprobs[t] = math.log(0.1)
    logprobs[decline] = math.log(0.4)
    expected = math.log(0.4) - math.log(0.1 * len(starts))
    assert c.score_decline(logprobs) == pytest.approx(expected)
    logprobs[decline] = -50.0
    assert c.score_decline(logprobs) < -10  # nothing for the decline: copy


def test_span_targets_are_what_the_copy_constraint_can_give() -> None:
    assert reader.span_target("the Normans.") == "Normans"
    assert reader.span_target("An Icelandic saga") == "Icelandic saga"
    assert reader.span_target("1066") == "1066"


@pytest.fixture
def tiny_settings(tmp_path, tiny_dir) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data", model=str(tiny_dir), device="cpu")


@pytest.mark.slow  # trains a round
def test_a_reader_round_registers_an_adapter_that_changes_a_span(tiny_settings, tiny) -> None:
    """Records come from the app's own retrieval and prompt; the round goes through the worker and
    registry like any other; the adapter, served for a question about a loaded text, gives another
    span than the base model."""
    from chatlm.chat.turns import ChatService
    from chatlm.compose import scratch
    from chatlm.engine.local import LocalBackend
    from chatlm.engine.params import SamplingParams
    from chatlm.evaluation.qa import QueryCache
    from chatlm.knowledge.embed import get_embedder

    with scratch(tiny_settings, prefix="chatlm-reader-", load_model=False,
                 embedder=QueryCache(get_embedder())) as services:
        records, mix = reader.reader_records(SQUAD, tiny_settings, services.chat, limit=12, progress=False)
    assert mix["span"] > 0 and mix.get("unanswerable", 0) > 0 and sum(mix.values()) == len(records)
    first = records[0]
    question_turn = first["prompt"][-1]["content"]
    assert first["prompt"][0] == {"role": "system", "content": tiny_settings.system_prompt}
    assert question_turn.startswith("Passages:\n\n[1] (Normans)\n")
    question, passages = split_grounded(question_turn)
    assert question_turn == grounded_question(question, passages, short=True)  # the chat's own prompt
    targets = {r["completion"][0]["content"] for r in records}
    assert NOT_FOUND in targets and len(targets) > 3

    sessions = sessions_for(tiny_settings)
    with pytest.raises(InputError, match="A reader round needs a SQuAD training file"):
        RoundOptions("reader")
    with db.transaction(sessions) as s:
        run_id = registry.start_run(s, method="reader", params={
            "reader_data": str(SQUAD), "reader_limit": 12, "max_steps": 4, "lr": 2e-2, "prefix": "reader"}).id
    assert worker.run_round(tiny_settings, run_id) == 0
    with db.transaction(sessions) as s:
        run = registry.get_run(s, run_id=run_id)
        adapter = registry.get_adapter(s, name=run.adapter_name)
        assert adapter.name == "reader-v1" and adapter.method == "reader"
        assert adapter.metrics["dataset"]["document"]["mix"]["span"] > 0
        assert adapter.metrics["target"] == "liked_perplexity"
        path = adapter.path

    backend = LocalBackend(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)))
    try:
        settings = dataclasses.replace(tiny_settings, reader="reader-v1")
        service = ChatService(settings, backend, sessions)
        me = service.actor()
        assert service.adapters.ensure_reader() == "reader-v1" and service.adapters.reads("reader-v1")
        text = ("The Normans gave their name to Normandy, a region in France. "
                "Their leader Rollo swore fealty to King Charles III in 911.")
        conv = service.new_conversation(me)
        service.library.load(actor=me, conversation_id=conv.id, name="Normans", text=text)
        params = SamplingParams(temperature=0.0, max_new_tokens=8)
        read = service.send(me, conv.id, "Who gave their name to Normandy?", params)
        read.run()
        assert read.adapter == "reader-v1" and read.generation.decline_score is not None
        base = service.send(me, conv.id, "Who gave their name to Normandy?", params, adapter="base")
        base.run()
        assert base.adapter is None and base.generation.decline_score is None
        # the adapter, not the base model, read the text: its first step's distribution is its own
        # (on the tiny random model the span it picks is the base's now and then: a full run saw
        # " France" from both, so the text alone cannot tell them apart)
        assert read.generation.span_logprob != base.generation.span_logprob
        assert path
    finally:
        backend.close()


def test_a_decline_never_opens_a_span() -> None:
    """The decline's first token ("I") is scored, never copied: a reader that wants to decline must
    not be turned into "Iceland" or "I of Normandy" by the constraint."""
    c = CopyConstraint.build(["Richard I of Normandy ruled."], encode=_words,
                             token_text=lambda i: f" w{i}", eos_ids=[0], decline=NOT_FOUND)
    assert c.decline_ids[0] not in c.allowed()
    plain = CopyConstraint.build(["Richard I of Normandy ruled."], encode=_words,
                                 token_text=lambda i: f" w{i}", eos_ids=[0])
    assert _words("I")[0] in plain.allowed()  # without a decline option, "I" may start a span


@pytest.mark.parametrize(("support", "decline", "first", "declines"), [
    (0.9, None, -3.0, False),   # the base model: the agreement decides
    (0.3, None, -0.01, True),   # ... however sure the model is
    (0.9, -1.0, -2.0, False),   # a reader on an agreeing sentence answers
    (0.3, -1.0, -2.0, True),    # a reader unsure of its span on a poor sentence declines
    (0.3, -1.0, -0.01, False),  # a reader sure of its span (a taught answer) answers anyway
    (0.9, 3.0, -2.0, True),     # a reader sure the text does not say (a taught decline) declines
])
def test_a_reader_overrides_the_agreement_rule_only_when_sure(settings, support, decline, first, declines) -> None:
    from chatlm.knowledge.answer import SURE_DECLINE, SURE_SPAN
    from chatlm.knowledge.answer import declines as rule

    assert settings.abstain_threshold == 0.6 and math.log(0.5) < SURE_SPAN and SURE_DECLINE > 0
    assert rule(support, settings.abstain_threshold, decline_score=decline, span_logprob=first) is declines


def test_a_question_a_round_was_taught_declines_from_a_lower_score() -> None:
    """A corrections round's own "the text does not say" is trusted sooner on what it was taught."""
    from chatlm.knowledge.answer import SURE_DECLINE, TAUGHT_DECLINE, declines

    between = (TAUGHT_DECLINE + SURE_DECLINE) / 2
    assert TAUGHT_DECLINE < SURE_DECLINE
    assert declines(0.9, 0.6, decline_score=between, span_logprob=-2.0, taught=True)
    assert not declines(0.9, 0.6, decline_score=between, span_logprob=-2.0)
    assert not declines(0.9, 0.6, decline_score=TAUGHT_DECLINE - 0.5, span_logprob=-2.0, taught=True)


def test_a_round_that_skips_reads_questions_the_earlier_round_did_not(tiny_settings, tmp_path) -> None:
    """``--reader-skip``: a second round (same seed) asks none of the first round's questions, in
    every article, however many negative passages the first drew before it got there."""
    import json

    from chatlm.compose import scratch
    from chatlm.evaluation.qa import QueryCache
    from chatlm.knowledge.embed import get_embedder

    data = json.loads(SQUAD.read_text(encoding="utf-8"))
    # the same questions in a second article (its text told apart, or the library would reuse the first's)
    second = {**data["data"][0], "title": "Normans again",
              "paragraphs": [{**p, "context": p["context"] + " (Again.)"} for p in data["data"][0]["paragraphs"]]}
    two_articles = tmp_path / "two.json"
    two_articles.write_text(json.dumps({**data, "data": [data["data"][0], second]}), encoding="utf-8")

    def asked(records: list[dict]) -> set[tuple[str, str]]:
        out = set()
        for r in records:
            question, passages = split_grounded(r["prompt"][-1]["content"])
            out.add((passages[0][1], question))
        return out

    with scratch(tiny_settings, prefix="chatlm-reader-", load_model=False,
                 embedder=QueryCache(get_embedder())) as services:
        first, _ = reader.reader_records(two_articles, tiny_settings, services.chat, limit=30, progress=False)
        later, _ = reader.reader_records(two_articles, tiny_settings, services.chat, skip=30, limit=30,
                                         progress=False)
    first_asked, later_asked = asked(first), asked(later)
    assert {a for a, _ in first_asked} == {a for a, _ in later_asked} == {"Normans", "Normans again"}
    assert len(first_asked) == len(later_asked) == 60
    assert not first_asked & later_asked
