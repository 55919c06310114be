"""One chat turn through the service on a real SQLite file (tiny model for speed)."""

from __future__ import annotations

import sqlite3

import pytest

from chatlm.engine.params import SamplingParams
from chatlm.errors import InputError, StorageError
from tests.wiring import make_service, parts

LONG = SamplingParams(temperature=0.0, max_new_tokens=150)
SHORT = SamplingParams(temperature=0.0, max_new_tokens=8)


@pytest.fixture
def service(settings, tiny_backend):
    return make_service(settings, tiny_backend)


def rows(service, me, conv_id):
    return [(m.role, m.status) for m, _ in service.history(me, conv_id)]


def test_question_is_committed_before_the_answer_starts(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    reply = service.send(me, conv.id, "hello", SHORT)
    assert rows(service, me, conv.id) == [("user", "complete")]
    text = reply.run()
    history = service.history(me, conv.id)
    answer = history[-1][0]
    assert answer.content == text and answer.status == "complete"
    assert answer.prompt_messages[0]["role"] == "system"
    assert answer.completion_tokens == reply.generation.completion_tokens > 0
    assert answer.model_id == "tiny-random" and answer.latency_ms is not None
    assert service.conversation(me, conv.id).title == "hello"


def test_stop_keeps_partial_text_marked_stopped(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    reply = service.send(me, conv.id, "tell me a story", LONG)
    stream = iter(reply)
    shown = next(stream) + next(stream)
    assert service.stop(me, conv.id)
    shown += "".join(stream)
    answer = service.history(me, conv.id)[-1][0]
    assert answer.status == "stopped"
    assert answer.content == shown and answer.content
    assert answer.completion_tokens < 150


def test_reader_leaving_early_still_stores_the_answer(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    stream = iter(service.send(me, conv.id, "story", LONG))
    next(stream)
    stream.close()  # e.g. the browser tab closed
    assert rows(service, me, conv.id) == [("user", "complete"), ("assistant", "stopped")]


def test_retry_makes_a_sibling_and_shows_it(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "hi", SHORT).run()
    first = service.history(me, conv.id)[-1][0]
    service.retry(me, first.id, SamplingParams(temperature=1.0, max_new_tokens=8, seed=1)).run()
    history = service.history(me, conv.id)
    second = history[-1][0]
    assert len(history) == 2 and second.id != first.id
    assert second.parent_id == first.parent_id == history[0][0].id


def test_retry_and_continue_at_the_end_of_a_chat(service) -> None:
    """What the Retry and Continue buttons do, decided by the service: an empty chat has nothing to
    retry or continue, a question left unanswered is asked again, an answer gets an alternative."""
    from chatlm.store import repo
    from chatlm.store.db import transaction

    me = service.actor()
    conv = service.new_conversation(me)
    with pytest.raises(InputError, match="no answer to retry"):
        service.retry_last(me, conv.id, SHORT)
    with pytest.raises(InputError, match="no answer to continue"):
        service.continue_last(me, conv.id, SHORT)
    with transaction(service.sessions) as s:  # a question the server was too busy to answer
        asked = repo.add_message(s, conversation_id=conv.id, role="user", content="tell me a story")
        repo.get_conversation(s, conversation_id=conv.id, user_id=me.user_id).active_leaf_id = asked.id
    with pytest.raises(InputError, match="no answer to continue"):
        service.continue_last(me, conv.id, SHORT)
    service.retry_last(me, conv.id, SHORT).run()  # asked again (a new branch from the same point), answered
    (question, _), (cut, _) = service.history(me, conv.id)
    assert (question.content, cut.role, cut.parent_id) == ("tell me a story", "assistant", question.id)
    assert question.id != asked.id and question.parent_id == asked.parent_id
    assert cut.generation_params["finish_reason"] == "length"
    service.continue_last(me, conv.id, SHORT).run()  # the cut answer written on, as an alternative
    longer = service.history(me, conv.id)[-1][0]
    assert longer.content.startswith(cut.content) and service.siblings(me, longer.id) == (2, 2)
    service.retry_last(me, conv.id, SHORT).run()  # and one more answer to the same question
    assert service.siblings(me, service.history(me, conv.id)[-1][0].id) == (3, 3)


def test_empty_and_oversized_messages_store_nothing(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    with pytest.raises(InputError, match="empty"):
        service.send(me, conv.id, "   ", SHORT)
    with pytest.raises(InputError, match="too long"):  # tiny model: 256-token context
        service.send(me, conv.id, "word " * 400, SHORT)
    assert rows(service, me, conv.id) == []


def test_long_conversation_drops_oldest_turns_with_notice(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    notices = []
    for i in range(6):
        reply = service.send(me, conv.id, f"message {i} " + "padding " * 25, SHORT)
        reply.run()
        notices.append(reply.notice)
    assert notices[0] == "" and "oldest" in notices[-1]
    assert len(service.history(me, conv.id)) == 12  # nothing deleted, only left out


@pytest.mark.slow  # waits out SQLite's 15 s busy timeout
def test_locked_database_is_a_clear_error_and_loses_nothing(service, settings) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "first", SHORT).run()
    path = settings.db_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="busy"):
            service.send(me, conv.id, "second", SHORT)
    finally:
        blocker.rollback()
        blocker.close()
    assert rows(service, me, conv.id) == [("user", "complete"), ("assistant", "complete")]


def test_edit_starts_a_branch_and_siblings_can_be_paged(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "first", SHORT).run()
    service.send(me, conv.id, "second", SHORT).run()
    old = [m.content for m, _ in service.history(me, conv.id)]
    second_q = service.history(me, conv.id)[2][0]
    service.edit(me, second_q.id, "second, edited", SHORT).run()
    new = [m.content for m, _ in service.history(me, conv.id)]
    assert new[:2] == old[:2] and new[2] == "second, edited" and len(new) == 4
    edited = service.history(me, conv.id)[2][0]
    assert service.siblings(me, edited.id) == (2, 2)
    shown = service.switch_sibling(me, edited.id, -1)
    assert shown == second_q.id
    assert [m.content for m, _ in service.history(me, conv.id)] == old  # old branch intact
    service.switch_sibling(me, second_q.id, +1)
    assert [m.content for m, _ in service.history(me, conv.id)] == new
    with pytest.raises(InputError):
        service.edit(me, service.history(me, conv.id)[-1][0].id, "x", SHORT)


def test_a_pager_click_pages_only_a_message_the_page_shows(service) -> None:
    """The page says "message 2, step -1"; the index is looked up in the ids this page was shown,
    so a forged index pages nothing, and the pagers drawn follow the turn paged."""
    from types import SimpleNamespace

    from chatlm.ui.chat import ChatUI

    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "first", SHORT).run()
    service.retry(me, service.history(me, conv.id)[-1][0].id, SHORT).run()
    ui = ChatUI(service, parts(service)["who"])
    ids = [m.id for m, _ in service.history(me, conv.id)]
    assert ui.marks(conv.id, ids, ids[1], None)["pagers"] == [
        {"index": 1, "role": "answer", "pos": 2, "count": 2}]
    for forged in ({"index": 7, "step": -1}, {"index": -1, "step": -1}, {"index": 1, "step": -9}):
        _, shown = ui.paged(conv.id, ids, SimpleNamespace(_data=forged), None)  # type: ignore[arg-type]
        assert shown == ids
    _, shown = ui.paged(conv.id, ids, SimpleNamespace(_data={"index": 1, "step": -1}), None)  # type: ignore[arg-type]
    assert shown[0] == ids[0] and shown[1] != ids[1]
    assert ui.marks(conv.id, shown, None, None) == {
        "pagers": [{"index": 1, "role": "answer", "pos": 1, "count": 2}], "rated": None}


def test_the_watchdog_draws_the_stored_chat_once_no_answer_runs(service) -> None:
    """While an answer runs the watchdog changes nothing; once it ended, it gives the page the chat
    as stored and Send back (a page whose follower's last update was lost would show Stop for good)."""
    from types import SimpleNamespace

    from chatlm.ui import chat

    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "first", SHORT).run()
    ui = chat.ChatUI(service, parts(service)["who"])
    request = SimpleNamespace(session_hash=None, username=None, headers={}, cookies={}, client=None)
    ui.answers.busy = lambda conv_id: True  # type: ignore[method-assign]
    assert ui.watch(conv.id, request) == chat.NOTHING  # type: ignore[arg-type]
    ui.answers.busy = lambda conv_id: False  # type: ignore[method-assign]
    view, ids, _list, _notice, send, stop, timer, retry, cont = ui.watch(conv.id, request)  # type: ignore[arg-type]
    assert view["value"][0]["content"] == "first" and len(ids) == 2
    assert (send["visible"], stop["visible"], timer["active"]) == (True, False, False)
    assert retry["interactive"] and cont["interactive"]  # the chat has an answer to retry or continue


def test_feedback_stats(service) -> None:
    from chatlm.feedback import stats
    from chatlm.store.db import transaction

    me = service.actor()
    conv = service.new_conversation(me)
    for q, value in (("one", 1), ("two", -1), ("three", 1)):
        service.send(me, conv.id, q, SHORT).run()
        service.rate(me, service.history(me, conv.id)[-1][0].id, value,
                     comment=f"c-{q}", reason="other" if value < 0 else None)
    with transaction(service.sessions) as s:
        rows = stats.rated_rows(s)
        assert {r.question for r in rows} == {"one", "two", "three"}
        assert [r.comment for r in stats.rated_rows(s, label="dislike")] == ["c-two"]
        assert [r.question for r in stats.rated_rows(s, text="thr")] == ["three"]
    table = stats.counts(rows)
    assert sorted((t["label"], t["count"]) for t in table) == [("dislike", 1), ("like", 2)]
    assert all(t["adapter"] == "base" for t in table)


def test_editing_the_first_message_starts_a_new_root(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "first", SHORT).run()
    original = service.history(me, conv.id)[0][0]
    service.edit(me, original.id, "first, edited", SHORT).run()
    history = [m for m, _ in service.history(me, conv.id)]
    assert history[0].content == "first, edited" and len(history) == 2
    assert history[0].parent_id is None
    assert service.siblings(me, history[0].id) == (2, 2)


def test_a_thumb_keeps_the_rating_details(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "q", SHORT).run()
    answer = service.history(me, conv.id)[-1][0]
    service.rate(me, answer.id, -1, reason="wrong", comment="no", better_answer="yes")
    from chatlm.ui.chat import ChatUI

    class Like:
        index, liked = 1, True

    ChatUI(service, parts(service)["who"]).like([0, answer.id], conv.id, Like())  # type: ignore[arg-type]
    # the comment and better answer stay; the 👎's reason goes with the 👎
    assert service.rating_detail(me, answer.id) == {"value": 1, "reason": None, "comment": "no",
                                                     "better_answer": "yes"}


def test_a_reason_fits_its_thumb(service) -> None:
    """A reason says what was wrong: with 👍 it is refused, with words the user reads, and the
    rating stored before stays as it was."""
    from chatlm.errors import InputError

    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "q", SHORT).run()
    answer = service.history(me, conv.id)[-1][0]
    service.rate(me, answer.id, -1, reason="not_grounded")
    with pytest.raises(InputError, match="“Not what the loaded text says” is a reason for 👎"):
        service.rate(me, answer.id, 1, reason="not_grounded")
    assert service.rating_detail(me, answer.id)["value"] == -1
    assert service.rating_detail(me, answer.id)["reason"] == "not_grounded"


