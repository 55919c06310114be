"""The UI's named endpoints through the official ``gradio_client``, over the real bundled model."""

from __future__ import annotations

import time
from typing import Any

import pytest

gradio_client = pytest.importorskip("gradio_client")

from chatlm.ui.chat_view import MARKS  # noqa: E402

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."


def value(output: Any) -> Any:
    """An output's value: handlers return ``gr.update(...)``, which reaches the client as a dict."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


def chat_texts(output: Any) -> list[tuple[str, str]]:
    """(role, text) of each message of a Chatbot output."""
    texts = []
    for message in value(output) or []:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        texts.append((message["role"], content))
    return texts


@pytest.fixture
def server(start_server, bundled_backend):
    running = start_server(bundled_backend)
    yield running
    # The client's heartbeat stream outlives client.close() by up to ~15 s and uvicorn would wait
    # for it before shutting down; nothing else is in flight by then, so cut the wait short.
    running.server.config.timeout_graceful_shutdown = 1


@pytest.fixture
def client(server):
    c = gradio_client.Client(server.url, verbose=False)
    yield c
    c.close()


def test_send_endpoint_parameters(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/load", "/new", "/open", "/rename", "/delete", "/undo", "/send", "/retry", "/stop",
            "/rate"} <= set(endpoints)
    assert not any(name.startswith("/send_") for name in endpoints)  # the Enter key is private
    params = endpoints["/send"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["text", "sys_prompt", "temperature", "top_p",
                                                     "max_new", "model"]
    assert [p["parameter_has_default"] for p in params] == [False, True, True, True, True, True]
    assert len(endpoints["/send"]["returns"]) == 4  # chat, sidebar, notice, message box


def test_send_then_load_and_what_is_stored(client, server, bundled_backend):
    service = server.app.service
    chat, sidebar, notice, box = client.predict(
        text=FRANCE, sys_prompt=SYSTEM, temperature=0, top_p=0.9, max_new=40, api_name="/send")
    texts = chat_texts(chat)
    assert [role for role, _ in texts] == ["user", "assistant"]
    assert texts[0][1] == FRANCE
    answer_text = texts[1][1]
    assert "Paris" in answer_text
    assert value(notice) == ""
    assert value(box) in ("", None)  # cleared (or left alone) after sending

    me = service.actor()
    convs = service.conversations(me)
    assert len(convs) == 1
    conv = convs[0]
    assert conv.title == FRANCE
    assert conv.settings == {"temperature": 0, "top_p": 0.9, "max_new_tokens": 40, "model": ""}  # "": the default
    assert value(sidebar)["groups"] == [{"label": "Today", "items": [{"id": conv.id, "title": FRANCE, "open": True}]}]

    history = service.history(me, conv.id)
    assert [(m.role, m.content, r) for m, r in history] == [
        ("user", FRANCE, None), ("assistant", answer_text, None)]
    question, answer = history[0][0], history[1][0]
    assert answer.parent_id == question.id
    assert answer.status == "complete"
    assert answer.model_id == bundled_backend.model_id and answer.model_id
    assert answer.prompt_tokens and answer.prompt_tokens > 10
    assert answer.completion_tokens and 0 < answer.completion_tokens <= 40
    assert answer.latency_ms and answer.latency_ms > 0
    assert answer.generation_params == {"temperature": 0.0, "top_p": 0.9, "top_k": 0,
                                        "max_new_tokens": 40, "stop": [], "seed": None, "finish_reason": "stop"}
    assert answer.prompt_messages == [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": FRANCE}]
    assert answer.error is None

    # /load takes the conversation id the browser remembered; None means "the latest one".
    for stored_id in (conv.id, None):
        chat, sidebar, sys_prompt, temperature, top_p, max_new, model, notice, excluded = client.predict(
            stored_id, api_name="/load")
        assert excluded is False
        assert chat_texts(chat) == [("user", FRANCE), ("assistant", answer_text)]
        assert value(chat) and chat["feedback_value"] == [None]
        assert value(sidebar)["groups"][0]["items"] == [{"id": conv.id, "title": FRANCE, "open": True}]
        assert (sys_prompt, temperature, top_p, max_new, value(model)) == (SYSTEM, 0, 0.9, 40, "")


def test_send_continues_the_conversation_and_refuses_an_empty_message(client, server):
    service = server.app.service
    client.predict(text="Hi", temperature=0, max_new=4, api_name="/send")
    client.predict(text="   ", api_name="/send")  # refused with a warning: nothing stored
    chat, *_ = client.predict(text="Thanks", temperature=0, max_new=4, api_name="/send")
    assert [(r, t) for r, t in chat_texts(chat) if r == "user"] == [("user", "Hi"),
                                                                    ("user", "Thanks")]
    me = service.actor()
    [conv] = service.conversations(me)  # the client's session kept its conversation
    history = [m for m, _ in service.history(me, conv.id)]
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert [m.parent_id for m in history] == [None] + [m.id for m in history[:-1]]
    assert history[2].content == "Thanks"


def test_training_endpoints_from_ratings_to_a_promoted_adapter_and_back(start_server, tiny, tiny_dir,
                                                                          tmp_path) -> None:
    """The Training tab's named endpoints driven by a script: start a round, promote its adapter,
    compare it with the base model, roll back (a tiny random model, so the round takes seconds)."""
    import copy
    import dataclasses

    from chatlm.engine.local import LocalBackend
    from chatlm.engine.params import SamplingParams
    from chatlm.training import rounds
    from tests.seeding import seed_pairs

    backend = LocalBackend(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)))
    server = start_server(backend, data_dir=tmp_path / "data", model=str(tiny_dir), device="cpu")
    server.server.config.timeout_graceful_shutdown = 1
    service = server.app.service
    seed_pairs(service.sessions, service.actor().user_id, 12)
    client = gradio_client.Client(server.url, verbose=False)
    try:
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert {"/start_round", "/promote_adapter", "/rollback_adapter", "/compare"} <= set(endpoints)
        started = client.predict("auto", 0, 2, 0, False, None, api_name="/start_round")
        assert "Round 1 started in its own process" in value(started[0])
        run = rounds.wait(server.settings, 1, timeout=300, sessions=service.sessions)
        assert run.status == "succeeded" and run.adapter_name == "chatlm-v1", run.error
        promoted = client.predict("chatlm-v1", "chatlm-v1", api_name="/promote_adapter")
        assert value(promoted[-1]) == "Promoted: new chats use **chatlm-v1**."
        assert service.adapters.active == "chatlm-v1"
        left, right = client.predict("What is 2 plus 2?", "base model", "chatlm-v1", api_name="/compare")
        # asked as the admin's chat asks: their latest chat (seeded) has no system prompt and the
        # default settings, decoded greedily
        asked = [{"role": "user", "content": "What is 2 plus 2?"}]
        greedy = SamplingParams(temperature=0.0, max_new_tokens=256)
        assert left == service.generate(asked, greedy).wait()  # each column is that model's answer
        assert right == service.generate(asked, greedy, "chatlm-v1").wait()
        unknown = client.predict("chatlm-v9", "chatlm-v1", api_name="/promote_adapter")
        assert value(unknown[-1]) == "Not promoted: No adapter named 'chatlm-v9' in the registry."
        assert service.adapters.active == "chatlm-v1"  # nothing changed
        rolled = client.predict("chatlm-v1", api_name="/rollback_adapter")
        assert value(rolled[-1]) == "Rolled back: new chats use **base model**."
        assert service.adapters.active is None
        again = client.predict("auto", 0, 2, 0, True, None, api_name="/start_round")
        assert "Not started: No adapter is active" in value(again[0])  # --from-active needs one
    finally:
        client.close()
        backend.close()


# ---- refusals, a second message while answering, the settings' bounds (a scripted model) --------
@pytest.fixture
def scripted(start_server):
    """A server whose model is scripted (tests.scripted.ScriptedBackend): cheap and predictable."""
    from tests.scripted import ScriptedBackend

    def start(**overrides: Any) -> tuple[Any, Any, Any]:
        backend = ScriptedBackend(["Fine", ", ", "thanks", "."], delay=0.01)
        running = start_server(backend, **overrides)
        running.server.config.timeout_graceful_shutdown = 1
        c = gradio_client.Client(running.url, verbose=False)
        opened.append(c)
        return running, backend, c

    opened: list[Any] = []
    yield start
    for c in opened:
        c.close()


def test_a_refused_first_message_leaves_no_conversation_and_stays_in_the_box(scripted):
    from chatlm.chat.turns import MAX_MESSAGE_CHARS

    server, _, client = scripted()
    service = server.app.service
    too_long = "x" * (MAX_MESSAGE_CHARS + 1)
    chat, sidebar, notice, box = client.predict(text=too_long, api_name="/send")
    assert f"at most {MAX_MESSAGE_CHARS} characters" in value(notice)
    assert value(box) == too_long  # kept for the user to shorten
    assert chat_texts(chat) == [] and value(sidebar)["groups"] == []
    assert service.conversations(service.actor()) == []  # no empty "New chat" left behind

    chat, *_ = client.predict(text="Hello", api_name="/send")  # the same session then sends fine
    assert chat_texts(chat) == [("user", "Hello"), ("assistant", "Fine, thanks.")]
    _, _, notice, box = client.predict(text=too_long, api_name="/send")  # refused in an existing chat
    assert "at most" in value(notice) and value(box) == too_long
    [conv] = service.conversations(service.actor())
    assert [m.content for m, _ in service.history(service.actor(), conv.id)] == ["Hello",
                                                                                   "Fine, thanks."]


def test_a_second_message_while_answering_is_refused_and_not_stored(scripted):
    server, backend, client = scripted()
    service = server.app.service
    backend.hold.clear()  # the first answer waits for its first token
    first = client.submit(text="First", api_name="/send")
    wait = time.monotonic() + 30
    while not first.outputs() and time.monotonic() < wait:
        time.sleep(0.02)
    chat, _, notice = first.outputs()[0][:3]
    assert chat_texts(chat)[0] == ("user", "First")  # stored and shown before any token
    assert "Your message is saved" in value(notice)

    chat, _, notice, box = client.predict(text="Second", api_name="/send")
    assert "still being written" in value(notice) and value(box) == "Second"
    backend.hold.set()
    chat, *_ = first.result(timeout=30)
    assert chat_texts(chat) == [("user", "First"), ("assistant", "Fine, thanks.")]
    [conv] = service.conversations(service.actor())
    history = [m for m, _ in service.history(service.actor(), conv.id)]
    assert [(m.role, m.content, m.status) for m in history] == [
        ("user", "First", "complete"), ("assistant", "Fine, thanks.", "complete")]
    assert "Second" not in {m.content for m in history}


def test_max_new_tokens_never_starts_above_its_maximum(scripted):
    server, _, client = scripted(max_new_tokens=100)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    [max_new] = [p for p in endpoints["/send"]["parameters"] if p["parameter_name"] == "max_new"]
    assert max_new["parameter_default"] == 100
    for name in ("/load", "/new"):
        *_, max_tokens, _model, _notice, _excluded = client.predict(*([None] if name == "/load" else []),
                                                            api_name=name)
        assert max_tokens == 100, name
    client.predict(text="Hi", api_name="/send")  # its default is the largest allowed
    [conv] = server.app.service.conversations(server.app.service.actor())
    assert conv.settings["max_new_tokens"] == 100
    conv_settings = {**conv.settings, "max_new_tokens": 500}  # stored by an older, larger server
    server.app.service.update_settings(server.app.service.actor(), conv.id,
                                       system_prompt=conv.system_prompt, settings=conv_settings)
    assert client.predict(conv.id, api_name="/load")[5] == 100  # chat, list, prompt, temperature, top_p


def test_a_later_message_refused_as_busy_is_kept_and_retry_answers_it(scripted):
    server, backend, client = scripted()
    service = server.app.service
    client.predict(text="Hello", api_name="/send")
    backend.max_batch = backend.queue_size = 0  # every new answer is refused: the server is busy
    chat, _, notice, box = client.predict(text="And now?", api_name="/send")
    assert "busy" in value(notice) and "saved without an answer" in value(notice)
    assert chat_texts(chat)[-1] == ("user", "And now?") and value(box) == ""  # stored, shown
    _, _, notice, _ = client.predict(api_name="/retry")
    assert "busy" in value(notice)
    backend.max_batch = 4
    chat, _, notice, _ = client.predict(api_name="/retry")
    assert chat_texts(chat) == [("user", "Hello"), ("assistant", "Fine, thanks."),
                                ("user", "And now?"), ("assistant", "Fine, thanks.")]
    [conv] = service.conversations(service.actor())
    history = [(m.role, m.content) for m, _ in service.history(service.actor(), conv.id)]
    assert history == chat_texts(chat)  # the shown branch is the stored one, answered


def test_a_long_message_says_how_far_it_is_read_and_stop_with_nothing_running_says_so(scripted):
    """A message of tens of thousands of characters takes the model a while to read: the notice
    says so, with the tokens read so far, before any answer text; Stop with nothing being written
    answers that there is nothing to stop."""
    from chatlm.ui.chat import NOTHING_TO_STOP

    server, backend, client = scripted()
    backend.hold.clear()  # the answer waits, as a long prompt being read does
    long_text = "Please summarise this. " + "The quick brown fox jumps over the lazy dog. " * 280
    job = client.submit(text=long_text, api_name="/send")
    wait = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < wait:
        time.sleep(0.02)
    notice = value(job.outputs()[0][2])
    assert "It is long" in notice and "of 3," in notice and "tokens read" in notice, notice
    backend.hold.set()
    chat, *_ = job.result(timeout=30)
    assert chat_texts(chat)[-1] == ("assistant", "Fine, thanks.")
    [conv] = server.app.service.conversations(server.app.service.actor())
    assert client.predict(conv.id, api_name="/stop") == NOTHING_TO_STOP
    assert client.predict(None, api_name="/stop") == NOTHING_TO_STOP


def test_continue_writes_on_a_cut_answer_and_refuses_a_whole_one(scripted):
    """``/continue`` (the Continue button's endpoint): the cut answer is written on as a new
    alternative that starts with it; a whole answer is refused with a message and nothing stored."""
    server, _, client = scripted()
    service = server.app.service
    chat, _, notice, _ = client.predict(text="Hello", max_new=2, api_name="/send")
    # the chat says on the answer that it was cut (as the page draws it)
    assert chat_texts(chat)[-1] == ("assistant", "Fine, " + MARKS["cut"]) and "Continue" in value(notice)
    chat, _, notice, _ = client.predict(max_new=2, api_name="/continue")
    assert chat_texts(chat) == [("user", "Hello"), ("assistant", "Fine, Fine, " + MARKS["cut"])]  # the script, again
    [conv] = service.conversations(service.actor())
    answers = [m for m, _ in service.history(service.actor(), conv.id) if m.role == "assistant"]
    assert answers[-1].content == "Fine, Fine, " and service.siblings(service.actor(), answers[-1].id) == (2, 2)

    client.predict(text="Once more", api_name="/send")  # a whole answer
    stored = len(service.history(service.actor(), conv.id))
    _, _, notice, _ = client.predict(api_name="/continue")
    assert "cut at the token limit or stopped" in value(notice)
    assert len(service.history(service.actor(), conv.id)) == stored
