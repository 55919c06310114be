"""Serving benchmark: the real server over ``/v1`` with 1 and N streaming chats, against plain
``model.generate`` (and llama.cpp when installed) on the bundled SmolLM2-135M-Instruct.

Run from the repository root: ``.venv/bin/python bench/serve.py > /tmp/bench_serve.json``
(about 3-4 minutes on two idle CPU cores; ``--quick`` is a ~1 minute smoke run). Prints one JSON
object on stdout; progress goes to stderr.

Order: load the model here and time plain ``model.generate`` once; start ``python -m chatlm
serve`` in a subprocess, warm it up, time 1 stream then N simultaneous streams with the official
``openai`` client, stop it; then, with nothing else of ours running, time ``model.generate``
again (the faster of the two runs is the baseline: the stricter target), llama.cpp when
installed, decode forwards at batch 1/2/N, and the scheduler in-process (no HTTP) with its
decode step split into model forward vs the rest. Last, with ``make bench-peer`` built, the peers
on the same GGUF and threads: llama-cpp-python's single stream, and llama.cpp's own server
(``llama-server``) with N parallel slots asked 1 then N streams as ours is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatlm.engine import loader  # noqa: E402
from chatlm.torch_threads import machine_threads, one_thread_here, use_all_cores  # noqa: E402

PYTEST_MODELS = ROOT / ".pytest_cache" / "chatlm-data" / "models"
TOPICS = (
    "a dragon who is afraid of fire",
    "a lighthouse keeper on a lonely island",
    "a robot learning to paint",
    "two friends crossing a desert",
    "a city built under the sea",
    "a detective who can talk to cats",
    "a farmer who finds a door in a field",
    "a violinist travelling through time",
    "a ship lost in the arctic ice",
    "a child who builds a rocket",
    "a forest where the trees walk at night",
    "a baker in a mountain village",
    "an astronaut stranded on Mars",
    "a thief who steals only books",
    "a king who lost his memory",
    "a whale that sings to sailors",
)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def prompt_for(i: int) -> list[dict[str, str]]:
    """A distinct chat asking for a long answer."""
    topic = TOPICS[i % len(TOPICS)]
    return [{"role": "user", "content": f"Write a long story about {topic}. Make it detailed, "
                                        "with many events and at least ten paragraphs."}]


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty list."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_data_dir(tmp: Path) -> Path:
    """A temp data dir whose ``models/`` links the tests' safetensors cache (skips the ~25 s
    GGUF dequantisation); without that cache, the repo's ``data/`` (cached after one run)."""
    if PYTEST_MODELS.is_dir() and any(PYTEST_MODELS.iterdir()):
        data = tmp / "data"
        (data / "models").mkdir(parents=True)
        for entry in PYTEST_MODELS.iterdir():
            (data / "models" / entry.name).symlink_to(entry.resolve())
        return data
    return ROOT / "data"


# ---- memory --------------------------------------------------------------------------------
class RssPoller(threading.Thread):
    """Polls a process's resident memory (itself plus children) and keeps the peak, in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._stop_event = threading.Event()

    def sample(self) -> int:
        try:
            rss = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        except psutil.Error:
            return 0
        return rss

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.last = self.sample()
            self.peak = max(self.peak, self.last)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's own peak RSS (``VmHWM``) of a live process, Linux only."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ---- the server ----------------------------------------------------------------------------
class Server:
    """``python -m chatlm serve`` in a subprocess on a free port."""

    def __init__(self, data_dir: Path, log_path: Path, quantize: str = "auto", device: str = "cpu") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLM_")}
        env.update(CHATLM_PORT=str(self.port), CHATLM_HOST="127.0.0.1", CHATLM_DEVICE=device,
                   CHATLM_DATA_DIR=str(data_dir), CHATLM_QUANTIZE=quantize, PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "chatlm", "serve"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.poller = RssPoller(self.proc.pid)
        self.poller.start()

    def wait_ready(self, timeout: float = 300) -> str:
        """Block until ``/v1/models`` answers; return the model id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                r = httpx.get(f"{self.url}/v1/models", timeout=2)
                if r.status_code == 200:
                    return str(r.json()["data"][0]["id"])
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> dict[str, float | None]:
        """Stop the server; return its idle/peak resident memory in MB."""
        hwm = vm_hwm_bytes(self.proc.pid)
        self.poller.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        peak = max(self.poller.peak, hwm or 0)
        return {"peak_rss_mb": round(peak / 2**20, 1),
                "peak_rss_polled_mb": round(self.poller.peak / 2**20, 1),
                "vm_hwm_mb": None if hwm is None else round(hwm / 2**20, 1)}


