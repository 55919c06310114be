"""Findings of a security probe, each reproduced on a running server (accounts on, ann the admin
and bob a user, a real SQLite file): one user's text never answers for another's, a broken
adapter is a 400, a document's name is shown and never run, and a refusal is one log line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatlm.adapters.serving import DEFAULT_MODEL
from chatlm.chat.library import Library
from chatlm.engine.params import SamplingParams
from chatlm.identity.accounts import AccountService
from chatlm.identity.requests import SESSION_COOKIE
from tests.conftest import BOB
from tests.seeding import StubEmbedder

TEXT = ("The launch of the Zorbia probe is planned for the ninth of March. "
        "Its budget is four million crowns and its pilot is Quillton.")
P = SamplingParams(temperature=0.0, max_new_tokens=3)


class Caller:
    """What a handler reads of ``gr.Request``: the signed-in user's session cookie."""

    def __init__(self, server: Any, name: str) -> None:
        identity = server.app.identity
        value = identity.session_value(AccountService(server.app.service.sessions).actor(name))
        self.cookies, self.headers, self.session_hash = {SESSION_COOKIE: value}, {}, f"page-{name}"
        self.actor = AccountService(server.app.service.sessions).actor(name)


@pytest.fixture
def server(accounts_server):
    """The accounts server, its texts embedded by a stub at once (MiniLM is not what is tested)."""
    service = accounts_server.app.service
    service.library = Library(service.sessions, embedder=StubEmbedder(), background=False)
    return accounts_server


@pytest.fixture
def panel(server):
    from chatlm.identity.requests import Who
    from chatlm.ui.knowledge import KnowledgePanel

    return KnowledgePanel(server.app.service, Who(server.app.identity))


def load(panel: Any, caller: Caller, name: str, text: str = TEXT) -> tuple[int, str]:
    """Paste ``text`` into a new chat as ``caller``: (the chat's id, the status line)."""
    conv_id, _used, _others, _chips, status, *_ = panel.load(None, None, text, name, caller)
    return conv_id, status


def sources_of_answer(service: Any, actor: Any, conv_id: int, question: str) -> list[str]:
    service.send(actor, conv_id, question, P, k=1).run()
    answer = [m for m, _ in service.history(actor, conv_id) if m.role == "assistant"][-1]
    return [s["document"] for s in answer.sources or []]


# ---- 1: a text's hash tells no user what another loaded ----------------------------------------
def test_two_users_loading_the_same_text_each_get_their_own(server, panel) -> None:
    service = server.app.service
    bob, ann = Caller(server, "bob"), Caller(server, "ann")
    bob_conv, bob_status = load(panel, bob, "bob-launch-plan.txt")
    ann_conv, ann_status = load(panel, ann, "ann-copy.txt")
    assert bob_status.startswith("Loaded **bob-launch-plan.txt**")
    assert ann_status.startswith("Loaded **ann-copy.txt**")  # not refused, not bob's name
    assert "bob" not in ann_status.lower() and "does not exist" not in ann_status
    (bob_doc,), (ann_doc,) = service.library.documents(bob_conv), service.library.documents(ann_conv)
    assert bob_doc.id != ann_doc.id and bob_doc.sha256 == ann_doc.sha256
    assert [d.id for d in service.library.user_documents(ann.actor)] == [ann_doc.id]
    assert [d.id for d in service.library.user_documents(bob.actor)] == [bob_doc.id]
    # each asks about it and is answered from their own copy, named as they named it
    assert set(sources_of_answer(service, ann.actor, ann_conv, "Who is the pilot?")) == {"ann-copy.txt"}
    assert set(sources_of_answer(service, bob.actor, bob_conv, "Who is the pilot?")) == {"bob-launch-plan.txt"}
    # the same user loading it again reuses their own row
    again_conv, again = load(panel, ann, "ann-again.txt")
    assert again.startswith("Loaded") and [d.id for d in service.library.documents(again_conv)] == [ann_doc.id]
    # bob's account (and his text) gone: ann's copy, chunks and answers are untouched
    AccountService(service.sessions).remove_user(None, BOB[0])
    assert [d.id for d in service.library.user_documents(ann.actor)] == [ann_doc.id]
    assert service.library.documents(ann_conv)[0].text == TEXT
    service.library = Library(service.sessions, embedder=StubEmbedder(), background=False)  # no cache
    assert set(sources_of_answer(service, ann.actor, ann_conv, "What is the budget?")) == {"ann-copy.txt"}


# ---- 2: a broken adapter or a NUL in its path is a 400 -------------------------------------------
@pytest.fixture
def admin_key(server) -> dict[str, str]:
    accounts = AccountService(server.app.service.sessions)
    return {"Authorization": f"Bearer {accounts.create_key(accounts.actor('ann')).key}"}


def adapter_dir(server, name: str, weights: bytes, **config: Any) -> Path:
    folder = Path(server.settings.data_dir) / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


