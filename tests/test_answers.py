"""Extractive answers about a loaded text: which requests get one, the supporting sentence, the
reply as stored, and the decline (pure functions, then the service over the tiny random model)."""

from __future__ import annotations

import dataclasses

import pytest

from chatlm.chat.prompts import NOT_FOUND
from chatlm.engine.params import SamplingParams
from chatlm.knowledge.answer import decline_text, find_support, is_factoid, sentences, short_form
from tests.wiring import make_service

TEXT = ("Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma. The company makes brass hinges.\n"
        "Its head office moved to Boise in 2004. Acme employs 340 people.")


@pytest.mark.parametrize(("request_text", "factoid"), [
    ("Who founded Acme Widgets?", True), ("When was Acme founded?", True),
    ("How many people does Acme employ?", True), ("In which city is the head office", True),
    ("Summarise the text.", False), ("Explain how the company grew.", False),
    ("Compare the two offices.", False), ("Why did the office move?", False),
    ("How does the hinge work?", False), ("Is Acme profitable?", False), ("", False),
])
def test_factoid_questions_are_told_from_other_requests(request_text: str, factoid: bool) -> None:
    assert is_factoid(request_text) is factoid


def test_sentences_carry_their_offsets_and_support_finds_the_span() -> None:
    found = sentences([(2, "acme.txt", TEXT)])
    assert [s.sentence for s in found] == [
        "Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma.", "The company makes brass hinges.",
        "Its head office moved to Boise in 2004.", "Acme employs 340 people."]
    assert all(TEXT[s.start:s.end] == s.sentence and s.number == 2 for s in found)
    titled = "Bond is told by Mr. White to protect his daughter, Dr. Madeleine Swann. J. K. Rowling wrote on."
    assert [s.sentence for s in sentences([(1, "spectre.txt", titled)])] == [
        "Bond is told by Mr. White to protect his daughter, Dr. Madeleine Swann.", "J. K. Rowling wrote on."]
    support = find_support("Dana Kowalski", found)
    assert support is not None and support.sentence.startswith("Acme Widgets was founded")
    assert find_support("Priya Raman", found) is None and find_support("  ", found) is None
    assert short_form(" Boise in 2004.") == "Boise in 2004"
    declined = decline_text((1, "acme.txt", "Its head office moved to Boise in 2004."))
    assert declined.startswith(NOT_FOUND) and "[1] (acme.txt)" in declined


@pytest.fixture
def service(settings, tiny_backend):
    return make_service(settings, tiny_backend)


def _ask(service, question: str):
    me = service.actor()
    conv = service.new_conversation(me)
    service.library.load(actor=me, conversation_id=conv.id, name="acme.txt", text=TEXT)
    reply = service.send(me, conv.id, question, SamplingParams(temperature=1.0, max_new_tokens=8, seed=1))
    shown = "".join(reply)
    return reply, shown, service.history(me, conv.id)[-1][0]


def test_a_factoid_question_gets_a_copied_span_its_citation_and_its_sentence(service) -> None:
    service.settings = dataclasses.replace(service.settings, abstain_threshold=0.0)  # never declines
    reply, shown, stored = _ask(service, "Who founded Acme Widgets?")
    assert reply.extract is not None and reply.short_answer  # even a random model only copies
    span = reply.short_answer
    sentence = next(s.sentence for s in reply.extract if span.lower() in s.sentence.lower())
    assert shown == stored.content == f"{span} [1]\n\n> “{sentence}”"
    assert stored.generation_params["extractive"] is True and stored.generation_params["temperature"] == 0.0
    cited = [s for s in stored.sources if s.get("cited")]
    assert len(cited) == 1
    chunk = service.library.chunk_texts([cited[0]["chunk_id"]])[cited[0]["chunk_id"]]
    start, end = cited[0]["sentence"]
    assert chunk[start:end] == sentence  # the sources panel can highlight exactly this
    assert 0.0 < reply.support_score <= 1.0


def test_below_the_threshold_the_reply_says_the_text_does_not_say(service) -> None:
    service.settings = dataclasses.replace(service.settings, abstain_threshold=1.01)
    reply, shown, stored = _ask(service, "What is the name of Acme's dog?")
    assert reply.short_answer == "" and stored.content == shown
    assert shown.startswith(NOT_FOUND) and "The closest passage is [" in shown
    span = reply.generation.text.strip().rstrip(".").lower()
    assert span and span not in shown.lower()  # never declined while quoting the sentence holding its span


def test_a_request_to_summarise_gets_a_free_form_grounded_answer(service) -> None:
    reply, _, stored = _ask(service, "Summarise the text.")
    assert reply.extract is None and "extractive" not in stored.generation_params
    assert "Passages:" in stored.prompt_messages[-1]["content"]



PASSAGES = [(1, "acme.txt", "Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma. The founders liked brass."),
            (2, "acme.txt", "The head office of Acme moved to Boise in 2004. Boise has a river."),
            (3, "acme.txt", "Acme employs 340 people across two plants. Most of them build hinges.")]


