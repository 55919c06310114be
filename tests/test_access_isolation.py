"""Who may call what on a running server with accounts: each user sees only their own chats,
documents and exports; only an admin trains, compares or loads adapters; every named endpoint and
every /v1 route is tried by each kind of caller with ann's ids, and a refused call changes nothing.

Each caller has its own cookie jar: ann (the first account, admin), bob (a user), a guest, and an
anonymous caller with no cookie at all (``tests/access.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chatlm.identity.accounts import AccountService
from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE
from chatlm.store import db
from tests.access import client_as, counts, guest_of, issued_guest, refused, session_cookie
from tests.conftest import ANN, BOB

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


@pytest.fixture
def server(accounts_server):
    return accounts_server


def test_each_user_sees_only_their_own_and_only_admins_train(server) -> None:
    ann = client_as(server, session_cookie(server, ANN))
    bob = client_as(server, session_cookie(server, BOB))
    guest_cookie = issued_guest(server)
    guest = client_as(server, f"{GUEST_COOKIE}={guest_cookie}")
    try:
        ann.predict(text="Ann's secret question", temperature=0, max_new=4, api_name="/send")
        service = server.app.service
        accounts = AccountService(service.sessions)
        ann_actor, bob_actor = accounts.actor("ann"), accounts.actor("bob")
        ann_conv = service.conversations(ann_actor)[0]
        ann.predict(None, None, "", "", api_name="/load_document")  # nothing to load: refused, kept
        doc = service.library.load(actor=ann_actor, conversation_id=ann_conv.id, name="ann.txt",
                                   text="Ann's private notes about the launch date. " * 20)
        before = counts(server)

        # bob: his sidebar is his own; ann's ids are refused and change nothing
        bob_view = bob.predict(None, api_name="/load")
        assert "Ann's secret" not in str(bob_view) and service.conversations(bob_actor) == []
        assert "does not exist" in refused(bob.predict, ann_conv.id, api_name="/open")
        # her chat's Markdown export: answered as a missing chat, to bob and to a stranger
        for cookie in (session_cookie(server, BOB), f"{GUEST_COOKIE}={issued_guest(server)}"):
            got = httpx.get(f"{server.url}/chats/{ann_conv.id}/export", headers={"Cookie": cookie}, timeout=30)
            assert got.status_code == 404 and "Ann's" not in got.text
        mine = httpx.get(f"{server.url}/chats/{ann_conv.id}/export",
                         headers={"Cookie": session_cookie(server, ANN)}, timeout=30)
        assert mine.status_code == 200 and "Ann's secret question" in mine.text
        bob.predict(text="Bob's own question", temperature=0, max_new=4, api_name="/send")
        assert any(why in refused(bob.predict, doc.id, api_name="/reuse_document")
                   for why in ("does not exist", "not in the list of choices"))
        after_bob = counts(server)
        assert after_bob["conversations"] == before["conversations"] + 1  # only his own new chat
        assert service.library.documents(service.conversations(bob_actor)[0].id) == []
        assert service.conversation(ann_actor, ann_conv.id).title == ann_conv.title

        # admin-only endpoints: refused for bob and the guest, nothing starts or changes
        for caller in (bob, guest):
            for args, name in (((("auto", 0, 2, 0, False, None)), "/start_round"),
                               ((("base model", None)), "/promote_adapter"),
                               (((None,)), "/rollback_adapter"),
                               ((("Hi", "base model", "base model")), "/compare")):
                assert "Only an admin" in refused(caller.predict, *args, api_name=name)
        assert counts(server) == after_bob

        # the admin may compare; exports are scoped: bob's has only his text, ann's everyone's
        left, right = ann.predict("Hi", "base model", "base model", api_name="/compare")
        assert isinstance(left, str) and left == right
        bob_file, _ = bob.predict("messages", api_name="/export_dataset")
        ann_file, _ = ann.predict("messages", api_name="/export_dataset")
        bob_text = Path(bob_file).read_text(encoding="utf-8")
        assert "Bob's own question" in bob_text and "Ann's secret" not in bob_text
        assert "Ann's secret" in Path(ann_file).read_text(encoding="utf-8")

        # the guest has a private identity of their own
        guest.predict(text="A guest's question", temperature=0, max_new=4, api_name="/send")
        guest_actor = guest_of(server, guest_cookie)
        assert [c.title for c in service.conversations(guest_actor)] == ["A guest's question"]
        assert "A guest's question" not in str(bob.predict(None, api_name="/load"))
        assert "A guest's question" not in str(ann.predict(None, api_name="/load"))
    finally:
        for c in (ann, bob, guest):
            c.close()


def test_api_keys_act_as_their_user_and_only_an_admin_loads_adapters(server) -> None:
    import openai

    accounts = AccountService(server.app.service.sessions)
    bob_key = accounts.create_key(accounts.actor("bob")).key
    ann_key = accounts.create_key(accounts.actor("ann")).key
    anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    bob = openai.OpenAI(base_url=f"{server.url}/v1", api_key=bob_key, max_retries=0)
    assert bob.models.list().data
    with pytest.raises(openai.PermissionDeniedError, match="admin"):
        bob.post("/adapters", body={"name": "x", "path": "/etc"}, cast_to=object)
    ann = openai.OpenAI(base_url=f"{server.url}/v1", api_key=ann_key, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="Only adapter directories under"):
        ann.post("/adapters", body={"name": "x", "path": "/etc"}, cast_to=object)
    accounts.revoke_key(accounts.actor("bob"), accounts.list_keys(accounts.actor("bob"))[0]["id"])
    with pytest.raises(openai.AuthenticationError):
        bob.models.list()


class FakeRequest:
    """What a handler reads of ``gr.Request``: cookies, headers and the page's session."""

    def __init__(self, cookie: str) -> None:
        name, _, value = cookie.partition("=")
        self.cookies, self.headers, self.session_hash = {name: value}, {}, "page-1"


