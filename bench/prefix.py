"""Prefix cache benchmark (issue 15): first-token time and prefill work with the scheduler's prefix
cache on and off, in one process, on the bundled SmolLM2-135M-Instruct.

Run from the repository root: ``.venv/bin/python bench/prefix.py > bench/out/prefix.json``
(about 2 minutes on two idle cores). Prints one JSON object; progress goes to stderr.

The model is loaded once (``--quantize``, default int8 as a CPU server serves; the int8 copy is
made in a scratch data folder on the first run). Every measurement gets a fresh ``LocalBackend``
(its own scheduler, an empty prefix cache) over that model, once with ``prefix_cache=False`` and
once with ``True``; ``--repeats`` rounds alternate the order (off, on / on, off ...) so a change of
machine load between the two does not favour one. Scenarios:

- ``conversation``: one chat of ``--turns`` turns under the app's default system prompt; every
  turn's prompt repeats the whole history (as ``ChatService`` sends it). The assistant's answers
  are made once beforehand (greedy, ``--answer-tokens``, cache off) and replayed, so both settings
  read exactly the same prompts. Each turn is sent after the previous one finished.
- ``burst_cold`` / ``burst_warm``: 8 chats with the same system prompt and distinct questions,
  queued together (inside one scheduler step: the scheduler's lock is held while they are
  submitted), first on a scheduler that has seen none of them (cold), then 8 other questions on
  the same scheduler (warm: the system prompt may be cached already). Run for the app's default
  system prompt and for a longer one (``long_system``, about 150 tokens).

Figures per run: first-token time of every request (``first_token_at - submitted_at``), the
prompt tokens, the prefill work actually run (rows x columns of every prefill forward, padding and
the forwards that make a cached prefix included), the prefix cache's ``tokens_reused`` and
``tokens_made`` (net saved = reused - made), and whether the answers (``--tokens`` greedy
tokens each) are the same with the cache on as off (``answers_identical``: how many of a
scenario's answers each run with the cache on, and each further run with it off, shares with the
first run off). A warm-up request with an unrelated system prompt runs first on every scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import quantile  # noqa: E402
from train import scratch_data_dir  # noqa: E402

from chatlm.config import Settings  # noqa: E402
from chatlm.engine import loader  # noqa: E402
from chatlm.engine.local import LocalBackend  # noqa: E402
from chatlm.engine.params import SamplingParams  # noqa: E402

TURNS = (
    "I want to start growing vegetables on my balcony. Where should I begin?",
    "Which vegetables grow well in pots?",
    "How often should I water tomatoes in summer?",
    "What soil should I buy for the pots?",
    "How do I keep insects away without chemicals?",
    "When can I expect the first harvest?",
    "Can I grow herbs next to the tomatoes?",
    "What should I do with the plants in winter?",
)
QUESTIONS = (
    "What is the capital of France?", "Why is the sky blue?", "How do bees make honey?",
    "What causes the seasons?", "How does a bicycle stay upright?", "Why do cats purr?",
    "What is a black hole?", "How do vaccines work?", "Why is the sea salty?",
    "How do plants drink water?", "What makes thunder?", "How do birds navigate?",
    "Why does ice float?", "What is photosynthesis?", "How do magnets work?",
    "Why do we dream?",
)
LONG_SYSTEM = (
    "You are the assistant of a small public library. Answer the visitor's question in plain, "
    "friendly words and keep answers short: three sentences at most unless the visitor asks for "
    "more. If the question is about opening hours, say that the library opens at nine in the "
    "morning and closes at six in the evening from Monday to Friday, and at one on Saturdays. If "
    "it is about borrowing, say that a visitor may borrow up to ten books for three weeks and renew "
    "them twice online. Never invent a book's availability: say that the catalogue on the website "
    "shows it. If you do not know an answer, say so and suggest asking at the front desk. Do not "
    "give medical, legal or financial advice. Use British spelling."
)
WARM_UP = [{"role": "system", "content": "Warm-up."}, {"role": "user", "content": "Hi"}]


def log(msg: str) -> None:
    print(f"[prefix] {msg}", file=sys.stderr, flush=True)


class Probe:
    """A fresh backend over the loaded model whose prefill forwards are counted."""

    def __init__(self, loaded: loader.LoadedModel, prefix_cache: bool) -> None:
        self.backend = LocalBackend(loaded, prefix_cache=prefix_cache)
        sched = self.backend.scheduler
        self.prefill_work = 0
        decoding = [False]
        forward, decode_step = sched._forward, sched._decode_step

        def counted_forward(input_ids: Any, *a: Any, **k: Any) -> Any:
            if not decoding[0]:
                self.prefill_work += input_ids.shape[0] * input_ids.shape[1]
            return forward(input_ids, *a, **k)

        def flagged_decode_step() -> None:
            decoding[0] = True
            try:
                decode_step()
            finally:
                decoding[0] = False

        sched._forward = counted_forward  # type: ignore[method-assign]
        sched._decode_step = flagged_decode_step  # type: ignore[method-assign]
        self.backend.chat(WARM_UP, SamplingParams(temperature=0.0, max_new_tokens=2)).wait()
        self.prefill_work = 0

    def counters(self) -> tuple[int, int, int]:
        s = self.backend.scheduler
        return self.prefill_work, s.prefixes.tokens_reused, s.prefixes.tokens_made

    def close(self) -> None:
        self.backend.close()


def summary(gens: list[Any], before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, Any]:
    ttft = [g.first_token_at - g.submitted_at for g in gens]
    reused, made = after[1] - before[1], after[2] - before[2]
    return {
        "requests": len(gens),
        "prompt_tokens": sum(g.prompt_tokens for g in gens),
        "prefill_work": after[0] - before[0],
        "prefix_tokens_reused": reused,
        "prefix_tokens_made": made,
        "net_tokens_saved": reused - made,
        "ttft_s": [round(t, 4) for t in ttft],
        "ttft_sum_s": round(sum(ttft), 4),
        "ttft_p50_s": round(quantile(ttft, 0.5), 4),
        "ttft_p95_s": round(quantile(ttft, 0.95), 4),
        "ttft_max_s": round(max(ttft), 4),
    }


def conversation_prompts(loaded: loader.LoadedModel, system: str, turns: int, answer_tokens: int
                         ) -> list[list[dict[str, str]]]:
    """Each turn's messages, with the answers made once (greedy, no prefix cache) and kept."""
    backend = LocalBackend(loaded, prefix_cache=False)
    history: list[dict[str, str]] = [{"role": "system", "content": system}]
    prompts = []
    try:
        for question in TURNS[:turns]:
            messages = [*history, {"role": "user", "content": question}]
            prompts.append(messages)
            answer = backend.chat(messages, SamplingParams(temperature=0.0, max_new_tokens=answer_tokens)).wait()
            history = [*messages, {"role": "assistant", "content": answer}]
    finally:
        backend.close()
    return prompts


