"""The whole fine-tuning loop on the real bundled model: ratings of SQuAD answers -> a DPO round ->
an adapter that is better on the held-out pairs, served without a restart and switched from the
shell; and the held-out QA score of answers about the user's own texts."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatlm.engine.params import SamplingParams
from chatlm.store import db, registry
from chatlm.training import rounds
from chatlm.training.options import RoundOptions
from tests.conftest import MODEL_CACHE, REPO
from tests.seeding import add_turn

SQUAD = Path(__file__).resolve().parent / "data" / "squad-mini.json"
"""A slice of the shared SQuAD sample kept with the tests, so a clean clone runs the whole loop."""
SYSTEM = "Answer the question with a short phrase copied from the passage."


def squad_turns(n: int) -> list[tuple[str, str, list[str], str]]:
    """(question, passage sentence, gold answers, a wrong answer) from distinct SQuAD paragraphs."""
    from chatlm.knowledge.squad import load_squad

    out = []
    for article in load_squad(SQUAD):
        seen: set[int] = set()
        for q in article.questions:
            if q.is_impossible or q.paragraph_index in seen:
                continue
            sentences = re.split(r"(?<=[.!?])\s+", article.paragraphs[q.paragraph_index])
            sentence = next((x for x in sentences if q.answers[0] in x), None)
            if sentence:
                seen.add(q.paragraph_index)
                out.append((q.question, sentence, q.answers))
    return [(q, p, a, out[(i + 7) % len(out)][2][0]) for i, (q, p, a) in enumerate(out[:n])]


@pytest.mark.slow
def test_whole_loop_ratings_to_served_adapter(bundled, start_server, tmp_path) -> None:
    import copy
    import dataclasses

    from safetensors import safe_open

    from chatlm.engine.local import LocalBackend
    from chatlm.knowledge.squad import f1

    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True)
    for entry in (MODEL_CACHE / "models").iterdir():  # the session's safetensors copy, not a new one
        (data_dir / "models" / entry.name).symlink_to(entry)
    base_file = next((MODEL_CACHE / "models").glob("*/model.safetensors"))
    base_hash = hashlib.sha256(base_file.read_bytes()).hexdigest()
    backend = LocalBackend(dataclasses.replace(bundled, model=copy.deepcopy(bundled.model)))
    server = start_server(backend, data_dir=data_dir, device="cpu")
    service = server.app.service
    me = service.actor()
    # the model's answers, rated like a user who knows the gold answer: a hedged wrong answer is
    # disliked (and, for the first four questions, corrected), the exact span liked; the prompt holds
    # the passage, so no knowledge. A corrected question always trains: the other eight give the
    # held-out pairs
    for i, (question, passage, golds, wrong) in enumerate(squad_turns(12)):
        prompt = [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": f"Passage: {passage}\n\nQuestion: {question}"}]
        answers = []
        for text in (golds[0], f"I am not sure, but I think it was {wrong}."):
            good = f1(text, golds) >= 0.5
            answers.append((text, 1 if good else -1, None if good or i >= 4 else golds[0]))
        add_turn(service.sessions, me.user_id, question, answers, prompt=prompt)

    options = RoundOptions("auto", max_steps=3, lr=5e-4, batch_size=2)
    run_id = rounds.start_round(server.settings, options, sessions=service.sessions)
    run = rounds.wait(server.settings, run_id, timeout=900, sessions=service.sessions)
    assert run.status == "succeeded", (run.error, rounds.log_path(server.settings, run_id).read_text()[-3000:])
    with db.transaction(service.sessions) as s:
        adapter = registry.get_adapter(s, name=run.adapter_name)
    m = adapter.metrics
    assert adapter.method == "dpo" and m["target"] == "pair_margin" and m["heldout"]["pairs"] >= 2
    assert m["verdict"]["label"] == "better" and m["adapter"]["pair_margin"] > m["baseline"]["pair_margin"], m
    assert m["adapter"]["pair_accuracy"] >= m["baseline"]["pair_accuracy"], m
    with safe_open(str(Path(adapter.path) / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert keys and all(".lora_" in k for k in keys)  # only LoRA weights: the base is untouched
        assert any(f.get_tensor(k).abs().sum() > 0 for k in keys if ".lora_B." in k)
    assert hashlib.sha256(base_file.read_bytes()).hexdigest() == base_hash

    assert service.adapters.active is None
    assert service.adapters.promote(adapter.name) == adapter.name  # served without a restart
    conv = service.new_conversation(me, system_prompt=SYSTEM)
    service.send(me, conv.id, "Say hi", SamplingParams(temperature=0.0, max_new_tokens=4)).run()
    assert service.history(me, conv.id)[-1][0].adapter == adapter.name
    from chatlm.engine.lora import RowLoRA
    assert not any(isinstance(m, RowLoRA) for m in bundled.model.modules())  # the shared model is never wrapped
    env = {**os.environ, "CHATLM_DATA_DIR": str(data_dir)}
    out = subprocess.run([sys.executable, "-m", "chatlm", "adapters", "list"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0 and re.search(rf"^\*\s+{adapter.name}\s+dpo", out.stdout, re.M), out.stdout
    out = subprocess.run([sys.executable, "-m", "chatlm", "adapters", "rollback"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "the base model is active" in out.stdout
    # the running server follows the shell's choice at the next answer: no restart, no extra call
    service.send(me, conv.id, "Say hi again", SamplingParams(temperature=0.0, max_new_tokens=4)).run()
    assert service.history(me, conv.id)[-1][0].adapter is None and service.adapters.active is None
    out = subprocess.run([sys.executable, "-m", "chatlm", "adapters", "activate", adapter.name],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    service.send(me, conv.id, "And once more", SamplingParams(temperature=0.0, max_new_tokens=4)).run()
    assert service.history(me, conv.id)[-1][0].adapter == adapter.name


def test_qa_f1_on_held_out_questions_about_loaded_texts(bundled) -> None:
    """Rated answers to questions about the user's own texts are a QA test set: the liked answer is
    the gold one. Only grounded prompts count, and the model's answers (the 135M model copies the
passage) overlap the liked answers and not a wrong gold."""
    from chatlm.chat.prompts import grounded_question
    from chatlm.evaluation import heldout
    from chatlm.training.data import Heldout

    passage = [(1, "zorbia.txt", "The capital of the kingdom of Zorbia is Quillton. Quillton lies on the river "
                                 "Vask. Zorbia is ruled by Queen Amelthe.")]

    def liked(prompt: list[dict[str, str]], answer: str) -> dict:
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}

    def about_text(question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": grounded_question(question, passage, short=True)}]

    held = Heldout(liked=[liked(about_text("What is the capital of Zorbia?"), "Quillton [1]."),
                          liked(about_text("On which river does Quillton lie?"), "The river Vask [1]"),
                          liked([{"role": "user", "content": "Say hi"}], "Hi!")])
    items = heldout.knowledge_items(held)
    assert [golds for _, golds in items] == [["Quillton [1]."], ["The river Vask [1]"]]
    right = heldout.knowledge_f1(bundled.model, bundled.tokenizer, items)
    wrong = heldout.knowledge_f1(bundled.model, bundled.tokenizer, [(p, ["Paris"]) for p, _ in items])
    assert right["knowledge_f1"] > wrong["knowledge_f1"] == 0, (right, wrong)
    assert heldout.knowledge_items(Heldout(liked=held.liked[2:])) == []
