"""The OpenAI-compatible API, driven by the official `openai` client against a running server."""

from __future__ import annotations

import threading

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
