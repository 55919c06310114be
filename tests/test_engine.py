"""Engine: the real bundled model answers; the scheduler's batching, stop, streaming and limits."""

from __future__ import annotations

import time
from typing import Any

import pytest

from chatlm.engine.decode import IncrementalDecoder, StopMatcher
from chatlm.engine.params import SamplingParams
from chatlm.errors import BusyError, InputError

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


def ask(backend, question: str, params: SamplingParams = GREEDY):
    return backend.chat([{"role": "user", "content": question}], params)


@pytest.mark.slow
def test_bundled_model_answers_paris(bundled_backend) -> None:
    gen = ask(bundled_backend, "What is the capital of France?",
              SamplingParams(temperature=0.0, max_new_tokens=20))
    assert "Paris" in gen.wait()
    assert gen.finish_reason == "stop" and 0 < gen.completion_tokens <= 20


def test_gguf_copy_is_safetensors_and_reloads_fast(bundled) -> None:
    from pathlib import Path

    from chatlm.engine import loader

    path = Path(bundled.path)
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    start = time.perf_counter()
    again = loader.load("bundled", path.parents[1], "cpu")
    assert time.perf_counter() - start < 10  # the GGUF route takes ~25 s
    assert again.model_id == "SmolLM2-135M-Instruct"


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_batched_greedy_equals_single(tiny_backend) -> None:
    """Rows joining a running batch (with left padding) decode exactly as they would alone."""
    import threading

    questions = ["Hello there", "A much longer question about many different things?", "x"]
    params = [SamplingParams(temperature=0.0, max_new_tokens=n) for n in (100, 15, 15)]
    alone = [ask(tiny_backend, q, p).wait() for q, p in zip(questions, params, strict=True)]
    first = ask(tiny_backend, questions[0], params[0])
    _wait_for(lambda: first.completion_tokens >= 1)  # decoding: the others must join a running batch
    gate = threading.Event()
    held = threading.Thread(target=tiny_backend.scheduler.call, args=(lambda: gate.wait(10),))
    held.start()  # the scheduler waits between two steps while the others are queued
    _wait_for(lambda: not tiny_backend.scheduler._tasks)
    rest = [ask(tiny_backend, q, p) for q, p in zip(questions[1:], params[1:], strict=True)]
    gate.set()
    held.join()
    _wait_for(lambda: all(g.completion_tokens >= 1 for g in rest))
    assert not first.done  # they joined while it ran
    together = [g.wait() for g in [first, *rest]]
    assert together == alone
    assert all(len(t) > 0 for t in alone)


def test_seeded_sampling_is_reproducible_inside_a_batch(tiny_backend) -> None:
    p = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=10, seed=7)
    a = ask(tiny_backend, "hi", p)
    noise = ask(tiny_backend, "other", SamplingParams(temperature=1.0, max_new_tokens=10))
    b = ask(tiny_backend, "hi", p)
    assert a.wait() == b.wait()
    noise.wait()


def test_cancel_frees_the_slot_and_stops_work(tiny_backend) -> None:
    gen = ask(tiny_backend, "go on", SamplingParams(temperature=0.0, max_new_tokens=200))
    deltas = iter(gen)
    next(deltas)
    gen.cancel()
    list(deltas)
    assert gen.finish_reason == "cancelled"
    assert gen.completion_tokens < 200
    assert tiny_backend.scheduler.active == 0
    steps = tiny_backend.scheduler.steps
    time.sleep(0.2)
    assert tiny_backend.scheduler.steps == steps  # no decoding after the stop


def test_max_new_tokens_and_stop_strings(tiny_backend) -> None:
    gen = ask(tiny_backend, "count", SamplingParams(temperature=0.0, max_new_tokens=5))
    gen.wait()
    assert gen.finish_reason == "length" and gen.completion_tokens == 5
    text = ask(tiny_backend, "count", SamplingParams(temperature=0.0, max_new_tokens=30)).wait()
    stop = text[3:6]
    cut = ask(tiny_backend, "count", SamplingParams(temperature=0.0, max_new_tokens=30,
                                                    stop=(stop,)))
    assert cut.wait() == text[: text.find(stop)]
    assert cut.finish_reason == "stop"


