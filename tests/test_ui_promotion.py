"""What was promoted is what the chat shows, and Compare asks as the chat asks (issue 24): the chat's
model picker follows a promotion or rollback without a reload, and Compare uses the admin's chat
settings and says which model gave which answer. A fake backend stands in: no model runs."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from chatlm.adapters.serving import BASE_MODEL, DEFAULT_MODEL
from chatlm.engine.backend import Backend
from chatlm.engine.generation import Generation
from tests.wiring import make_service, parts

UNCHANGED = (gr.update(), gr.update())
LOCAL = SimpleNamespace(session_hash=None, username=None, headers={}, cookies={}, client=None)
"""A page's request in the local mode (no accounts): the local user, an admin."""


class FakeBackend(Backend):
    """What the service asks of a backend, answering at once with the name of the model asked."""

    model_id = "fake"
    context_window = 2048

    def __init__(self) -> None:
        self.served: list[str] = []
        self.asked: list[tuple[list[dict[str, str]], object, str | None]] = []

    def adapter_names(self) -> list[str]:
        return list(self.served)

    def load_adapter(self, name: str, path: object) -> float:
        self.served.append(name)
        return 0.0

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def chat(self, messages, params, *, adapter=None, **extra) -> Generation:
        self.asked.append((messages, params, adapter))
        gen = Generation(id=len(self.asked), prompt_tokens=self.count_tokens(messages), params=params,
                         adapter=adapter)
        gen._emit(f"said by {adapter or 'the base'}")
        gen._finish("stop")
        return gen

    def close(self) -> None:
        pass


@pytest.fixture
def service(settings):
    """A service over the fake backend with v1 and v2 in the registry, neither served yet."""
    from chatlm.store import registry
    from chatlm.store.db import transaction

    service = make_service(settings, FakeBackend())
    with transaction(service.sessions) as s:
        for name in ("v1", "v2"):
            registry.register(s, name=name, base_model="fake", path=f"/nowhere/{name}", method="sft",
                              dataset_hash="0")
    return service


def labels(picker: dict) -> list[tuple[str, str]]:
    return [tuple(c) for c in picker["choices"]]


def test_the_model_picker_follows_a_promotion_and_a_rollback(service) -> None:
    from chatlm.ui.chat import ChatUI

    ui = ChatUI(service, parts(service)["who"])
    picker, drawn = ui.models(DEFAULT_MODEL, None, LOCAL)  # a new page's first tick draws it
    assert labels(picker) == [("Default (base model)", DEFAULT_MODEL), ("Base model", BASE_MODEL)]
    assert ui.models(DEFAULT_MODEL, drawn, LOCAL) == UNCHANGED  # nothing changed: nothing is sent

    service.adapters.promote("v1")  # Promote, on any page of this server
    picker, drawn = ui.models(DEFAULT_MODEL, drawn, LOCAL)
    assert labels(picker) == [("Default (v1)", DEFAULT_MODEL), ("Base model", BASE_MODEL), ("v1", "v1")]
    assert "value" not in picker  # the page's choice stays as it is
    assert ui.models(DEFAULT_MODEL, drawn, LOCAL) == UNCHANGED

    service.adapters.promote("v2")
    picker, drawn = ui.models("v1", drawn, LOCAL)  # this user had picked v1: it stays picked
    assert labels(picker)[0] == ("Default (v2)", DEFAULT_MODEL) and ("v2", "v2") in labels(picker)
    assert "value" not in picker

    assert service.adapters.rollback() == "v1"
    picker, drawn = ui.models("v1", drawn, LOCAL)
    assert labels(picker)[0] == ("Default (v1)", DEFAULT_MODEL) and "value" not in picker
    assert ui.models("v1", drawn, LOCAL) == UNCHANGED
    # a choice no longer offered falls back to the default (the page's other pickers do the same)
    assert ui.models("gone", None, LOCAL)[0]["value"] == DEFAULT_MODEL


def test_the_picker_refuses_a_page_without_identity_quietly(settings) -> None:
    """With accounts on, a page whose session ended gets no change (and no error every tick)."""
    from dataclasses import replace

    from chatlm.ui.chat import ChatUI

    service = make_service(replace(settings, auth="password"), FakeBackend())
    assert ChatUI(service, parts(service)["who"]).models(DEFAULT_MODEL, None, LOCAL) == UNCHANGED


def test_every_page_checks_its_picker_and_the_promoting_page_at_once(service) -> None:
    """The picker's handler runs on a timer of every chat page, and right after Promote and Roll
    back on the promoting page; privately and without a progress bar."""
    from chatlm.ui.chat_page import ChatPage as ChatUI
    from chatlm.ui.chat_view import MODELS_S

    wired = parts(service)
    ui = ChatUI(service, wired["who"], training=wired["training"], feedback=wired["feedback"])
    demo = ui.build()
    fns = list(demo.fns.values())
    picker = [f for f in fns if getattr(f.fn, "__func__", None) is ChatUI.models]
    assert picker and all(f.api_visibility == "private" and f.show_progress == "hidden" for f in picker)
    timers = {b._id: b for b in demo.blocks.values() if isinstance(b, gr.Timer)}
    ticked = [f for f in picker if any(t[0] in timers and t[1] == "tick" for t in f.targets)]
    assert [timers[f.targets[0][0]].value for f in ticked] == [MODELS_S]
    after = {fns_by_id.api_name for f in picker if f.trigger_after is not None
             for fns_by_id in [demo.fns[f.trigger_after]]}
    assert after == {"promote_adapter", "rollback_adapter"}


def test_compare_asks_as_the_chat_asks_and_names_each_model(service) -> None:
    from chatlm.ui.training import TrainingTab

    backend = service.backend
    me = service.actor()
    service.new_conversation(me, system_prompt="You are the archivist of Brackenford.",
                             settings={"temperature": 0.9, "top_p": 0.5, "max_new_tokens": 40, "model": ""})
    service.adapters.promote("v1")
    tab = TrainingTab(service, **parts(service))

    asked, left_box, right_box = tab.compare_heading("Who founded Brackenford?", "base model", "v1", LOCAL)
    assert asked.startswith("Asked with your chat's system prompt “You are the archivist of Brackenford")
    assert "max 40 new tokens, greedy" in asked
    assert left_box["label"] == "Left answer, from base model" and left_box["value"] == ""
    assert right_box["label"] == "Right answer, from v1 (the default: new chats use it)"

    *_, (left, right) = tab.compare("Who founded Brackenford?", "base model", "v1", LOCAL)
    assert (left, right) == ("said by the base", "said by v1")
    for messages, params, _ in backend.asked[-2:]:
        assert messages == [{"role": "system", "content": "You are the archivist of Brackenford."},
                            {"role": "user", "content": "Who founded Brackenford?"}]
        assert (params.temperature, params.max_new_tokens) == (0.0, 40)  # greedy, the chat's limit
    assert [adapter for *_, adapter in backend.asked[-2:]] == [None, "v1"]

    # an admin whose chats have no system prompt: Compare sends none either, and says so
    service.new_conversation(me, system_prompt="", settings={"max_new_tokens": 5000})
    asked, *_ = tab.compare_heading("Hi", "v2", "base model", LOCAL)
    assert f"no system prompt (as your chat), max {service.settings.max_new_tokens} new tokens" in asked
    *_, answers = tab.compare("Hi", "v2", "base model", LOCAL)
    assert answers == ("said by v2", "said by the base")
    assert backend.asked[-1][0] == [{"role": "user", "content": "Hi"}]
    assert backend.asked[-1][1].max_new_tokens == service.settings.max_new_tokens  # clamped as the chat does
