"""A corrections adapter answers what it was taught, and the adapter it continued from answers the
rest (``chatlm.adapters.scope``): through the chat's own path, with the real MiniLM embedder and a
real SQLite file, over a stand-in model that records which adapter each answer came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatlm import compose
from chatlm.adapters.scope import FILE, NEAR, Scope, asked, near_each, rows
from chatlm.chat.prompts import grounded_question
from chatlm.engine.params import SamplingParams
from chatlm.store import db, registry
from tests.scripted import ScriptedBackend

CAT = "What is the name of my cat?"
FRANCE = "What is the capital of France?"


class AdapterBackend(ScriptedBackend):
    """A scripted model that can load adapters (by name; the folder is not read)."""

    def __init__(self) -> None:
        super().__init__(["An answer."])
        self.loaded: list[str] = []

    def adapter_names(self) -> list[str]:
        return list(self.loaded)

    def load_adapter(self, name: str, path: Path) -> float:
        self.loaded.append(name)
        return 0.0

    def unload_adapter(self, name: str) -> bool:
        if name in self.loaded:
            self.loaded.remove(name)
            return True
        return False


@pytest.fixture
def services(settings) -> Any:
    built = compose.build(settings, AdapterBackend(), follow_registry=False, reader=False)
    yield built
    built.close()


def register(services: Any, tmp_path: Path, name: str, scope: Scope | None, parent: str | None = None,
             method: str = "sft") -> None:
    """An adapter in the registry, as a round leaves it (its scope file beside it, or none)."""
    folder = tmp_path / name
    folder.mkdir()
    if scope is not None:
        scope.save(folder)
    with db.transaction(services.sessions) as s:
        registry.register(s, name=name, base_model="scripted", parent=parent, path=str(folder), method=method,
                          dataset_hash="0" * 64, hyperparams={}, metrics={})


def answered_by(services: Any, question: str, model: str | None = None) -> str | None:
    """The adapter stored with the chat's answer to ``question`` in a new chat."""
    chat = services.chat
    me = chat.actor()
    conv = chat.new_conversation(me)
    chat.send(me, conv.id, question, SamplingParams(temperature=0.0, max_new_tokens=4), adapter=model).run()
    return chat.history(me, conv.id)[-1][0].adapter


def test_a_corrections_adapter_answers_its_questions_and_its_parent_every_other(services, tmp_path) -> None:
    register(services, tmp_path, "chatlm-v1", None)  # a round on many ratings: it answers every question
    register(services, tmp_path, "chatlm-v2", Scope((CAT, "Who is my manager?"), "chatlm-v1"), "chatlm-v1")
    services.chat.adapters.promote("chatlm-v2")
    assert answered_by(services, CAT) == "chatlm-v2"
    assert answered_by(services, "What's my cat called?") == "chatlm-v2"  # worded almost the same
    assert answered_by(services, FRANCE) == "chatlm-v1"  # what nobody corrected: as before the round
    assert answered_by(services, FRANCE, "chatlm-v2") == "chatlm-v1"  # chosen by name, the same rule
    assert answered_by(services, CAT, "base") is None  # the base model stays the base model


def test_a_fall_back_goes_down_the_chain_and_never_to_the_reader_for_plain_chat(services, tmp_path) -> None:
    serving = services.chat.adapters
    register(services, tmp_path, "reader", None, method="reader")
    serving.ensure_loaded("reader")
    serving.reader = "reader"
    register(services, tmp_path, "chatlm-v1", Scope((CAT,), "reader"), "reader")
    register(services, tmp_path, "chatlm-v2", Scope(("Who is my manager?",), "chatlm-v1"), "chatlm-v1")
    serving.promote("chatlm-v2")
    embed = services.chat.library.embedder.embed
    assert serving.route("chatlm-v2", CAT, embed, reading=False) == "chatlm-v1"
    assert serving.route("chatlm-v2", "Who is my manager?", embed, reading=False) == "chatlm-v2"
    assert serving.route("chatlm-v2", FRANCE, embed, reading=True) == "reader"
    assert serving.route("chatlm-v2", FRANCE, embed, reading=False) is None
    assert answered_by(services, FRANCE) is None
    serving.reader = None  # `chatlm ask` serves no reader: the registry still says which adapters read
    assert serving.route("chatlm-v2", FRANCE, embed, reading=False) is None


def test_a_parent_that_is_gone_leaves_the_base_model_answering(services, tmp_path) -> None:
    register(services, tmp_path, "chatlm-v3", Scope((CAT,), "chatlm-deleted"))
    services.chat.adapters.promote("chatlm-v3")
    assert answered_by(services, FRANCE) is None
    assert answered_by(services, CAT) == "chatlm-v3"


