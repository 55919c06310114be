"""The OpenAI-compatible API, driven by the official `openai` client against a running server."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_models_and_non_streaming_completion(server) -> None:
    c = client(server)
    ids = [m.id for m in c.models.list().data]
    assert ids[0] == "SmolLM2-135M-Instruct"
    out = c.chat.completions.create(model=ids[0], messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens > 5 and 0 < out.usage.completion_tokens <= 20
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streaming_with_usage_and_length_limit(server) -> None:
    c = client(server)
    stream = c.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Tell a story."}],
        temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 3
    assert finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 12 and text


def test_stop_and_seed(server) -> None:
    c = client(server)
    base = dict(model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Count: 1, 2, 3"}],
                max_tokens=30)
    full = c.chat.completions.create(temperature=0, **base).choices[0].message.content
    stop = full[5:8]
    cut = c.chat.completions.create(temperature=0, stop=[stop], **base).choices[0].message.content
    assert cut == full[: full.find(stop)]
    a = c.chat.completions.create(temperature=1.0, seed=3, **base).choices[0].message.content
    b = c.chat.completions.create(temperature=1.0, seed=3, **base).choices[0].message.content
    assert a == b


def test_errors_have_the_openai_shape(server) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.create(model="nope", messages=QUESTION)
    assert "does not exist" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION, temperature=5)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION, max_tokens=-4)
    with pytest.raises(openai.BadRequestError, match="context window"):
        c.chat.completions.create(model="SmolLM2-135M-Instruct",
                                  messages=[{"role": "user", "content": "word " * 9000}])
    raw = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    # a huge max_tokens is clamped, not refused
    out = c.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION,
                                    temperature=0, max_tokens=10**7)
    assert "Paris" in out.choices[0].message.content


def test_client_disconnect_frees_the_slot_and_others_are_served(server) -> None:
    scheduler = server.app.service.backend.scheduler
    c = client(server)
    stream = c.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "A long story."}],
        temperature=0, max_tokens=800, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    results: list[str] = []
    t = threading.Thread(target=lambda: results.append(c.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=QUESTION, temperature=0, max_tokens=20
    ).choices[0].message.content))
    t.start()
    t.join(60)
    assert results and "Paris" in results[0]
    assert scheduler.active == 0


def test_api_keys(start_server, bundled_backend) -> None:
    server = start_server(bundled_backend, api_keys=("s3cret",))
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    assert client(server, "s3cret").models.list().data


# ---- probing as an outsider: the tiny random model, every answer in OpenAI's error shape --------
TINY = "tiny-random"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def tiny_server(start_server, tiny_backend):
    return start_server(tiny_backend)


def openai_error(response: httpx.Response, status: int) -> dict:
    """The body's error, after checking the status and that the body has OpenAI's shape exactly."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_oversized_bodies_are_refused_before_reading(tiny_server) -> None:
    c = client(tiny_server)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:  # Content-Length says 5 MB
        c.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x" * 5_000_000}])
    assert exc.value.status_code == 413 and "limit of 4 MB" in exc.value.body["message"]
    assert time.monotonic() - started < 5  # it was 20 s of tokenising before a 400

    big = json.dumps({"model": TINY, "messages": [{"role": "user", "content": "x" * 5_000_000}]}).encode()

    def chunked():  # no Content-Length: counted while read
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    raw = httpx.post(f"{tiny_server.url}/v1/chat/completions", content=chunked(), timeout=60,
                     headers={"content-type": "application/json"})
    assert openai_error(raw, 413)["code"] == "request_too_large"


def test_long_messages_are_refused_before_tokenising(tiny_server, monkeypatch) -> None:
    c = client(tiny_server)
    tokenizer = tiny_server.app.service.backend.tokenizer
    calls: list[int] = []
    original = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "y" * 100_001}])
    assert "at most 100000 characters" in exc.value.body["message"]
    assert exc.value.body["param"] == "messages.0"
    parts = [{"type": "text", "text": "y" * 60_000}] * 2  # content parts count together
    with pytest.raises(openai.BadRequestError, match="at most 100000 characters"):
        c.chat.completions.create(model=TINY, messages=[{"role": "user", "content": parts}])
    many = [{"role": "user", "content": "y " * 45_000}] * 5  # each fits, together 450 000
    with pytest.raises(openai.BadRequestError, match="at most 400000 characters in all"):
        c.chat.completions.create(model=TINY, messages=many)
    assert calls == []  # nothing was tokenised
    assert c.chat.completions.create(model=TINY, messages=HI, max_tokens=2).choices
    assert calls  # the spy does see a request that is tokenised


