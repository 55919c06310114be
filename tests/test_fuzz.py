"""Fuzzing every text extractor and the ``/v1`` request path, and a corpus of hostile files.

The property everywhere: any input parses, or is refused with chatlm's ``InputError`` carrying a
message (a 400/404 in OpenAI's shape on the API); never another exception, never a hang. The
strategies, checks and hostile files are in ``tests/fuzz_corpus.py``, so that
``bench/reliability_fuzz.py`` runs the same properties for minutes instead of seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from bench.fuzz_corpus import (
    ACCEPTED,
    TEXT_TYPES,
    any_text,
    api_client,
    check_decode_text,
    check_html,
    check_parse_bytes,
    check_parse_text,
    check_request_model,
    check_route,
    damaged_pdf,
    file_bytes,
    hostile_html,
    json_values,
    near_valid_request,
    raw_body,
    refused_files,
    request_body,
    valid_request,
)
from chatlm.errors import InputError


class FakeEmbedder:
    """Stands in for the embedding model: the corpus is about parsing and storing, not vectors."""

    def embed(self, texts: list[str], **_: Any) -> Any:
        import numpy as np

        return np.zeros((len(texts), 384), dtype=np.float32)

    def embed_query(self, text: str) -> Any:
        import numpy as np

        return np.zeros(384, dtype=np.float32)


@pytest.fixture
def library(settings, tiny_backend) -> Iterator[tuple[Any, int, int]]:
    """A Library over a real SQLite file, with a user and a conversation."""
    from chatlm.chat.library import Library
    from tests.wiring import make_service

    service = make_service(settings, tiny_backend)
    lib = Library(service.sessions, embedder=FakeEmbedder())
    me = service.actor()
    yield lib, me, service.new_conversation(me).id
    lib.wait_for_embeddings()


# ---- properties, a few seconds in all --------------------------------------------------------
FAST = hypothesis.settings(max_examples=150, deadline=timedelta(seconds=2))


@FAST
@given(data=file_bytes, suffix=st.sampled_from(TEXT_TYPES))
def test_parse_bytes_text_types(data: bytes, suffix: str) -> None:
    check_parse_bytes(data, "file" + suffix)


@hypothesis.settings(max_examples=8, deadline=None)
@given(data=damaged_pdf)
def test_parse_bytes_damaged_pdfs(data: bytes) -> None:
    check_parse_bytes(data, "doc.pdf", pdf_timeout=10)


@FAST
@given(text=any_text | st.text(alphabet=" \t\r\n\x00\x0b\x0c\x1f\x7f\ufeffab", max_size=50))
def test_parse_text(text: str) -> None:
    check_parse_text(text)


@FAST
@given(data=file_bytes)
def test_decode_text(data: bytes) -> None:
    check_decode_text(data)


@FAST
@given(html=hostile_html)
def test_html_markup_never_leaks(html: str) -> None:
    check_html(html)


@FAST
@given(body=request_body | valid_request | near_valid_request | json_values)
def test_request_model(body: Any) -> None:
    check_request_model(body)


@pytest.fixture(scope="module")
def api(tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(tiny, max_batch=4, queue_size=4)
    yield api_client(backend, tmp_path_factory.mktemp("fuzz-api"))
    backend.close()


@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=raw_body)
def test_chat_completions_route(api: Any, body: bytes) -> None:
    hypothesis.event(f"HTTP {check_route(api, body)}")


# ---- the hostile corpus through Library.load: the user's message, and nothing stored ----------
def test_hostile_files_are_refused_and_nothing_is_stored(library) -> None:
    lib, me, conv = library
    for name, data, words in refused_files():
        with pytest.raises(InputError, match=words):
            lib.load(actor=me, conversation_id=conv, name=name, data=data)
    assert lib.user_documents(me) == [] and lib.documents(conv) == []


def test_hostile_but_readable_files_store_their_text(library) -> None:
    lib, me, conv = library
    for name, data, text in ACCEPTED:
        assert lib.load(actor=me, conversation_id=conv, name=name, data=data).text == text, name
    chunks = "\n".join(text for _, _, text, _, _ in lib.index_for(conv).chunks)
    assert "Visible paragraph" in chunks and "<script" not in chunks and "onerror=" not in chunks
    line = lib.load(actor=me, conversation_id=conv, name="line.txt", data=b"x" * 10_000_000)
    assert len(line.text) == 10_000_000
    assert {d.name for d in lib.documents(conv)} == {n for n, _, _ in ACCEPTED} | {"line.txt"}  # distinct texts