@dataclass
class StreamResult:
    sent: float
    first_token: float | None
    end: float
    completion_tokens: int
    finish_reason: str | None


def one_stream(url: str, model: str, i: int, max_tokens: int,
               barrier: threading.Barrier | None) -> StreamResult:
    """One streaming chat with the official client; times are ``time.perf_counter()``."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    if barrier is not None:
        barrier.wait()
    sent = time.perf_counter()
    first: float | None = None
    tokens, finish = 0, None
    stream = client.chat.completions.create(
        model=model, messages=prompt_for(i), stream=True, max_tokens=max_tokens, temperature=0,
        stream_options={"include_usage": True},
    )
    pieces, usage = 0, None
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                pieces += 1  # a server that reports no usage streams one token a chunk
                first = first or time.perf_counter()
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    tokens = usage if usage is not None else pieces
    end = time.perf_counter()
    client.close()
    return StreamResult(sent, first, end, tokens, finish)


def run_streams(url: str, model: str, n: int, max_tokens: int, offset: int = 0) -> dict[str, Any]:
    """N simultaneous streaming chats; aggregate and per-stream figures."""
    results: list[StreamResult | BaseException | None] = [None] * n
    barrier = threading.Barrier(n)

    def worker(k: int) -> None:
        try:
            results[k] = one_stream(url, model, offset + k, max_tokens, barrier)
        except BaseException as exc:  # reported below
            results[k] = exc
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if not isinstance(r, StreamResult)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]!r}")
    done = [r for r in results if isinstance(r, StreamResult)]
    start, stop = min(r.sent for r in done), max(r.end for r in done)
    total = sum(r.completion_tokens for r in done)
    ttft = [(r.first_token or r.end) - r.sent for r in done]
    per_stream = [r.completion_tokens / (r.end - r.first_token) for r in done
                  if r.first_token is not None and r.end > r.first_token]
    return {
        "streams": n,
        "completion_tokens": total,
        "completion_tokens_per_stream": [r.completion_tokens for r in done],
        "finish_reasons": sorted({str(r.finish_reason) for r in done}),
        "wall_s": round(stop - start, 3),
        "agg_tokens_per_s": round(total / (stop - start), 2),
        "ttft_p50_s": round(quantile(ttft, 0.5), 3),
        "ttft_p95_s": round(quantile(ttft, 0.95), 3),
        "per_stream_tokens_per_s": round(sum(per_stream) / max(len(per_stream), 1), 2),
    }


def bench_server(data_dir: Path, tmp: Path, streams: int, max_tokens: int,
                 quantize: str, device: str = "cpu") -> dict[str, Any]:
    log(f"starting `CHATLM_QUANTIZE={quantize} python -m chatlm serve` ...")
    t0 = time.perf_counter()
    server = Server(data_dir, tmp / f"server-{quantize}.log", quantize, device)
    try:
        model = server.wait_ready()
        startup = time.perf_counter() - t0
        log(f"server ready in {startup:.1f} s (model {model}); warming up")
        run_streams(server.url, model, 1, 8, offset=len(TOPICS) - 1)
        run_streams(server.url, model, streams, 4, offset=len(TOPICS) - 1)
        idle = server.poller.sample()
        log(f"1 stream, max_tokens={max_tokens} ...")
        single = run_streams(server.url, model, 1, max_tokens)
        log(f"  {single['agg_tokens_per_s']} tok/s, ttft {single['ttft_p50_s']} s")
        log(f"{streams} streams, max_tokens={max_tokens} ...")
        multi = run_streams(server.url, model, streams, max_tokens)
        log(f"  {multi['agg_tokens_per_s']} tok/s aggregate, ttft p95 {multi['ttft_p95_s']} s")
    except BaseException:
        log(f"server log tail:\n{server.tail()}")
        raise
    finally:
        memory = server.stop()
    log(f"server stopped; peak RSS {memory['peak_rss_mb']} MB")
    return {"startup_s": round(startup, 1), "single": single, "multi": multi,
            "idle_rss_mb": round(idle / 2**20, 1), **memory}


# ---- in-process baselines ------------------------------------------------------------------
def chat_ids(tokenizer: Any, i: int) -> list[int]:
    return list(tokenizer.apply_chat_template(prompt_for(i), add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def bench_naive(loaded: loader.LoadedModel, max_tokens: int) -> dict[str, Any]:
    """Plain sequential ``model.generate``, greedy, on the single-stream prompt."""
    model, tok = loaded.model, loaded.tokenizer
    ids = torch.tensor([chat_ids(tok, 0)], device=model.device)
    mask = torch.ones_like(ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs = {"attention_mask": mask, "do_sample": False, "pad_token_id": pad}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, **kwargs)  # warm-up
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_tokens, **kwargs)
        wall = time.perf_counter() - start
    new = int(out.shape[1] - ids.shape[1])
    return {"completion_tokens": new, "wall_s": round(wall, 3),
            "tokens_per_s": round(new / wall, 2)}


PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
PEER_SCRIPT = r"""
import json, sys, time, llama_cpp
path, threads, max_tokens, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
llm.create_chat_completion(messages=messages, max_tokens=8, temperature=0)
start = time.perf_counter()
out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0)
wall = time.perf_counter() - start
new = int(out["usage"]["completion_tokens"])
print(json.dumps({"available": True, "version": llama_cpp.__version__, "threads": threads,
                  "completion_tokens": new, "wall_s": round(wall, 3), "tokens_per_s": round(new / wall, 2)}))