def test_out_of_range_sampling_values_are_refused(tiny_server) -> None:
    c = client(tiny_server)
    for kwargs, words in [({"seed": 2**80}, "seed must be between"),
                          ({"seed": -(2**63) - 1}, "seed must be between"),
                          ({"extra_body": {"top_k": -1}}, "top_k must be"),
                          ({"stop": [""]}, "stop strings must not be empty"),
                          ({"stop": ""}, "stop strings must not be empty"),
                          ({"max_completion_tokens": 0}, "max_tokens must be at least 1")]:
        with pytest.raises(openai.BadRequestError) as exc:
            c.chat.completions.create(model=TINY, messages=HI, max_tokens=3, **kwargs)
        assert words in exc.value.body["message"], (kwargs, exc.value.body)
    for seed in (2**63 - 1, -(2**63), 0):  # the whole signed 64-bit range works, as at OpenAI
        out = c.chat.completions.create(model=TINY, messages=HI, max_tokens=3, temperature=1, seed=seed)
        assert out.choices[0].finish_reason in ("length", "stop")


def test_every_v1_error_has_the_openai_shape(tiny_server, monkeypatch) -> None:
    url = f"{tiny_server.url}/v1/chat/completions"
    json_header = {"content-type": "application/json"}
    bad_utf8 = openai_error(httpx.post(url, content=b'{"model": "\xff\xfe"}', headers=json_header), 400)
    assert "not valid UTF-8" in bad_utf8["message"]
    deep = openai_error(httpx.post(url, content=b"[" * 100_000 + b"]" * 100_000, headers=json_header), 400)
    assert "nested too deeply" in deep["message"]
    broken = openai_error(httpx.post(url, content=b"{not json", headers=json_header), 400)
    assert "not valid JSON" in broken["message"] and broken["param"] is None
    plain = openai_error(httpx.post(url, content=json.dumps({"model": TINY, "messages": HI}),
                                    headers={"content-type": "text/plain"}), 400)
    assert "application/json" in plain["message"]
    assert "Unknown endpoint" in openai_error(httpx.get(f"{tiny_server.url}/v1/nope"), 404)["message"]
    assert openai_error(httpx.get(f"{tiny_server.url}/v1"), 404)["code"] == "not_found"
    wrong = httpx.get(url)
    assert "use POST" in openai_error(wrong, 405)["message"] and wrong.headers["allow"] == "POST"

    def boom(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tiny_server.app.service, "generate", boom)
    failed = openai_error(httpx.post(url, json={"model": TINY, "messages": HI}), 500)
    assert failed["type"] == "server_error" and "a bug" not in failed["message"]
    # the UI mounted at / keeps its own errors
    outside = httpx.get(f"{tiny_server.url}/no-such-page")
    assert outside.status_code == 404 and "error" not in outside.json()


def test_continue_final_message_goes_on_writing_the_assistants_message(server) -> None:
    """vLLM's ``continue_final_message`` (what chatlm's remote backend sends for Continue): the last
    assistant message is written on, not answered; without it, or after a user message, it is not."""
    c = client(server)
    base = dict(model="SmolLM2-135M-Instruct", temperature=0, max_tokens=8)
    start = c.chat.completions.create(messages=QUESTION, **base).choices[0].message.content
    opened = [*QUESTION, {"role": "assistant", "content": "The capital of France is"}]
    more = c.chat.completions.create(messages=opened, extra_body={"continue_final_message": True,
                                                                  "add_generation_prompt": False}, **base)
    assert "Paris" in more.choices[0].message.content
    assert not more.choices[0].message.content.lstrip().startswith("The capital")  # written on, not anew
    with pytest.raises(openai.BadRequestError, match="last message to be the assistant"):
        c.chat.completions.create(messages=QUESTION, extra_body={"continue_final_message": True}, **base)
    assert start  # a plain request is unchanged