def test_a_thumb_clicked_before_the_page_holds_the_answers_id_is_saved(service) -> None:
    """The page shows an answer's text while it streams and gets its id with the last update; a 👎
    clicked in between (ids without the answer) must still be saved, on the right answer."""
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "q", SHORT).run()
    question, answer = (m for m, _ in service.history(me, conv.id))
    from chatlm.ui.chat import ChatUI

    class Dislike:
        index, liked = 1, False

    assert ChatUI(service, parts(service)["who"]).like([question.id], conv.id, Dislike()) == answer.id  # type: ignore[arg-type]
    assert service.rating_detail(me, answer.id)["value"] == -1


def _stored(settings, message_id: int):
    """The message as another connection reads it from the file (what a crash would leave)."""
    from chatlm.store import db
    from chatlm.store.models import Message

    with db.transaction(db.make_sessionmaker(db.make_engine(settings.db_url))) as s:
        msg = s.get(Message, message_id)
        return None if msg is None else (msg.status, msg.content)


def test_a_streaming_answer_is_checkpointed_and_a_crash_leaves_it_interrupted(service, settings,
                                                                              monkeypatch) -> None:
    import chatlm.chat.reply as reply_module

    monkeypatch.setattr(reply_module, "CHECKPOINT_S", 0.0)  # every delta, so the test is exact
    me = service.actor()
    conv = service.new_conversation(me)
    reply = service.send(me, conv.id, "tell me a story", LONG)
    stream = iter(reply)
    shown = next(stream) + next(stream) + next(stream)
    assert reply.message_id is not None
    assert _stored(settings, reply.message_id) == ("pending", shown)
    # a crash now: the process is gone before the answer ends; the next server start marks it
    reply.generation.cancel()
    restarted = make_service(settings, service.backend)
    assert restarted.mark_interrupted() == 1
    assert _stored(settings, reply.message_id) == ("interrupted", shown)
    answer = restarted.history(me, conv.id)[-1][0]
    assert (answer.id, answer.status, answer.content) == (reply.message_id, "interrupted", shown)