def test_a_rated_extractive_answer_trains_on_the_prompt_the_chat_asked_it_with(service) -> None:
    """A round over knowledge questions trains on the passages the chat quoted (what the chat will
    quote when the question is asked again: on the one passage holding the correction, a round
    learnt 19 of 50 corrections, on the chat's three 28); the target is what the model wrote (the
    span, or the decline) and the correction. Rows as ``send`` stores them."""
    from chatlm.chat.prompts import grounded_question, split_grounded
    from chatlm.feedback import load
    from chatlm.knowledge.answer import answer_text
    from chatlm.store import repo
    from chatlm.store.db import transaction
    from chatlm.training import data

    me = service.actor()
    conv = service.new_conversation(me)
    cases = [  # question, span the model copied ("" = declined), rating, correction, passage holding it
        ("Who founded Acme Widgets?", "in Tacoma", -1, "Dana Kowalski", 1),
        ("When did the head office move to Boise?", "in 2004", 1, None, 2),
        ("What is the name of Acme's dog?", "340 people", -1, NOT_FOUND, 3),
        ("Who runs the Boise office?", "", 1, None, 1),
    ]
    ids = []
    with transaction(service.sessions) as s:
        for question, span, _, _, _ in cases:
            asked = repo.add_message(s, conversation_id=conv.id, role="user", content=question)
            support = next((x for x in sentences(PASSAGES) if span and span in x.sentence), None)
            prompt = [{"role": "user", "content": grounded_question(question, PASSAGES, short=True)}]
            shown = answer_text(span, support) if support else decline_text(PASSAGES[0])
            ids.append(repo.add_message(s, conversation_id=conv.id, role="assistant", content=shown,
                                        parent_id=asked.id, prompt_messages=prompt,
                                        generation_params={"extractive": True, "span": span}).id)
    for message_id, (_, _, value, better, _) in zip(ids, cases, strict=True):
        service.rate(me, message_id, value, better_answer=better)
    with transaction(service.sessions) as s:
        rated = {a.message_id: a for a in load.rated_answers(s)}
    for message_id, (question, span, _, _, _) in zip(ids, cases, strict=True):
        record = rated[message_id]
        assert record.answer == (span or NOT_FOUND)  # what the model wrote, not the decorated reply
        assert split_grounded(record.prompt[-1][1]) == (question, list(PASSAGES))
    pairs = data.method_records("dpo", list(rated.values()))
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs} == {
        ("Dana Kowalski", "in Tacoma"), (NOT_FOUND, "340 people")}
    # knowledge answers: `auto` trains SFT on the corrections and liked spans (it taught more, cheaper)
    counts = data.count(list(rated.values()))
    assert data.choose_method("auto", counts, knowledge=True) == "sft"
    assert data.choose_method("auto", data.Counts(pairs=8, liked=8, disliked=8, sft=16)) == "dpo"


def test_a_correction_the_quoted_passages_lack_trains_with_the_passage_that_holds_it(service) -> None:
    """Retrieval missed the passage with the answer: the user's correction cannot be copied from
    what the chat quoted, so the round trains it with the chat's passage that holds it in place of
    the last one (from the chat's own documents, never from elsewhere)."""
    from chatlm.chat.prompts import grounded_question, split_grounded
    from chatlm.feedback import load
    from chatlm.store import repo
    from chatlm.store.db import transaction

    me = service.actor()
    conv = service.new_conversation(me)
    service.library.load(actor=me, conversation_id=conv.id, name="acme.txt",
                         text=TEXT + "\nThe Boise office is on Main Street.")
    question = "Where is the Boise office?"
    ids = []
    with transaction(service.sessions) as s:
        for better in ("Main Street", "Elm Street", NOT_FOUND):  # held by the text; by nothing; the decline
            asked = repo.add_message(s, conversation_id=conv.id, role="user", content=question)
            prompt = [{"role": "user", "content": grounded_question(question, PASSAGES, short=True)}]
            ids.append((repo.add_message(s, conversation_id=conv.id, role="assistant", content="in 2004",
                                         parent_id=asked.id, prompt_messages=prompt,
                                         generation_params={"extractive": True, "span": "in 2004"}).id, better))
    for message_id, better in ids:
        service.rate(me, message_id, -1, better_answer=better)
    with transaction(service.sessions) as s:
        rated = {a.message_id: a for a in load.rated_answers(s)}
    taught = split_grounded(rated[ids[0][0]].prompt[-1][1])
    assert taught is not None and taught[0] == question
    assert taught[1][:-1] == list(PASSAGES[:-1])
    number, document, text = taught[1][-1]
    assert (number, document) == (PASSAGES[-1][0], "acme.txt") and "Main Street" in text
    for message_id, _ in ids[1:]:  # nothing holds it, or a decline: the passages as quoted
        assert split_grounded(rated[message_id].prompt[-1][1]) == (question, list(PASSAGES))


def test_the_sources_under_an_answer_are_the_cited_ones_short_and_escaped() -> None:
    """Under each answer: the passages its [n] marks cite (all when it cites none), a short snippet
    around the supporting sentence in bold, the document's name, and markup shown, not run."""
    from chatlm.ui.knowledge import SNIPPET, sources_block

    long_text = "Filler words here. " * 40 + TEXT + " More filler after it." * 40
    start = long_text.index("Acme Widgets was founded")
    end = long_text.index("Tacoma.") + len("Tacoma.")
    sources = [{"n": 1, "chunk_id": 10, "document": "acme.txt", "sentence": [start, end]},
               {"n": 2, "chunk_id": 11, "document": "<img src=x onerror=alert(1)>.txt"}]
    texts = {10: long_text, 11: "Plain *second* passage with <b>markup</b>."}
    cited_one = sources_block("1987 [1]", sources, texts)
    assert "Source (1)" in cited_one and "[1] *acme.txt*:" in cited_one and "[2]" not in cited_one
    assert "**Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma.**" in cited_one
    assert len(cited_one) < 2 * SNIPPET + 300  # a snippet, not the whole passage
    both = sources_block("No marks in this answer.", sources, texts)
    assert "Sources (2)" in both and "[2]" in both
    assert "<img" not in both and "&lt;img src=x onerror=alert(1)&gt;" in both
    assert "&lt;b&gt;markup&lt;/b&gt;" in both and r"\*second\*" in both