"""


def bench_llama_cpp(max_tokens: int) -> dict[str, Any]:
    """One greedy stream through llama-cpp-python (built by ``make bench-peer`` in .venv-peer) on
    the same GGUF the app dequantises, with as many threads as torch uses here."""
    if not PEER_PYTHON.is_file():
        return {"available": False, "why": "run `make bench-peer` to build llama-cpp-python"}
    out = subprocess.run([str(PEER_PYTHON), "-c", PEER_SCRIPT, str(loader.bundled_gguf()),
                          str(machine_threads()), str(max_tokens), json.dumps(prompt_for(0))],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"available": False, "why": out.stderr[-2000:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def perplexity(model: Any, ids: torch.Tensor, window: int = 512) -> float:
    """Perplexity over ``ids`` in non-overlapping windows."""
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1]
            if len(chunk) < 2:
                break
            logp = torch.log_softmax(model(input_ids=chunk[None, :-1]).logits[0].float(), -1)
            nll -= float(logp.gather(1, chunk[1:, None]).sum())
            count += len(chunk) - 1
    return float(torch.exp(torch.tensor(nll / count)))


def greedy_tokens(loaded: loader.LoadedModel, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Greedy answers' token ids through the app's scheduler (batched, as served)."""
    from chatlm.engine.local import LocalBackend
    from chatlm.engine.params import SamplingParams

    backend = LocalBackend(loaded, queue_size=len(prompts))
    try:
        params = SamplingParams(temperature=0, max_new_tokens=max_tokens)
        gens = [backend.chat([{"role": "user", "content": q}], params) for q in prompts]
        return [loaded.tokenizer.encode(g.wait(), add_special_tokens=False) for g in gens]
    finally:
        backend.close()