def test_queue_full_says_busy(tiny) -> None:
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(tiny, max_batch=1, queue_size=1)
    try:
        long = SamplingParams(temperature=0.0, max_new_tokens=150)
        running = ask(backend, "a", long)
        next(iter(running))  # admitted to the batch
        waiting = ask(backend, "b", long)
        with pytest.raises(BusyError, match="retry"):
            ask(backend, "c", long)
        running.cancel()
        waiting.cancel()
    finally:
        backend.close()


def test_the_queue_bound_holds_while_admitted_prompts_are_being_set_up(tiny) -> None:
    """Prompts taken from the queue for the batch are counted while their prefill is set up (a
    shared prefix runs the model then): a burst in that moment gets only the queue's places."""
    import threading

    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(tiny, max_batch=2, queue_size=1)
    scheduler = backend.scheduler
    setting_up, release = threading.Event(), threading.Event()
    start_fill = scheduler._start_fill

    def slow_start_fill(admit):  # what a prefix forward pass does to the timing, made certain
        setting_up.set()
        release.wait(10)
        return start_fill(admit)

    scheduler._start_fill = slow_start_fill
    long = SamplingParams(temperature=0.0, max_new_tokens=100)
    taken = []
    try:
        taken += [ask(backend, "a", long), ask(backend, "b", long)]
        assert setting_up.wait(10)  # both taken from the queue, their prefill being set up
        refused = 0
        for text in ("c", "d", "e"):
            try:
                taken.append(ask(backend, text, long))
            except BusyError:
                refused += 1
        assert (len(taken), refused) == (3, 2)  # the batch of 2 and the queue of 1, no more
    finally:
        release.set()
        for gen in taken:
            gen.cancel()
        backend.close()


def test_stop_on_a_queued_answer_ends_it_while_the_batch_runs(tiny) -> None:
    """A visitor who presses Stop while the answer waits for a slot is not kept waiting until the
    running answers finish: the queued request ends at the next decoding step."""
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(tiny, max_batch=1, queue_size=4)
    try:
        running = ask(backend, "a", SamplingParams(temperature=0.0, max_new_tokens=200, stop=()))
        deltas = iter(running)
        next(deltas)  # admitted to the batch
        queued = ask(backend, "b", SamplingParams(temperature=0.0, max_new_tokens=5))
        queued.cancel()
        assert queued.wait() == "" and queued.finish_reason == "cancelled"
        assert not running.done and backend.scheduler.waiting == 0
        running.cancel()
        list(deltas)
    finally:
        backend.close()


def test_prompt_longer_than_context_is_refused(tiny_backend) -> None:
    with pytest.raises(InputError, match="context window"):
        tiny_backend.scheduler.submit(list(range(300)), GREEDY)


def test_streamed_deltas_never_split_a_character(bundled) -> None:
    tok = bundled.tokenizer
    text = "Ünïcödé ✓ 日本語のテキスト 🎉🚀 done"
    ids = tok.encode(text, add_special_tokens=False)
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(i) for i in ids]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert any(d == "" for d in deltas)  # some tokens ended mid-character and were held back


def test_stop_matcher_holds_back_a_possible_stop_prefix() -> None:
    m = StopMatcher(["END"])
    shown = m.feed("abc E") + m.feed("N")
    assert "E" not in shown
    shown += m.feed("D tail")
    assert shown == "abc " and m.stopped


def test_server_side_clamping() -> None:
    p = SamplingParams(temperature=9, top_p=0, top_k=-3, max_new_tokens=10**9).clamped(512)
    assert (p.temperature, p.top_p, p.top_k, p.max_new_tokens) == (2.0, 0.01, 0, 512)
    with pytest.raises(InputError):
        SamplingParams(temperature=3).validate()