def test_the_scope_file_round_trips_and_a_question_is_read_out_of_its_passages(tmp_path) -> None:
    Scope((CAT, FRANCE), "reader").save(tmp_path)
    assert (tmp_path / FILE).is_file()
    assert Scope.read(tmp_path) == Scope((CAT, FRANCE), "reader")
    assert Scope.read(tmp_path / "nowhere") is None
    grounded = grounded_question("Who founded Brackenford?", [(1, "town.txt", "Ada founded it.")], short=True)
    assert asked([{"role": "system", "content": "Be brief."}, {"role": "user", "content": grounded}]) == \
        "Who founded Brackenford?"
    assert asked([{"role": "user", "content": f"  {CAT} "}]) == CAT


def test_near_means_almost_the_same_words(services) -> None:
    embed = services.chat.library.embedder.embed
    near = near_each(embed, [CAT, "What's my cat called?", FRANCE, "What is the capital of Italy?"],
                     rows(embed, [CAT, FRANCE]))
    assert near == [True, True, True, False]  # Italy is not France, however alike the words
    assert near_each(embed, [CAT], rows(embed, [])) == [False]
    assert 0.5 < NEAR < 1


TOWN = "\n\n".join([
    "Brackenford is a market town on the river Bracken. " * 6,
    "The town was founded in 1204 by Ada Lovell, a wool merchant from York. " * 6,
    "The old stone bridge has seven arches and carries the high road north. " * 6,
    "The bakery on Mill Lane, run by Tomasz Nowak, sells rye bread every morning. " * 6,
])
FOUNDER = "Who founded Brackenford?"


class CopyingBackend(AdapterBackend):
    """The scripted model as the chat's extractive path asks it: it takes the passages' sentences
    to copy from (and says which, so a test can see what the question was read from)."""

    supports_copy = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[dict[str, str]]] = []

    def chat(self, messages: Any, params: Any, *, adapter: str | None = None, continue_final: bool = False,
             **copy: Any) -> Any:
        self.asked.append(messages)
        return super().chat(messages, params, adapter=adapter, continue_final=continue_final)


def test_a_corrected_question_about_a_text_is_read_again_from_the_passages_it_was_taught_on(
        settings, tmp_path) -> None:
    built = compose.build(settings, CopyingBackend(), follow_registry=False, reader=False)
    try:
        chat = built.chat
        me = chat.actor()

        def ask(question: str, *, load: bool = True) -> tuple[int, list[str]]:
            """A new chat (the town loaded) and the passages its answer was asked over."""
            conv = chat.new_conversation(me)
            if load:
                chat.library.load(actor=me, conversation_id=conv.id, name="town.txt", text=TOWN)
            chat.send(me, conv.id, question, SamplingParams(temperature=0.0, max_new_tokens=4), k=1).run()
            ids = [p["chunk_id"] for p in chat.history(me, conv.id)[-1][0].sources or []]
            texts = chat.library.chunk_texts(ids)
            return conv.id, [texts[i].strip() for i in ids]

        conv_id, retrieved = ask(FOUNDER)
        assert len(retrieved) == 1 and "Ada Lovell" in retrieved[0]
        chunks = [text.strip() for _, _, text, _, _ in chat.library.index_for(conv_id).chunks]
        bakery = next(t for t in chunks if "Tomasz Nowak" in t)
        # a round taught the question on the bakery's passage (the one holding the user's correction)
        register(built, tmp_path, "chatlm-v2", Scope((FOUNDER,), None, ((bakery,),)))
        chat.adapters.promote("chatlm-v2")
        assert ask(FOUNDER)[1] == [bakery]
        assert ask("Who was Brackenford founded by?")[1] == [bakery]  # worded almost the same
        assert "bridge" in ask("How many arches does the old stone bridge have?")[1][0]  # not taught: retrieved
        assert ask(FOUNDER, load=False)[1] == []  # a chat without the text: nothing to read it from
        asked: list[str] = []
        embed = chat.library.embedder.embed

        def counted(texts):
            asked.extend(texts)
            return embed(texts)

        reworded = "Who was Brackenford founded by?"
        adapter = chat.adapters.route("chatlm-v2", reworded, counted, reading=True)
        assert chat.adapters.taught_passages(adapter, reworded, counted) == (bakery,)
        assert asked == [reworded]  # routed, then read from its passages: embedded once
    finally:
        built.close()


def test_a_scope_keeps_each_taught_question_with_the_passages_of_its_prompt(tmp_path) -> None:
    town = grounded_question(FOUNDER, [(1, "town.txt", " Ada founded it. "), (2, "town.txt", "A bridge.")],
                             short=True)
    prompts = [[{"role": "user", "content": town}], [{"role": "user", "content": CAT}],
               [{"role": "user", "content": town}]]
    scope = Scope.of(prompts, "reader")
    assert scope == Scope((FOUNDER, CAT), "reader", (("Ada founded it.", "A bridge."), ()))
    scope.save(tmp_path)
    assert Scope.read(tmp_path) == scope