def first_start_int8(loaded: loader.LoadedModel, data_dir: Path) -> tuple[loader.LoadedModel, float]:
    """What a first ``CHATLM_QUANTIZE=int8`` start does once per model (calibrate, quantise, keep
    the int8 tensors in ``data_dir/models``), so the servers below start the way every later start
    does; returns the int8 model and the seconds it took."""
    import copy

    from chatlm.engine import quantize

    start = time.perf_counter()
    int8 = copy.deepcopy(loaded.model)
    quantize.apply(int8, "int8", loaded.tokenizer, cache_dir=data_dir / "models",
                   key=f"{loaded.model_id}:{loaded.path}")  # the key LocalBackend.from_settings uses
    return (loader.LoadedModel(model=int8, tokenizer=loaded.tokenizer, model_id=loaded.model_id,
                               path=loaded.path, device="cpu"), time.perf_counter() - start)


def bench_quality(loaded: loader.LoadedModel, q: loader.LoadedModel, squad: Path, prompts: int = 50,
                  max_tokens: int = 32) -> dict[str, Any]:
    """int8 (``q``) against fp32: perplexity on each shared SQuAD article's text (the calibration
    text is our own, so neither article was seen by it) and greedy agreement on ``prompts``
    questions."""
    data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    int8 = q.model
    out: dict[str, Any] = {"perplexity": {}}
    for article in data:
        text = "\n\n".join(p["context"] for p in article["paragraphs"])
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"][0]
        full, small = perplexity(loaded.model, ids), perplexity(int8, ids)
        out["perplexity"][article["title"]] = {"tokens": len(ids), "fp32": round(full, 3),
                                               "int8": round(small, 3),
                                               "change_pct": round(100 * (small / full - 1), 2)}
        log(f"  perplexity {article['title']}: fp32 {full:.3f}, int8 {small:.3f}")
    questions = [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]][:prompts]
    a, b = greedy_tokens(loaded, questions, max_tokens), greedy_tokens(q, questions, max_tokens)
    prefix = [next((i for i, (x, y) in enumerate(zip(s, t, strict=False)) if x != y), min(len(s), len(t)))
              for s, t in zip(a, b, strict=True)]
    out["greedy"] = {"prompts": len(questions), "max_tokens": max_tokens,
                     "identical_answers": sum(s == t for s, t in zip(a, b, strict=True)),
                     "first_token_agrees": sum(s[:1] == t[:1] for s, t in zip(a, b, strict=True)),
                     "tokens_agreeing_before_first_difference": round(sum(prefix) / max(sum(map(len, a)), 1), 3)}
    log(f"  greedy agreement: {out['greedy']}")
    return out