def test_a_long_prompt_joins_in_chunks_while_the_batch_keeps_decoding(tiny) -> None:
    """A joining prompt is prefilled a chunk at a time between decoding steps: the running answer
    gains tokens while it is read, and the chunked answer is the one an unchunked prefill gives."""
    from chatlm.engine.local import LocalBackend

    long_question = " ".join(f"word{i}" for i in range(60))
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    whole = LocalBackend(tiny)  # 256-token chunks: this prompt in one pass
    chunked = LocalBackend(tiny)
    chunked.scheduler.prefill_chunk = 8
    try:
        expected = ask(whole, long_question, params).wait()
        assert len(whole.encode([{"role": "user", "content": long_question}])) > 100
        running = ask(chunked, "Hello there", SamplingParams(temperature=0.0, max_new_tokens=200))
        _wait_for(lambda: running.completion_tokens >= 1)
        before = running.completion_tokens
        joining = ask(chunked, long_question, params)
        _wait_for(lambda: joining.first_token_at is not None)
        during = running.completion_tokens - before
        assert joining.wait() == expected
        running.cancel()
    finally:
        whole.close()
        chunked.close()
    assert during >= 10, f"the running answer gained {during} tokens while a 13-chunk prompt joined"


def test_a_long_prompt_shows_how_far_it_is_read_and_stop_ends_it_while_reading(tiny) -> None:
    """A prompt read alone in chunks counts its tokens read (what a page shows as progress), and
    Stop during the reading ends it before the rest is read."""
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(tiny)
    backend.scheduler.prefill_chunk = 8
    seen: list[int] = []
    asked: list[Any] = []  # the request being read (the scheduler may read before ``ask`` returns)
    question = " ".join(f"word{i}" for i in range(60))
    chunk = backend.scheduler._prefill_chunk

    def watched() -> None:
        chunk()
        if asked:
            seen.append(asked[-1].prefilled)

    backend.scheduler._prefill_chunk = watched  # type: ignore[method-assign]
    try:
        asked.append(gen := ask(backend, question, SamplingParams(temperature=0.0, max_new_tokens=4)))
        gen.wait()
        total = gen.prompt_tokens
        assert seen[-1] == total > 100
        assert seen == sorted(seen) and len(set(seen)) >= 10 and seen[0] < total // 4

        seen.clear()
        slow = backend.scheduler._prefill_chunk

        def slowed() -> None:
            slow()
            time.sleep(0.05)

        backend.scheduler._prefill_chunk = slowed  # type: ignore[method-assign]
        other = " ".join(f"term{i}" for i in range(60))  # not the cached prefix of the same prompt
        asked.clear()
        asked.append(gen := ask(backend, other, SamplingParams(temperature=0.0, max_new_tokens=4)))
        _wait_for(lambda: len(seen) >= 2)
        gen.cancel()
        gen.wait()
        assert gen.finish_reason == "cancelled" and gen.completion_tokens == 0
        assert gen.prefilled < gen.prompt_tokens
    finally:
        backend.close()


def test_a_shared_system_prompt_is_prefilled_once_and_answers_do_not_change(bundled) -> None:
    """The second chat with the same system prompt reuses its cached KV; what it answers is what a
    server that never saw the first chat answers (the real model: a tiny random one barely reads
    positions, so it would not notice a prefix at the wrong place)."""
    from chatlm.engine.local import LocalBackend

    system = {"role": "system", "content": "You answer briefly and politely, in plain words, for a "
                                           "reader who is new to the subject."}
    first = [system, {"role": "user", "content": "What is rain?"}]
    second = [system, {"role": "user", "content": "Why do birds sing in the morning?"}]
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    fresh, warm = LocalBackend(bundled), LocalBackend(bundled)
    try:
        expected = fresh.chat(second, params).wait()
        assert fresh.scheduler.prefixes.tokens_reused == 0
        warm.chat(first, params).wait()
        assert warm.chat(second, params).wait() == expected
        shared = len(warm.encode([system]))
        assert warm.scheduler.prefixes.tokens_reused >= shared - 2  # the system turn, not re-read
        together = [warm.chat(m, params) for m in (first, second)]
        assert together[1].wait() == expected
    finally:
        fresh.close()
        warm.close()


