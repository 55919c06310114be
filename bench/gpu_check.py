"""GPU check: the serving engine and a training round of each method on CUDA in bf16.

CI and the development machine have no GPU, so this is run by hand where one is present:
``python bench/gpu_check.py --model-dir DIR`` with DIR a model directory (config, tokenizer and
weights; ``--random`` fills a directory holding only config and tokenizer with random weights, for
a machine that cannot download any). Prints one JSON object: the model's device and dtype, batched
vs single greedy decoding, each method's round (device, steps, tokens/s, held-out figures) and the
adapter served by the scheduler.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rate(sessions: Any, uid: int) -> None:
    """Rated answers as users leave them: 16 questions with a liked and a disliked answer (DPO's
    pairs), and 6 with a liked one only (KTO needs liked and disliked answers that are not pairs)."""
    from chatlm.store import db, repo

    turns = [(f"What is {i} plus {i}?", [(f"{2 * i}", 1), (f"Maybe {i + 7}?", -1)]) for i in range(16)]
    turns += [(f"Name a colour, please ({i}).", [("Blue.", 1)]) for i in range(6)]
    with db.transaction(sessions) as s:
        for question, answers in turns:
            conversation = repo.create_conversation(s, user_id=uid, system_prompt="").id
            asked = repo.add_message(s, conversation_id=conversation, role="user", content=question).id
            prompt = [{"role": "user", "content": question}]
            for text, value in answers:
                answer = repo.add_message(s, conversation_id=conversation, role="assistant", content=text,
                                          parent_id=asked, prompt_messages=prompt, model_id="m").id
                repo.set_rating(s, message_id=answer, user_id=uid, value=value)


def random_model(source: Path, out: Path) -> Path:
    """The source's architecture with random weights, saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--random", action="store_true", help="random weights in the model's architecture")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()

    import torch

    from chatlm.compose import sessions_for
    from chatlm.config import Settings
    from chatlm.engine import loader
    from chatlm.engine.local import LocalBackend
    from chatlm.engine.params import SamplingParams
    from chatlm.store import db, registry, repo
    from chatlm.training import rounds
    from chatlm.training.options import RoundOptions

    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory(prefix="chatlm-gpu-") as tmp:
        model_dir = random_model(args.model_dir, Path(tmp) / "model") if args.random else args.model_dir
        settings = Settings.from_env({}, data_dir=Path(tmp) / "data", model=str(model_dir), device="auto")
        loaded = loader.load(settings.model, Path(settings.data_dir), settings.device)
        param = next(loaded.model.parameters())
        out["model"] = {"device": loaded.device, "param_device": str(param.device), "dtype": str(param.dtype)}

        backend = LocalBackend(loaded, max_batch=8)
        greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
        prompts = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(6)]
        single = [backend.chat(m, greedy).wait() for m in prompts]
        started = time.perf_counter()
        batched = [g.wait() for g in [backend.chat(m, greedy) for m in prompts]]
        out["serving"] = {"batched_equals_single": batched == single,
                          "rows_equal": sum(a == b for a, b in zip(batched, single, strict=True)),
                          "rows": len(prompts), "batch_seconds": round(time.perf_counter() - started, 2)}

        sessions = sessions_for(settings)
        with db.transaction(sessions) as s:
            uid = repo.get_or_create_user(s).id
        rate(sessions, uid)
        out["rounds"] = {}
        for method in ("sft", "kto", "dpo"):
            run_id = rounds.start_round(settings, RoundOptions(method, max_steps=args.steps), sessions=sessions)
            run = rounds.wait(settings, run_id, timeout=540, sessions=sessions)
            if run.status != "succeeded":
                out["rounds"][method] = {"status": run.status, "error": run.error,
                                         "log": rounds.log_path(settings, run_id).read_text()[-3000:]}
                continue
            with db.transaction(sessions) as s:
                adapter = registry.get_adapter(s, name=str(run.adapter_name))
                name, path, metrics = adapter.name, adapter.path, adapter.metrics
            backend.load_adapter(name, Path(path))
            text = backend.chat(prompts[0], greedy, adapter=name).wait()
            out["rounds"][method] = {"status": run.status, "adapter": name, "train": metrics["train"],
                                     "target": metrics["target"], "adapter_figures": metrics["adapter"],
                                     "baseline_figures": metrics["baseline"], "served_text_chars": len(text)}
        backend.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