def on_all_cores(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own with all of torch's threads, as the server's scheduler
    runs. OpenMP keeps a team of workers for each thread that ran a parallel kernel until that
    thread exits, and two teams on two cores make every kernel wait for its workers to wake
    (``chatlm.torch_threads``): the main thread stays on one core, and each timing's thread exits
    with its team, so the in-process figures are the server's (they read 60 ms a step, not 39,
    while the main thread kept a team)."""
    result: dict[str, Any] = {}

    def run() -> None:
        use_all_cores()
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="bench-timing")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def time_forward(model: Any, batch: int, cache_len: int, steps: int = 12) -> float:
    """Median ms of one decode forward (batch rows, one new token each, ``cache_len`` cached),
    called exactly like the scheduler calls it."""
    from transformers import DynamicCache

    ids = torch.randint(100, 1000, (batch, cache_len), device=model.device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=mask.cumsum(-1) - 1,
                    cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
        cache, times = out.cache, []
        for _ in range(steps):
            positions = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones((batch, 1))], 1)
            t = time.perf_counter()
            out = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions,
                        cache=cache, use_cache=True, logits_to_keep=1)
            times.append(time.perf_counter() - t)
            cache = out.cache
    return round(quantile(times[2:], 0.5) * 1000, 2)


class StepTimer:
    """Wraps a scheduler's ``_decode_step``, ``_forward`` and ``_prefill_chunk``: per decode step
    its seconds and the model forward's inside it, and each prefill chunk (rows, prompt columns,
    seconds). Only calls that start after ``start()`` are recorded."""

    def __init__(self, sched: Any) -> None:
        self.steps: list[tuple[float, float]] = []
        self.prefills: list[tuple[int, int, float]] = []
        self.recording = False
        self._forward_s: float | None = None
        step, forward, chunk = sched._decode_step, sched._forward, sched._prefill_chunk

        def timed_chunk() -> None:
            record, t = self.recording, time.perf_counter()
            fill = sched._fill
            rows, before = len(fill.admit), fill.done
            chunk()
            if record:
                self.prefills.append((rows, fill.done - before, time.perf_counter() - t))

        def timed_step() -> None:
            record, t = self.recording, time.perf_counter()
            self._forward_s = 0.0
            step()
            if record:
                self.steps.append((time.perf_counter() - t, self._forward_s))
            self._forward_s = None

        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = forward(*args, **kwargs)
            if self._forward_s is not None:  # inside a decode step, not a prefill
                self._forward_s += time.perf_counter() - t
            return out

        sched._decode_step, sched._forward = timed_step, timed_forward
        sched._prefill_chunk = timed_chunk

    def start(self) -> None:
        self.recording = True


def bench_scheduler(loaded: loader.LoadedModel, n: int, max_tokens: int) -> dict[str, Any]:
    """The scheduler in this process (no HTTP): tokens/s and how a decode step splits between
    the model forward and everything else (mask/cache bookkeeping, sampling, detokenising)."""
    from chatlm.engine.local import LocalBackend
    from chatlm.engine.params import SamplingParams

    backend = LocalBackend(loaded)
    timer = StepTimer(backend.scheduler)
    params = SamplingParams(temperature=0, max_new_tokens=max_tokens)
    try:
        warm = SamplingParams(temperature=0, max_new_tokens=4)
        backend.chat(prompt_for(len(TOPICS) - 1), warm).wait()
        timer.start()
        start = time.perf_counter()
        gens = [backend.chat(prompt_for(i), params) for i in range(n)]
        for g in gens:
            g.wait()
        wall = time.perf_counter() - start
    finally:
        backend.close()
    step_ms = 1000 * sum(s for s, _ in timer.steps) / max(len(timer.steps), 1)
    fwd_ms = 1000 * sum(f for _, f in timer.steps) / max(len(timer.steps), 1)
    total = sum(g.completion_tokens for g in gens)
    ttft = [(g.first_token_at or g.finished_at or 0) - g.submitted_at for g in gens]
    return {"streams": n, "max_tokens": max_tokens, "completion_tokens": total,
            "tokens_per_s": round(total / wall, 2),
            "ttft_p50_s": round(quantile(ttft, 0.5), 3),
            "ttft_p95_s": round(quantile(ttft, 0.95), 3),
            "prefill_chunks": [{"rows": r, "columns": t, "ms": round(1000 * sec, 1)}
                         for r, t, sec in timer.prefills],
            "decode_steps": len(timer.steps), "step_ms": round(step_ms, 2),
            "forward_ms": round(fwd_ms, 2),
            "forward_fraction": round(fwd_ms / step_ms, 3) if step_ms else None}


def bench_profile(loaded: loader.LoadedModel, streams: int, max_tokens: int) -> dict[str, Any]:
    """Decode forward at batch 1/2/N, and the in-process scheduler's step breakdown."""
    cache_len = len(chat_ids(loaded.tokenizer, 0)) + max_tokens // 2
    log(f"decode forward timing at cache length {cache_len} ...")
    fwd = {f"batch_{b}_ms": on_all_cores(time_forward, loaded.model, b, cache_len) for b in (1, 2, streams)}
    log(f"  {fwd}")
    tokens = min(max_tokens, 64)
    log(f"scheduler in-process (no HTTP), 1 and N requests of {tokens} tokens ...")
    profile = {
        "cache_len": cache_len,
        "forward": fwd,
        "scheduler_1": bench_scheduler(loaded, 1, tokens),
        f"scheduler_{streams}": bench_scheduler(loaded, streams, tokens),
    }
    log(f"  {profile['scheduler_1']}\n  {profile[f'scheduler_{streams}']}")
    return profile


