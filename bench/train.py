"""Training benchmark: our round vs a plain ``transformers.Trainer`` + peft, and a round over N turns.

Run from the repository root: ``.venv/bin/python bench/train.py`` (defaults: 200 rated turns, an
8-step throughput comparison, the round's default epochs: one pass over this many examples). Prints one
JSON object.

The data are SQuAD questions with the gold paragraph in the prompt; every turn has one answer,
rated like a user who knows the answer: the exact span is liked, a hedged wrong span is disliked and
corrected with the gold text, so half the turns give a DPO pair (``auto`` picks DPO).

- ``sft_throughput``: the same SFT records, the same LoRA (r=16, all linear layers), batch size and
  number of steps (batch 4 as 2 x 2 with gradient accumulation) through our round's trainer (TRL
  SFTTrainer, length-grouped batches) and through a plain Trainer (random batches, padded), each in a
  fresh process, alternated ``--repeats`` times (a shared machine's load drifts). tokens/s counts
  non-padding input tokens over the training loop only; peak RSS is the process's high-water mark.
- ``round``: ``start_round(auto)`` over all turns, wall time from the call to the registered
  adapter (process start, model load, training, held-out evaluation), per-phase times, peak RSS.
  With ``--round-max-steps`` the round stops early and the full-epoch time is extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SQUAD = ROOT.parent / "shared/data/squad2-dev-sample.json"
MODEL_CACHE = ROOT / ".pytest_cache" / "chatlm-data"
SYSTEM = "Answer the question with a short phrase copied from the passage."


def seed(sessions: Any, squad: Path, turns: int, passage: str) -> dict[str, int]:
    """``turns`` rated answers: even ones right (liked), odd ones wrong (disliked, corrected)."""
    from chatlm.knowledge.squad import f1, load_squad
    from chatlm.store import db, repo

    questions = [(a, q) for a in load_squad(squad) for q in a.questions if not q.is_impossible]
    counts = {"turns": 0, "liked": 0, "disliked": 0}
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
        for i in range(turns):
            article, q = questions[i % len(questions)]
            text = article.paragraphs[q.paragraph_index]
            if passage == "sentence":
                text = next((x for x in re.split(r"(?<=[.!?])\s+", text) if q.answers[0] in x), text)
            wrong = questions[(i + 7) % len(questions)][1].answers[0]
            answer = q.answers[0] if i % 2 == 0 else f"I am not sure, but I think it was {wrong}."
            liked = f1(answer, q.answers) >= 0.5
            prompt = [{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": f"Passage: {text}\n\nQuestion: {q.question}"}]
            conv = repo.create_conversation(s, user_id=uid, system_prompt=SYSTEM)
            um = repo.add_message(s, conversation_id=conv.id, role="user", content=q.question)
            am = repo.add_message(s, conversation_id=conv.id, role="assistant", content=answer, parent_id=um.id,
                                  prompt_messages=prompt, model_id="bench")
            repo.set_rating(s, message_id=am.id, user_id=uid, value=1 if liked else -1,
                            better_answer=None if liked else q.answers[0])
            counts["turns"] += 1
            counts["liked" if liked else "disliked"] += 1
    return counts


def scratch_data_dir(tmp: Path) -> Path:
    """A fresh data folder whose model cache links to the tests' (no 25 s dequantisation per run)."""
    data_dir = tmp / "data"
    (data_dir / "models").mkdir(parents=True)
    for entry in (MODEL_CACHE / "models").iterdir() if (MODEL_CACHE / "models").is_dir() else ():
        (data_dir / "models" / entry.name).symlink_to(entry)
    return data_dir


def _hwm_mb(pid: int | None) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    kb = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM:")), None)
    return round(kb / 1024, 1) if kb else None


def follow_round(settings: Any, sessions: Any, run_id: int, started: float) -> dict[str, Any]:
    """Wait for the round, noting when each phase began and the worker's peak memory."""
    from chatlm.training import rounds

    phases: dict[str, float] = {}
    peak: list[float] = [0.0]

    def watch(run: Any) -> None:
        phase = (run.progress or {}).get("phase")
        if phase and phase not in phases:
            phases[phase] = round(time.perf_counter() - started, 1)
        peak[0] = max(peak[0], _hwm_mb(run.pid) or 0.0)

    run = rounds.wait(settings, run_id, sessions=sessions, on_progress=watch, poll=0.25)
    if run.status != "succeeded":
        raise SystemExit(f"round {run_id} failed: {run.error}")
    from chatlm.store import db, registry

    with db.transaction(sessions) as s:
        adapter = registry.get_adapter(s, name=str(run.adapter_name))
    keys = ("target", "baseline_name", "adapter", "baseline", "verdict", "heldout")
    return {"wall_s": round(time.perf_counter() - started, 1), "phase_started_at_s": phases,
            "peak_rss_mb": peak[0] or None, "adapter": adapter.name, "method": adapter.method,
            "epochs": adapter.hyperparams["epochs"], "train": adapter.metrics["train"],
            "metrics": {k: adapter.metrics[k] for k in keys}}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ours(records_path: Path, steps: int, batch: int, model_dir: str) -> dict[str, Any]:
    """Our round's trainer (TRL SFTTrainer, length-grouped batches) on prompt/completion records."""
    from chatlm.engine import loader
    from chatlm.training import data, trainer

    loaded = loader.load(model_dir, Path(tempfile.gettempdir()), "auto")
    rd = data.RoundData(method="sft", train=_records(records_path), heldout=data.Heldout(), counts=data.Counts(),
                        dataset_hash="", jsonl="")
    hp = trainer.hyperparams(rd, {"max_steps": steps, "batch_size": batch})
    with tempfile.TemporaryDirectory() as out:
        tr = trainer.make_trainer(trainer.peft_model(loaded.model, None), loaded.tokenizer, rd, hp, output_dir=out,
                                  device=loaded.device, report=lambda _: None)
        started = time.perf_counter()
        tr.train()
        seconds = time.perf_counter() - started
    return _throughput(steps, seconds, tr.state.num_input_tokens_seen)


