"""Knowledge texts in conversations: stored once, cited passages stored with the answer,
BM25 at once and dense embeddings in the background, survive a restart."""

from __future__ import annotations

import pytest

from chatlm.engine.params import SamplingParams
from chatlm.errors import InputError
from chatlm.store import db
from tests.wiring import make_service

TEXT = """The Normans were the people who in the 10th and 11th centuries gave their name to
Normandy, a region in France. They were descended from Norse raiders and pirates from Denmark,
Iceland and Norway.

The capital of the kingdom of Zorbia is Quillton, a city famous for its glass bridges.

Photosynthesis converts light energy into chemical energy stored in glucose."""
P = SamplingParams(temperature=0.0, max_new_tokens=30)


@pytest.fixture
def service(settings, bundled_backend):
    return make_service(settings, bundled_backend)


@pytest.mark.slow
def test_grounded_answer_cites_and_stores_sources(service) -> None:
    me = service.actor()
    conv = service.new_conversation(me)
    doc = service.library.load(actor=me, conversation_id=conv.id, name="facts.txt",
                               data=TEXT.encode())
    reply = service.send(me, conv.id, "What is the capital of Zorbia?", P)
    answer_text = reply.run()
    assert "Quillton" in answer_text
    answer = service.history(me, conv.id)[-1][0]
    assert answer.sources and answer.sources[0]["document"] == "facts.txt"
    assert answer.sources[0]["chunk_id"] > 0 and "score" in answer.sources[0]
    assert "Quillton" in answer.prompt_messages[-1]["content"]  # the passages the model saw
    # the same content loaded again is stored once; a second conversation can reuse it
    other = service.new_conversation(me)
    again = service.library.load(actor=me, conversation_id=other.id, name="copy.txt",
                                 text=TEXT)
    assert again.id == doc.id
    assert [d.id for d in service.library.documents(other.id)] == [doc.id]
    service.library.detach(actor=me, conversation_id=other.id, document_id=doc.id)
    assert service.library.documents(other.id) == []


def test_dense_embeddings_arrive_in_background_and_persist(settings, tiny_backend) -> None:
    from chatlm.chat.library import Library

    class FakeEmbedder:
        calls = 0

        def embed(self, texts, **_):
            import numpy as np

            FakeEmbedder.calls += 1
            return np.eye(len(texts), 384, dtype=np.float32)

        def embed_query(self, text):
            import numpy as np

            return np.eye(1, 384, dtype=np.float32)[0]

    service = make_service(settings, tiny_backend)
    library = Library(service.sessions, embedder=FakeEmbedder())
    me = service.actor()
    conv = service.new_conversation(me)
    library.load(actor=me, conversation_id=conv.id, name="t.txt", text=TEXT)
    assert library.retrieve(conv.id, "Zorbia capital")  # BM25 answers at once
    library.wait_for_embeddings()
    assert library.index_for(conv.id).index.has_dense
    # a new process (fresh library over the same file) does not embed again
    fresh = Library(db.make_sessionmaker(db.make_engine(settings.db_url)), embedder=FakeEmbedder())
    assert fresh.index_for(conv.id).index.has_dense
    assert FakeEmbedder.calls == 1


def test_bad_documents_store_nothing(settings, tiny_backend) -> None:
    service = make_service(settings, tiny_backend)
    me = service.actor()
    conv = service.new_conversation(me)
    for kwargs in ({"data": b"\x00\x01\x02binary\x00" * 10, "name": "x.txt"},
                   {"text": "   \n ", "name": "empty"},
                   {"data": b"%PDF-1.4 broken", "name": "bad.pdf"},
                   {"data": b"abc", "name": "x.exe"}):
        with pytest.raises(InputError):
            service.library.load(actor=me, conversation_id=conv.id, **kwargs)
    assert service.library.documents(conv.id) == []
    assert service.library.user_documents(me) == []