LLAMA_SERVER = Path(os.environ.get("LLAMA_SERVER", ROOT / ".venv-peer" / "bin" / "llama-server"))


def bench_llama_server(streams: int, max_tokens: int, tmp: Path) -> dict[str, Any]:
    """llama.cpp's own server (``llama-server``, built by ``make bench-peer`` from the sources
    llama-cpp-python vendors) with ``streams`` parallel slots and continuous batching on the same
    GGUF, as many threads as torch uses here: the peer for many users, asked as ours is (the
    official client, the same prompts and token budget)."""
    import urllib.request

    if not LLAMA_SERVER.is_file():
        return {"available": False, "why": "run `make bench-peer` to build llama-server"}
    port, threads = free_port(), machine_threads()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(LLAMA_SERVER), "-m", str(loader.bundled_gguf()), "-t", str(threads), "-tb", str(threads),
           "-np", str(streams), "-c", str(2048 * streams), "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp / "llama-server.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    poller = RssPoller(proc.pid)
    poller.start()
    try:
        deadline = time.perf_counter() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() > deadline:
                return {"available": False, "why": log_path.read_text(errors="replace")[-2000:]}
            time.sleep(0.2)
        model = "smollm2"
        run_streams(url, model, 1, 8, offset=len(TOPICS) - 1)  # warm up, as ours is
        run_streams(url, model, streams, 4, offset=len(TOPICS) - 1)
        log(f"llama-server, {streams} slots: 1 stream ...")
        single = run_streams(url, model, 1, max_tokens)
        log(f"  {single['agg_tokens_per_s']} tok/s; {streams} streams ...")
        multi = run_streams(url, model, streams, max_tokens)
        log(f"  {multi['agg_tokens_per_s']} tok/s aggregate, ttft p95 {multi['ttft_p95_s']} s")
    finally:
        poller.stop()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
    return {"available": True, "slots": streams, "threads": threads, "single": single, "multi": multi,
            "peak_rss_mb": round(poller.peak / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serving benchmark: /v1 with 1 and N streams vs model.generate (one JSON).")
    parser.add_argument("--max-tokens", type=int, default=None, help="default 256 (64 w/ --quick)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="64 tokens: a fast smoke run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: the same benchmark on a GPU in bf16 (int8 is CPU-only: --quantize none)")
    parser.add_argument("--quantize", default=None,
                        help="CHATLM_QUANTIZE values to serve, one server run each, the first reported "
                             "(default int8,none on the CPU, none on CUDA)")
    parser.add_argument("--peer", choices=["none", "llamacpp"], default="llamacpp",
                        help="llamacpp: time llama-cpp-python from .venv-peer (`make bench-peer`) when built")
    parser.add_argument("--squad", type=Path, default=ROOT.parent / "shared" / "data" / "squad2-dev-sample.json",
                        help="text for the int8 perplexity and questions for greedy agreement")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the in-process scheduler/forward breakdown")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (64 if args.quick else 256)
    modes = [m.strip() for m in (args.quantize or ("int8,none" if args.device == "cpu" else "none")).split(",")
             if m.strip()]
    began = time.perf_counter()
    one_thread_here()  # timings run on all cores in threads of their own (on_all_cores)
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        data_dir = prepare_data_dir(tmp)
        log("loading the model in this process ...")
        loaded = loader.load("bundled", data_dir, args.device)
        # naive generate brackets the server runs (before they start and after they stop; never
        # at the same time) so a change in the machine's background load shows up
        log("naive model.generate (before the server) ...")
        naive_before = on_all_cores(bench_naive, loaded, max_tokens)
        log(f"  {naive_before['tokens_per_s']} tok/s")
        int8, int8_first_start_s = None, None
        if "int8" in modes:
            int8, int8_first_start_s = on_all_cores(first_start_int8, loaded, data_dir)
            log(f"int8 copy made (first start only) in {int8_first_start_s:.1f} s")
        servers = {mode: bench_server(data_dir, tmp, args.streams, max_tokens, mode, args.device)
                   for mode in modes}
    log("naive model.generate (after the server) ...")
    naive_after = on_all_cores(bench_naive, loaded, max_tokens)
    log(f"  {naive_after['tokens_per_s']} tok/s")
    naive = {"tokens_per_s": max(naive_before["tokens_per_s"], naive_after["tokens_per_s"]),
             "before_server": naive_before, "after_server": naive_after}
    quality = None
    if int8 is not None and args.squad.is_file():
        log("int8 quality against fp32 ...")
        quality = on_all_cores(bench_quality, loaded, int8, args.squad)
    served = int8 if int8 is not None and modes[0] == "int8" else loaded
    profile = None if args.no_profile else bench_profile(served, args.streams, max_tokens)
    del loaded, served, int8
    log("llama.cpp ...")
    llama = bench_llama_cpp(max_tokens) if args.peer == "llamacpp" else {"available": False}
    log(f"  {llama}")
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-peer-") as peer_tmp:
        llama_server = (bench_llama_server(args.streams, max_tokens, Path(peer_tmp)) if args.peer == "llamacpp"
                        else {"available": False})

    server = servers[modes[0]]
    single, multi = server["single"], server["multi"]
    agg1, aggn = single["agg_tokens_per_s"], multi["agg_tokens_per_s"]
    n = args.streams
    peer = llama["tokens_per_s"] if llama.get("available") else None
    peer_n = llama_server["multi"]["agg_tokens_per_s"] if llama_server.get("available") else None
    targets = {
        f"agg{n}_ge_4x_single": aggn >= 4 * agg1,
        f"agg{n}_ge_1.5x_llama_cpp_single": aggn >= 1.5 * peer if peer else None,
        f"agg{n}_ge_1x_llama_server_{n}_slots": aggn >= peer_n if peer_n else None,
        "single_ge_0.8x_llama_cpp_single": agg1 >= 0.8 * peer if peer else None,
        f"ttft_p95_{n}_le_2x_ttft_1": multi["ttft_p95_s"] <= 2 * single["ttft_p50_s"],
        "single_ge_2x_naive_generate": agg1 >= 2 * naive["tokens_per_s"],
        "peak_rss_le_1500mb": server["peak_rss_mb"] <= 1500,
        "int8_perplexity_within_2pct": (all(abs(v["change_pct"]) <= 2 for v in quality["perplexity"].values())
                                        if quality else None),
    }
    ratios = {
        f"agg{n}_over_single": round(aggn / agg1, 2),
        f"agg{n}_over_llama_cpp_single": round(aggn / peer, 2) if peer else None,
        "single_over_llama_cpp_single": round(agg1 / peer, 2) if peer else None,
        f"agg{n}_over_llama_server_{n}_slots": round(aggn / peer_n, 2) if peer_n else None,
        f"ttft_p95_{n}_over_ttft_1": round(multi["ttft_p95_s"] / single["ttft_p50_s"], 2),
        "single_over_naive_generate": round(agg1 / naive["tokens_per_s"], 2),
    }
    for mode in modes[1:]:  # the A/B of the served weights, in the same run
        other = servers[mode]
        ratios[f"single_{modes[0]}_over_{mode}"] = round(agg1 / other["single"]["agg_tokens_per_s"], 2)
        ratios[f"agg{n}_{modes[0]}_over_{mode}"] = round(aggn / other["multi"]["agg_tokens_per_s"], 2)
    result = {
        "config": {"max_tokens": max_tokens, "streams": n, "quick": args.quick, "quantize": modes,
                   "device": args.device},
        "server": server,
        "servers": servers,
        "naive_generate": naive,
        "llama_cpp": llama,
        "llama_server": llama_server,
        "int8_quality": quality,
        "int8_first_start_s": None if int8_first_start_s is None else round(int8_first_start_s, 1),
        "decode_profile": profile,
        "ratios": ratios,
        "targets": targets,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": machine_threads(),
                    "torch_version": torch.__version__,
                    "load_avg_at_start": load_start,
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "total_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