def plain_trainer(records_path: Path, steps: int, batch: int, model_dir: str) -> dict[str, Any]:
    """The baseline: transformers.Trainer + peft LoRA (same config and batches) on the same records."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from chatlm.training.trainer import LORA, MICRO_BATCH

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))

    def encode(rec: dict[str, Any]) -> dict[str, list[int]]:
        prompt = tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
        full = tok.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=True, return_dict=False)
        return {"input_ids": full, "attention_mask": [1] * len(full),
                "labels": [-100] * len(prompt) + full[len(prompt):]}

    dataset = Dataset.from_list([encode(r) for r in _records(records_path)])
    micro = min(MICRO_BATCH, batch)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=micro,
                                 gradient_accumulation_steps=batch // micro, max_steps=steps, learning_rate=2e-4,
                                 logging_steps=1, save_strategy="no", report_to="none",
                                 use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                                 include_num_input_tokens_seen="non_padding", disable_tqdm=True, seed=42)
        trainer = Trainer(model=model, args=args, train_dataset=dataset,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return _throughput(steps, seconds, trainer.state.num_input_tokens_seen)


def _throughput(steps: int, seconds: float, tokens: int) -> dict[str, Any]:
    return {"steps": steps, "seconds": round(seconds, 1), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def compare(records: Path, steps: int, batch: int, model_dir: str, repeats: int) -> dict[str, Any]:
    """Ours and plain, alternated in fresh processes (the load of a shared machine drifts)."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "plain": []}
    for _ in range(repeats):
        for mode in ("ours", "plain"):
            proc = subprocess.run([sys.executable, __file__, f"--{mode}", str(records), "--compare-steps", str(steps),
                                   "--batch", str(batch), "--model-dir", model_dir],
                                  capture_output=True, text=True, check=True)
            runs[mode].append({**json.loads(proc.stdout.strip().splitlines()[-1]), "load_avg": os.getloadavg()[0]})
    ratios = [o["tokens_per_s"] / p["tokens_per_s"] for o, p in zip(runs["ours"], runs["plain"], strict=True)]
    return {"steps": steps, "batch": batch, "repeats": repeats, **runs,
            "ratio_median": round(statistics.median(ratios), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--passage", choices=["paragraph", "sentence"], default="paragraph")
    p.add_argument("--compare-steps", type=int, default=8, help="steps of the SFT throughput comparison (0: skip)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--epochs", type=float, help="epochs of the full round (default: the round's own, 1 here)")
    p.add_argument("--round-max-steps", type=int, help="stop the full round early and extrapolate")
    p.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    p.add_argument("--repeats", type=int, default=2, help="alternated runs of the throughput comparison")
    p.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # internal: one baseline run
    p.add_argument("--ours", type=Path, help=argparse.SUPPRESS)  # internal: one run of our trainer
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain or args.ours:
        run = plain_trainer if args.plain else ours
        print(json.dumps(run(args.plain or args.ours, args.compare_steps, args.batch, args.model_dir)))
        return

    import torch

    from chatlm.compose import sessions_for
    from chatlm.config import Settings
    from chatlm.engine import loader
    from chatlm.store import db
    from chatlm.training import data, rounds
    from chatlm.training.options import RoundOptions

    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                       "cuda": torch.cuda.is_available(), "load_avg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-train-") as tmp:
        data_dir = scratch_data_dir(Path(tmp))
        settings = Settings.from_env(data_dir=data_dir)
        sessions = sessions_for(settings)
        out["data"] = {**seed(sessions, args.squad, args.turns, args.passage), "passage": args.passage}
        with db.transaction(sessions) as s:
            out["data"]["counts"] = data.build_round(s).counts.as_dict()
            sft_records = data.build_round(s, "sft").train
        model_dir = loader.local_path(loader.resolve(settings.model), data_dir)

        if args.compare_steps:
            records = Path(tmp) / "sft.jsonl"
            records.write_text("".join(json.dumps(r) + "\n" for r in sft_records))
            out["sft_throughput"] = compare(records, args.compare_steps, args.batch, model_dir, args.repeats)

        started = time.perf_counter()
        run_id = rounds.start_round(settings, RoundOptions("auto", epochs=args.epochs, max_steps=args.round_max_steps,
                                                               batch_size=args.batch), sessions=sessions)
        full = follow_round(settings, sessions, run_id, started)
        total = full["train"]["steps"]
        out["round"] = {"turns": args.turns, **full}
        if args.round_max_steps:
            with db.transaction(sessions) as s:
                n_train = len(data.build_round(s).train)
            steps_full = -(-n_train // args.batch) * full["epochs"]
            per_step = full["train"]["seconds"] / total
            out["round"]["extrapolated"] = {
                "train_records": n_train, "steps_for_epochs": steps_full,
                "train_s": round(per_step * steps_full, 1),
                "wall_s": round(full["wall_s"] - full["train"]["seconds"] + per_step * steps_full, 1)}
    out["machine"]["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