def test_a_conversation_turn_extends_the_cached_history_and_answers_do_not_change(bundled) -> None:
    """Every turn repeats the history: the prefix a turn makes extends the longest one cached (the
    history up to the turn before), so a turn reads what the last two turns added, not the whole
    history again; every answer is that of a server without a prefix cache (the real model)."""
    from chatlm.engine.local import LocalBackend

    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    questions = ["What is rain?", "Where does it come from?", "Why is it wet?", "Does it rain on Mars?"]
    fresh, warm = LocalBackend(bundled, prefix_cache=False), LocalBackend(bundled)
    history = [{"role": "system", "content": "You answer briefly."}]
    lengths = []
    try:
        for question in questions:
            messages = [*history, {"role": "user", "content": question}]
            expected = fresh.chat(messages, params).wait()
            assert warm.chat(messages, params).wait() == expected
            lengths.append(len(warm.encode(messages)))
            history = [*messages, {"role": "assistant", "content": expected}]
    finally:
        fresh.close()
        warm.close()
    assert fresh.scheduler.prefixes.tokens_reused == fresh.scheduler.prefixes.tokens_made == 0
    reused, made = warm.scheduler.prefixes.tokens_reused, warm.scheduler.prefixes.tokens_made
    assert reused >= sum(lengths[:3]) - 6  # turns 2-4 each reuse the previous turn's whole prompt
    assert made <= lengths[2] + 2  # made once, extended turn by turn: not turn 1, 1-2 and 1-3 again


def test_an_event_loop_reads_deltas_as_they_come_and_joins_what_arrived_while_it_was_busy() -> None:
    """``Generation.deltas`` (how /v1 streams): woken by the scheduler's thread with no thread per
    token, every piece of text arrives once and in order, a lagging reader gets the backlog as one
    delta, and a failure ends the stream with an error after the partial text."""
    import asyncio
    import threading

    from chatlm.engine.generation import Generation
    from chatlm.errors import ChatLMError

    gen = Generation(id=1, prompt_tokens=1, params=SamplingParams())

    async def read() -> list[str]:
        got = []
        async for delta in gen.deltas():
            got.append(delta)
            if len(got) == 1:  # the reader is busy while three more arrive
                for piece in ("b", "c", "d"):
                    gen._emit(piece)
                threading.Timer(0.05, gen._finish, args=("stop",)).start()  # from another thread, later
        return got

    gen._emit("a")
    assert asyncio.run(read()) == ["a", "bcd"]

    failing = Generation(id=2, prompt_tokens=1, params=SamplingParams())

    def scheduler() -> None:
        for piece in ("x", "y"):
            time.sleep(0.02)
            failing._emit(piece)
        failing._finish("error", "Generation failed: boom")

    async def read_failing() -> list[str]:
        got = []
        with pytest.raises(ChatLMError, match="boom"):
            async for delta in failing.deltas():
                got.append(delta)
        return got

    threading.Thread(target=scheduler).start()
    assert "".join(asyncio.run(read_failing())) == "xy"
    failing._emit("late")  # nobody reads any more: the closed loop is not woken, nothing raises


def test_the_growing_cache_gives_the_logits_transformers_own_cache_gives(tiny) -> None:
    """The scheduler's KV cache writes each token into room it keeps (no copy of the whole cache a
    token): step by step, for two rows, its logits are those of transformers' ``DynamicCache``,
    also after rows are dropped and the padding trimmed as the scheduler does it."""
    import torch
    from transformers import DynamicCache

    from chatlm.engine.batch import growing_layer, new_cache

    model = tiny.model
    ids = torch.randint(5, model.config.vocab_size, (2, 90))
    mine, theirs = new_cache(model.config), DynamicCache(config=model.config)
    assert all(isinstance(layer, growing_layer()) for layer in mine.layers)
    with torch.inference_mode():
        for cache in (mine, theirs):
            model(input_ids=ids[:, :10], past_key_values=cache, use_cache=True)
        for t in range(10, 90):  # past the first buffer's room (its prompt plus 64)
            if t == 50:  # drop row 0 and the oldest 3 columns, as ``Scheduler._remove`` does
                for cache in (mine, theirs):
                    for layer in cache.layers:
                        layer.keys = layer.keys.index_select(0, torch.tensor([1]))[:, :, 3:, :]
                        layer.values = layer.values.index_select(0, torch.tensor([1]))[:, :, 3:, :]
                ids = ids[1:]
            step = ids[:, t:t + 1]
            a = model(input_ids=step, past_key_values=mine, use_cache=True).logits
            b = model(input_ids=step, past_key_values=theirs, use_cache=True).logits
            assert torch.equal(a, b), t
    assert mine.get_seq_length() == theirs.get_seq_length() == 87