def test_handlers_refuse_other_users_ids_behind_gradios_own_checks(server) -> None:
    """Gradio refuses a radio or dropdown value it never offered; the handlers and the store must
    refuse another user's ids on their own, for every caller that gets past that."""
    from chatlm.errors import NotFoundError, PermissionDeniedError
    from chatlm.identity.requests import Who
    from chatlm.ui.chat import ChatUI
    from chatlm.ui.knowledge import KnowledgePanel

    service = server.app.service
    who = Who(server.app.identity)
    ann_actor = AccountService(service.sessions).actor("ann")
    conv = service.new_conversation(ann_actor)
    reply = service.send(ann_actor, conv.id, "Ann's question", __import__(
        "chatlm.engine.params", fromlist=["SamplingParams"]).SamplingParams(temperature=0, max_new_tokens=3))
    reply.run()
    doc = service.library.load(actor=ann_actor, conversation_id=conv.id, name="a.txt", text="Private. " * 40)
    bob = FakeRequest(session_cookie(server, BOB))
    ui, panel = ChatUI(service, who), KnowledgePanel(service, who)
    bob_conv = service.new_conversation(AccountService(service.sessions).actor("bob"))
    before = counts(server)
    REFUSED = (NotFoundError, PermissionDeniedError)
    with pytest.raises(REFUSED):
        ui.open(conv.id, bob)
    with pytest.raises(REFUSED):
        ui.stop(conv.id, bob)
    with pytest.raises(REFUSED):
        ui.exclude(conv.id, True, bob)
    with pytest.raises(REFUSED):
        panel.reuse(bob_conv.id, doc.id, bob)  # ann's document into bob's own chat
    with pytest.raises(REFUSED):
        panel.documents(conv.id, bob)
    with pytest.raises(PermissionDeniedError, match="not signed in"):
        ui.open(conv.id, FakeRequest(f"{SESSION_COOKIE}=forged"))
    assert counts(server) == before
    assert service.library.documents(bob_conv.id) == []
    assert not service.conversation(ann_actor, conv.id).exclude_from_training


ADMIN_ENDPOINTS = {"/start_round", "/promote_adapter", "/rollback_adapter", "/compare", "/list_users", "/add_user",
                   "/set_role", "/set_user_password", "/remove_user"}


def ann_snapshot(server) -> dict[str, Any]:
    """Everything of ann's a stranger might try to read or change, and what only an admin changes."""
    from sqlalchemy import text

    with db.transaction(server.app.service.sessions) as s:
        def q(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in s.execute(text(sql))]

        return {
            "users": q("SELECT id, name, is_admin, password_hash, session_generation FROM users "
                       "WHERE is_guest = 0"),
            "conversations": q("SELECT c.id, c.title, c.exclude_from_training, c.active_leaf_id FROM conversations c "
                               "JOIN users u ON u.id = c.user_id WHERE u.name = 'ann'"),
            "messages": q("SELECT m.id, m.content, m.status FROM messages m JOIN conversations c "
                          "ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id WHERE u.name = 'ann'"),
            "ratings": q("SELECT r.message_id, r.value, r.comment FROM ratings r JOIN users u ON u.id = r.user_id "
                         "WHERE u.name = 'ann'"),
            "documents": q("SELECT cd.conversation_id, cd.document_id FROM conversation_documents cd JOIN "
                           "conversations c ON c.id = cd.conversation_id JOIN users u ON u.id = c.user_id "
                           "WHERE u.name = 'ann'"),
            "keys": q("SELECT k.id, k.revoked_at FROM api_keys k JOIN users u ON u.id = k.user_id "
                      "WHERE u.name = 'ann'"),
            "rounds": q("SELECT id FROM training_runs"), "adapters": q("SELECT name, is_active FROM adapters"),
        }


