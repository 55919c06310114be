"""Does a serving precision change what users see? Greedy answers of the app's served path (the
scheduler, batched, with its prefix cache) under each ``CHATLM_QUANTIZE`` mode, against the full
precision reference: plain ``model.generate`` one prompt at a time.

Run from the repository root: ``.venv/bin/python bench/answers.py > bench/answers.json``
(about 10 minutes on two idle CPU cores). Counts identical answers on 50 chat prompts and on the
first 50 questions of the shared SQuAD development sample (asked as chat, no text), the Paris case
with and without a system prompt, and single-stream decoding speed of each mode in this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatlm.engine import loader  # noqa: E402
from chatlm.engine.local import LocalBackend  # noqa: E402
from chatlm.engine.params import SamplingParams  # noqa: E402

CHAT = (
    "What is the capital of France?", "Explain a rainbow.", "Write a haiku about autumn.",
    "How do I boil an egg?", "What is photosynthesis?", "Give me three tips for sleeping better.",
    "Write a Python function that reverses a string.", "What is the difference between weather and climate?",
    "Translate 'good morning' into Spanish.", "Why is the sky blue?", "Summarise the plot of Cinderella.",
    "What is 12 times 7?", "Name three planets in our solar system.", "How does a bicycle stay upright?",
    "Suggest a name for a black cat.", "What causes earthquakes?", "Write a short thank-you note to a teacher.",
    "What is a prime number?", "How do vaccines work?", "Describe the taste of a lemon.",
    "What should I pack for a day at the beach?", "Who wrote Romeo and Juliet?", "What is gravity?",
    "How can I save money on groceries?", "Tell me a joke about computers.", "What is the boiling point of water?",
    "Explain what a noun is.", "Give me a recipe idea with rice and beans.", "Why do leaves change colour?",
    "What is the largest ocean?", "How do I write a good email subject line?", "What does a heart do?",
    "Write two lines of a poem about the sea.", "What is machine learning?", "How many days are in a leap year?",
    "What is the tallest mountain in the world?", "How do I make my plants grow faster?",
    "What is the meaning of 'ephemeral'?", "Explain how rain forms.", "What are the primary colours?",
    "Give me a fun fact about octopuses.", "How do I start learning to draw?", "What is an atom?",
    "Why do we have seasons?", "What is the speed of light?", "Write a one-sentence story about a dragon.",
    "What is democracy?", "How do magnets work?", "Recommend a hobby for a rainy day.",
    "What is the capital of Japan?",
)
PARIS = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shared_questions(path: Path, n: int) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]][:n]


def reference(loaded: loader.LoadedModel, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[str]:
    """Full precision, one prompt at a time, ``model.generate`` greedy: the answers users should see."""
    model, tok = loaded.model, loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    with torch.inference_mode():
        for messages in tqdm(conversations, desc="reference", file=sys.stderr):
            ids = torch.tensor([tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=False)])
            new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=pad)[0, ids.shape[1]:]
            out.append(tok.decode(new, skip_special_tokens=True))
    return out


def served(loaded: loader.LoadedModel, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[str]:
    """The app's served path: every prompt submitted at once to the scheduler (batched)."""
    backend = LocalBackend(loaded, queue_size=len(conversations))
    try:
        params = SamplingParams(temperature=0, max_new_tokens=max_tokens)
        gens = [backend.chat(m, params) for m in conversations]
        return [g.wait() for g in tqdm(gens, desc="served", file=sys.stderr)]
    finally:
        backend.close()


def single_stream(loaded: loader.LoadedModel, max_tokens: int) -> float:
    """Tokens a second of one answer alone through the scheduler (the local user's case)."""
    backend = LocalBackend(loaded)
    try:
        messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        params = SamplingParams(temperature=0, max_new_tokens=max_tokens)
        backend.chat(messages, SamplingParams(temperature=0, max_new_tokens=4)).wait()  # warm-up
        start = time.perf_counter()
        gen = backend.chat(messages, params)
        gen.wait()
        return gen.completion_tokens / (time.perf_counter() - start)
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Greedy answers of each serving precision vs full precision.")
    parser.add_argument("--modes", default="none,int8", help="CHATLM_QUANTIZE values to compare")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n", type=int, default=50, help="chat prompts and shared questions, each")
    parser.add_argument("--squad", type=Path, default=ROOT.parent / "shared" / "data" / "squad2-dev-sample.json")
    args = parser.parse_args()
    chats = [[{"role": "user", "content": q}] for q in CHAT[:args.n]]
    questions = [[{"role": "user", "content": q}] for q in shared_questions(args.squad, args.n)]
    paris = [[{"role": "user", "content": PARIS}], [{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": PARIS}]]
    sets = {"chat": chats, "shared_questions": questions, "paris": paris}
    result: dict[str, Any] = {"max_tokens": args.max_tokens, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="chatlm-answers-") as tmp:
        full = loader.load("bundled", Path(tmp), "cpu", quantize="none")
        want = {name: reference(full, convs, args.max_tokens) for name, convs in sets.items()}
        result["reference_paris"] = want["paris"]
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            loaded = full if mode == "none" else loader.load("bundled", Path(tmp), "cpu", quantize=mode)
            row: dict[str, Any] = {}
            for name, convs in sets.items():
                got = served(loaded, convs, args.max_tokens)
                row[name] = {"identical": sum(a == b for a, b in zip(got, want[name], strict=True)),
                             "of": len(convs)}
                if name == "paris":
                    row[name]["answers"] = got
            row["single_stream_tok_s"] = round(single_stream(loaded, 128), 2)
            result["modes"][mode] = row
            log(f"{mode}: {json.dumps(row)}")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