def test_a_checkpointed_answer_ends_as_one_row(service, settings, monkeypatch) -> None:
    import chatlm.chat.reply as reply_module

    monkeypatch.setattr(reply_module, "CHECKPOINT_S", 0.0)
    me = service.actor()
    conv = service.new_conversation(me)
    text = service.send(me, conv.id, "story", LONG).run()
    assert rows(service, me, conv.id) == [("user", "complete"), ("assistant", "complete")]
    assert service.history(me, conv.id)[-1][0].content == text
    assert service.mark_interrupted() == 0  # nothing is left pending by an answer that ended


def test_deleting_a_conversation_while_it_streams_stores_nothing_and_raises_nothing(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    stream = iter(service.send(me, conv.id, "story", LONG))
    next(stream)
    service.delete(me, conv.id)
    "".join(stream)  # ends quietly: the answer has nowhere to go
    assert all(c.id != conv.id for c in service.conversations(me))


def test_concurrent_first_requests_of_a_new_user_all_get_the_same_user(service) -> None:
    """Visitors arriving together on a fresh database each create the user row; the losers of that
    race must read the winner's row, not show a UNIQUE-constraint error."""
    import threading

    names = [f"visitor-{i}" for i in range(12)]
    barrier = threading.Barrier(8)
    results: dict[str, set[int]] = {name: set() for name in names}
    errors: list[BaseException] = []

    def visit() -> None:
        for name in names:
            barrier.wait()
            try:
                results[name].add(service.actor(name))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=visit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(ids) == 1 for ids in results.values()) and len({min(i) for i in results.values()}) == 12