def run_conversation(loaded: loader.LoadedModel, cache: bool, prompts: list[Any], tokens: int
                     ) -> tuple[dict[str, Any], list[str]]:
    probe = Probe(loaded, cache)
    try:
        before = probe.counters()
        gens = []
        for messages in prompts:
            gen = probe.backend.chat(messages, SamplingParams(temperature=0.0, max_new_tokens=tokens))
            gen.wait()
            gens.append(gen)
        out = summary(gens, before, probe.counters())
        out["prompt_tokens_per_turn"] = [g.prompt_tokens for g in gens]
        return out, [g.text for g in gens]
    finally:
        probe.close()


def burst(probe: Probe, system: str, questions: tuple[str, ...], tokens: int) -> tuple[dict[str, Any], list[str]]:
    sched = probe.backend.scheduler
    before = probe.counters()
    with sched._cv:  # all 8 are queued before the scheduler's next look: they arrive in one step
        gens = [probe.backend.chat([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                   SamplingParams(temperature=0.0, max_new_tokens=tokens)) for q in questions]
    texts = [g.wait() for g in gens]
    return summary(gens, before, probe.counters()), texts


def run_bursts(loaded: loader.LoadedModel, cache: bool, system: str, n: int, tokens: int
               ) -> tuple[dict[str, Any], list[str]]:
    probe = Probe(loaded, cache)
    try:
        cold, a = burst(probe, system, QUESTIONS[:n], tokens)
        warm, b = burst(probe, system, QUESTIONS[n:2 * n], tokens)
        return {"burst_cold": cold, "burst_warm": warm}, a + b
    finally:
        probe.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quantize", default="int8", choices=("int8", "none"))
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--answer-tokens", type=int, default=48, help="length of the replayed answers")
    p.add_argument("--tokens", type=int, default=8, help="tokens generated per measured request")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    started = time.perf_counter()
    out: dict[str, Any] = {"load_avg_start": os.getloadavg(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-prefix-") as tmp:
        data_dir = scratch_data_dir(Path(tmp))
        t = time.perf_counter()
        loaded = loader.load("bundled", data_dir, "cpu", quantize=args.quantize)
        out["load_s"] = round(time.perf_counter() - t, 2)
    system = Settings().system_prompt
    log(f"model loaded ({args.quantize}) in {out['load_s']} s; making the conversation")
    prompts = conversation_prompts(loaded, system, args.turns, args.answer_tokens)
    scenarios: dict[str, dict[str, list[Any]]] = {}
    same: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        for cache in ((False, True) if r % 2 == 0 else (True, False)):
            mode = "on" if cache else "off"
            log(f"round {r + 1}, cache {mode}")
            results: list[tuple[str, dict[str, Any], list[str]]] = []
            conv, texts = run_conversation(loaded, cache, prompts, args.tokens)
            results.append(("conversation", conv, texts))
            for name, sys_prompt in (("default_system", system), ("long_system", LONG_SYSTEM)):
                figures, texts = run_bursts(loaded, cache, sys_prompt, args.streams, args.tokens)
                results.append((name, figures, texts))
            for name, figures, texts in results:
                slot = scenarios.setdefault(name, {"off": [], "on": [], "texts_off": [], "texts_on": []})
                slot[mode].append(figures)
                slot[f"texts_{mode}"].append(texts)
    for name, slot in scenarios.items():
        off, on = slot.pop("texts_off"), slot.pop("texts_on")
        same[name] = {
            "answers": len(off[0]),
            "on_same_as_off": [sum(a == b for a, b in zip(x, off[0], strict=True)) for x in on],
            "off_repeats_same": [sum(a == b for a, b in zip(x, off[0], strict=True)) for x in off[1:]],
        }
    out["scenarios"] = scenarios
    out["answers_identical"] = same
    out["ratios"] = ratios(scenarios)
    out["load_avg_end"] = os.getloadavg()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))


def ratios(scenarios: dict[str, Any]) -> dict[str, Any]:
    """Cache on ÷ off, medians over the repeats, for the first-token figures that matter."""
    def med(runs: list[dict[str, Any]], *path: str) -> float:
        vals = []
        for run in runs:
            for key in path[:-1]:
                run = run[key]
            vals.append(run[path[-1]])
        return statistics.median(vals)

    out: dict[str, Any] = {}
    conv = scenarios["conversation"]
    for key in ("ttft_sum_s", "ttft_max_s", "prefill_work", "net_tokens_saved"):
        off, on = med(conv["off"], key), med(conv["on"], key)
        out[f"conversation.{key}"] = {"off": off, "on": on, "on_over_off": round(on / off, 3) if off else None}
    for name in ("default_system", "long_system"):
        for phase in ("burst_cold", "burst_warm"):
            for key in ("ttft_p50_s", "ttft_p95_s", "prefill_work", "net_tokens_saved"):
                off, on = med(scenarios[name]["off"], phase, key), med(scenarios[name]["on"], phase, key)
                out[f"{name}.{phase}.{key}"] = {"off": off, "on": on,
                                                "on_over_off": round(on / off, 3) if off else None}
    return out


if __name__ == "__main__":
    main()