@pytest.mark.parametrize("route,body", [
    ("/adapters", lambda path: {"name": "broken", "path": path}),
    ("/load_lora_adapter", lambda path: {"lora_name": "broken", "lora_path": path}),
])
def test_a_broken_adapter_or_a_nul_in_its_path_is_a_400(server, admin_key, tiny, tmp_path,
                                                         route, body) -> None:
    from tests.test_adapters import make_adapter

    good = make_adapter(tiny.model, tmp_path / "good", 1) / "adapter_model.safetensors"
    cases = {
        "garbage": (adapter_dir(server, "garbage", b"not a safetensors file"), "readable safetensors"),
        "truncated": (adapter_dir(server, "truncated", good.read_bytes()[:-100]), "readable safetensors"),
        "empty": (adapter_dir(server, "empty", b""), "readable safetensors"),
        "config": (adapter_dir(server, "config", good.read_bytes(), lora_alpha=None), "positive number"),
    }
    nul = str(Path(server.settings.data_dir) / "adapters" / "garbage") + "\x00/x"
    cases["nul"] = (nul, "NUL")
    url = f"{server.url}/v1{route}"
    for what, (path, said) in cases.items():
        answer = httpx.post(url, headers=admin_key, json=body(str(path)), timeout=30)
        assert answer.status_code == 400, (what, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert said in error["message"] and error["type"] == "invalid_request_error", (what, error)
    served = httpx.get(f"{server.url}/v1/models", headers=admin_key, timeout=30).json()["data"]
    assert [m["id"] for m in served] == [server.app.service.backend.model_id]


# ---- 3: a document's name is shown, never run ------------------------------------------------------
HOSTILE = "<img src=x onerror=alert(1)><a href='javascript:alert(2)'>[x](javascript:alert(3))</a>.txt"


def test_a_documents_name_is_escaped_in_the_status_line(server, panel) -> None:
    _conv, status = load(panel, Caller(server, "bob"), HOSTILE)
    assert status.startswith("Loaded **&lt;img src=x onerror=alert(1)&gt;")
    for raw in ("<img", "<a ", "</a>", "[x](javascript"):
        assert raw not in status, raw
    from chatlm.ui.knowledge import sources_block

    block = sources_block("[1]", [{"n": 1, "chunk_id": 7, "document": HOSTILE}], {7: "Some text."})
    assert "<img" not in block and "<a " not in block and "[x](javascript" not in block


def test_a_failed_rounds_error_is_escaped_in_the_training_tab() -> None:
    from chatlm.store.models import TrainingRun
    from chatlm.ui.training_view import describe_run

    run = TrainingRun(id=3, status="failed", method="document", error=f"{HOSTILE} changed after the round was started")
    line = describe_run(run)
    assert "&lt;img src=x" in line and "<img" not in line and "<a " not in line


# ---- 4: a refusal is one log line, never a traceback ---------------------------------------------
def test_a_refused_call_logs_one_line_and_no_traceback(server, caplog, capfd) -> None:
    import logging

    import gradio_client

    service = server.app.service
    ann = Caller(server, "ann")
    ann_conv = service.new_conversation(ann.actor)
    bob_cookie = f"{SESSION_COOKIE}={Caller(server, 'bob').cookies[SESSION_COOKIE]}"
    bob = gradio_client.Client(server.url, verbose=False, headers={"Cookie": bob_cookie})
    anonymous = gradio_client.Client(server.url, verbose=False)
    capfd.readouterr()
    refusals: list[tuple[Any, tuple[Any, ...], str, str]] = [
        (bob.predict, (ann_conv.id,), "/open", "does not exist"),  # another user's chat
        (anonymous.predict, (ann_conv.id,), "/open", "not signed in"),  # no identity at all
        (anonymous.predict, ("Hello", "", 0.5, 0.9, 3, DEFAULT_MODEL), "/send", "not signed in"),  # a stream
        (bob.predict, (0.5, 0.0, 3, DEFAULT_MODEL), "/retry", "less than minimum"),  # Gradio's own check
    ]
    try:
        for call, args, api_name, said in refusals:
            caplog.clear()
            with caplog.at_level(logging.INFO), pytest.raises(Exception, match=said):
                call(*args, api_name=api_name)
            ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "gradio_client"))]
            assert [r.getMessage()[:8] for r in ours] == ["refused "], (api_name, [r.getMessage() for r in ours])
            assert ours[0].exc_info is None and said in ours[0].getMessage(), api_name
            out = capfd.readouterr()
            assert "Traceback" not in out.err + out.out, (api_name, out.err[-2000:])
    finally:
        bob.close()
        anonymous.close()
    # refused outside Gradio too: a wrong password, a user's key loading an adapter
    caplog.clear()
    with caplog.at_level(logging.INFO):
        wrong = httpx.post(f"{server.url}/login", data={"name": "bob", "password": "nope"}, timeout=30)
        accounts = AccountService(service.sessions)
        key = {"Authorization": f"Bearer {accounts.create_key(accounts.actor('bob')).key}"}
        denied = httpx.post(f"{server.url}/v1/adapters", headers=key, timeout=30,
                            json={"name": "x", "path": "/etc"})
    assert wrong.status_code == 401 and denied.status_code == 403
    out = capfd.readouterr()
    assert "Traceback" not in out.err + out.out
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert len(ours) <= 2 and all(r.exc_info is None for r in ours), [r.getMessage() for r in ours]