def test_every_named_endpoint_as_another_user_and_as_a_guest(server) -> None:
    """The isolation matrix over every named endpoint ``view_api`` lists: called by bob and by a guest
    with ann's ids wherever an endpoint takes an id, none reads or changes anything of ann's, and
    each admin endpoint is refused. A new endpoint fails this test until it is put in the matrix."""
    from chatlm.engine.params import SamplingParams

    service = server.app.service
    accounts = AccountService(service.sessions)
    ann = accounts.actor("ann")
    conv = service.new_conversation(ann)
    service.send(ann, conv.id, "Ann's private question", SamplingParams(temperature=0, max_new_tokens=3)).run()
    answer = service.history(ann, conv.id)[-1][0]
    service.rate(ann, answer.id, 1, comment="ann's comment")
    doc = service.library.load(actor=ann, conversation_id=conv.id, name="ann.txt",
                               text="Ann's private notes about the launch. " * 20)
    key = accounts.create_key(ann, "ann's key")
    args: dict[str, tuple[Any, ...]] = {
        "/load_document": (None, "A text the caller pastes. " * 5, "pasted"), "/remove_documents": ([doc.id],),
        "/reuse_document": (doc.id,), "/rate_detail": ("Dislike", "wrong", "c", "better"),
        "/withdraw_rating": (), "/export_dataset": ("messages",),
        "/start_round": ("auto", 0, 1, 0, False, None, False), "/promote_adapter": ("base model", None),
        "/rollback_adapter": (None,), "/compare": ("Hi", "base model", "base model"), "/list_users": (),
        "/add_user": ("mallory", "long enough password", True), "/set_role": ("ann", "user"),
        "/set_user_password": ("ann", "taken over, now"), "/remove_user": ("ann", True), "/list_keys": (),
        "/create_key": ("k",), "/revoke_key": (key.id,),
        "/change_password": ("wrong", "new password 1", "new password 1"),
        "/delete_account": (True, "wrong password"), "/send": ("Hello from the caller",), "/retry": (), "/continue": (),
        "/load": (conv.id,), "/new": (), "/open": (conv.id,), "/delete": (conv.id,), "/undo": (conv.id,),
        "/rename": (conv.id, "renamed by a stranger"),
        "/stop": (), "/rate": (), "/exclude": (True,),
    }
    before = ann_snapshot(server)
    for cookie in (session_cookie(server, BOB), f"{GUEST_COOKIE}={issued_guest(server)}"):
        caller = client_as(server, cookie)
        try:
            endpoints = set(caller.view_api(return_format="dict", print_info=False)["named_endpoints"])
            assert endpoints == set(args), f"put new endpoints in the matrix: {endpoints ^ set(args)}"
            outputs = {}
            for name, values in args.items():
                try:
                    outputs[name] = caller.predict(*values, api_name=name)
                except Exception as exc:
                    outputs[name] = exc
                    continue
                assert name not in ADMIN_ENDPOINTS, f"{name} answered a non-admin: {outputs[name]!r}"
            for name in ADMIN_ENDPOINTS:
                assert "Only an admin" in str(outputs[name]), (name, outputs[name])
            assert "Ann's private" not in repr(outputs) and "ann's comment" not in repr(outputs)
            exported = outputs["/export_dataset"]
            assert not isinstance(exported, Exception)
            assert "Ann's private" not in Path(exported[0]).read_text(encoding="utf-8")
        finally:
            caller.close()
        assert ann_snapshot(server) == before


def test_every_v1_route_for_each_kind_of_caller(server) -> None:
    """/v1 acts only on a key: an admin's, a user's, none, a guest's cookie, a revoked key."""
    accounts = AccountService(server.app.service.sessions)
    admin_key = accounts.create_key(accounts.actor("ann")).key
    user_key = accounts.create_key(accounts.actor("bob")).key
    revoked = accounts.create_key(accounts.actor("bob"))
    accounts.revoke_key(accounts.actor("bob"), revoked.id)
    model = server.app.service.backend.model_id
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    adapter = {"name": "x", "path": str(server.settings.data_dir / "adapters" / "missing")}
    callers = {"admin": {"Authorization": f"Bearer {admin_key}"}, "user": {"Authorization": f"Bearer {user_key}"},
               "anonymous": {}, "guest": {"Cookie": f"{GUEST_COOKIE}={issued_guest(server)}"},
               "revoked": {"Authorization": f"Bearer {revoked.key}"}}
    expected = [  # route, body, status for admin, user, anonymous, guest, revoked
        ("GET", "/v1/models", None, (200, 200, 401, 401, 401)),
        ("POST", "/v1/chat/completions", chat, (200, 200, 401, 401, 401)),
        ("POST", "/v1/adapters", adapter, (400, 403, 401, 401, 401)),  # admin: the folder is missing
        ("GET", "/v1/nowhere", None, (404, 404, 401, 401, 401)),
    ]
    before = counts(server)
    for method, path, body, statuses in expected:
        got = tuple(httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=60).status_code
                    for headers in callers.values())
        assert got == statuses, (method, path, dict(zip(callers, got, strict=True)))
    assert counts(server) == before  # the API stores nothing, and a refusal changes nothing