def test_continue_goes_on_writing_a_cut_answer_as_a_new_alternative(service) -> None:
    from chatlm.errors import NotFoundError
    from chatlm.store import repo
    from chatlm.store.db import transaction

    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "tell me a story", SHORT).run()
    cut = service.history(me, conv.id)[-1][0]
    assert cut.generation_params["finish_reason"] == "length" and cut.completion_tokens == 8

    reply = service.continue_answer(me, cut.id, SHORT)
    streamed = "".join(reply)
    longer = service.history(me, conv.id)[-1][0]
    assert longer.id != cut.id and longer.parent_id == cut.parent_id  # a new alternative of the turn
    assert streamed == longer.content and longer.content.startswith(cut.content)
    assert len(longer.content) > len(cut.content) and longer.completion_tokens == 8
    assert longer.prompt_messages == cut.prompt_messages  # trained on as one answer to the question
    assert longer.generation_params["continued"] is True
    assert service.siblings(me, longer.id) == (2, 2)

    # the prompt the model saw: the question's, then the cut answer left open (no end of turn)
    backend = service.backend
    asked = backend.encode(cut.prompt_messages)
    open_answer = backend.encode([*cut.prompt_messages, {"role": "assistant", "content": cut.content}],
                                 continue_final=True)
    assert open_answer[:len(asked)] == asked and len(open_answer) > len(asked)
    assert backend.tokenizer.decode(open_answer[len(asked):]).strip() == cut.content.strip()

    # a whole answer, someone else's answer, and a question are refused, and nothing is stored
    with transaction(service.sessions) as s:
        repo.get_message(s, message_id=longer.id, user_id=me.user_id).generation_params = {
            **longer.generation_params, "finish_reason": "stop"}
    stored = len(service.history(me, conv.id))
    with pytest.raises(InputError, match="cut at the token limit or stopped"):
        service.continue_answer(me, longer.id, SHORT)
    with pytest.raises(NotFoundError):
        service.continue_answer(service.actor("someone-else"), cut.id, SHORT)
    with pytest.raises(InputError):
        service.continue_answer(me, cut.parent_id, SHORT)
    assert len(service.history(me, conv.id)) == stored
