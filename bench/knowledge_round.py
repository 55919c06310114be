"""Knowledge-round benchmark (issue 12): the loop on the data that questions about a text produce.

Run from the repository root: ``.venv/bin/python bench/knowledge_round.py [--questions 160]
[--eval-limit 50]`` (bundled model; prints one JSON object, also written to ``--out``).

1. **Ask** the first ``--questions`` questions of article A (the shared sample's first article, both
   splits) through the chat's own path: ``eval qa``'s ``evaluate`` on this run's database, a chat
   per question, k = 3, greedy, so every answer is stored with its prompt, passages and span.
2. **Rate** like a user who knows the answer: a right answer (SQuAD F1 >= 0.5, or a decline of an
   unanswerable question) is liked; every other one is disliked and corrected with the gold span,
   or with the decline sentence.
3. **Round**: ``start_round(auto)`` over those ratings, wall time from the call to the registered
   adapter, and the worker's peak resident memory (VmHWM, sampled every 0.25 s).
4. **Lift**: article B's report split (``--eval-limit`` questions of it), answered by the base model
   and by the new adapter through the same path; answerable F1/EM and no-answer accuracy of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_SQUAD = ROOT.parent / "shared/data/squad2-dev-sample.json"
RIGHT_F1 = 0.5


def answers_by_question(service: Any, me: Any) -> dict[str, int]:
    """The stored answer to each asked question (one chat per question)."""
    from sqlalchemy import select

    from chatlm.store import db
    from chatlm.store.models import Conversation, Message

    with db.transaction(service.sessions) as s:
        rows = s.execute(select(Message.id, Message.parent_id, Message.role, Message.content)
                         .join(Conversation, Conversation.id == Message.conversation_id)
                         .where(Conversation.user_id == me.user_id).order_by(Message.id)).all()
    questions = {r.id: r.content for r in rows if r.role == "user"}
    return {questions[r.parent_id]: r.id for r in rows if r.role == "assistant" and r.parent_id in questions}


def rate(service: Any, me: Any, records: list[dict[str, Any]]) -> dict[str, int]:
    from chatlm.chat.prompts import NOT_FOUND

    ids = answers_by_question(service, me)
    counts = {"liked": 0, "disliked_gold": 0, "disliked_decline": 0, "missing": 0}
    for rec in records:
        message_id = ids.get(rec["question"])
        if message_id is None:
            counts["missing"] += 1
            continue
        right = (not rec["prediction"]) if rec["is_impossible"] else rec["f1"] >= RIGHT_F1
        if right:
            service.rate(me, message_id, 1)
            counts["liked"] += 1
        elif rec["is_impossible"]:
            service.rate(me, message_id, -1, better_answer=NOT_FOUND)
            counts["disliked_decline"] += 1
        else:
            service.rate(me, message_id, -1, better_answer=rec["answers"][0])
            counts["disliked_gold"] += 1
    return counts


def headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_questions", "n_answerable", "has_ans_f1", "has_ans_exact", "no_ans_accuracy",
            "has_ans_abstained", "support_auroc", "retrieval_recall_at_k", "errors", "seconds")
    return {k: report.get(k) for k in keys if k in report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    p.add_argument("--questions", type=int, default=160, help="questions of article A asked and rated")
    p.add_argument("--eval-limit", type=int, default=50, help="report-split questions of article B scored")
    p.add_argument("--method", default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "bench/out/knowledge_round.json")
    args = p.parse_args()

    import torch
    from train import follow_round, scratch_data_dir

    from chatlm import compose
    from chatlm.config import Settings
    from chatlm.evaluation.qa import Options, QueryCache, evaluate
    from chatlm.evaluation.scoring import AbstainRule
    from chatlm.knowledge.embed import get_embedder
    from chatlm.knowledge.squad import load_squad
    from chatlm.store import db, registry
    from chatlm.training import data, rounds
    from chatlm.training.options import RoundOptions

    rule = AbstainRule(check="none", min_dense=None)  # the chat's own answers, no clean-up rule
    articles = load_squad(args.squad)
    train_article, test_article = articles[0], articles[1]
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                       "cuda": torch.cuda.is_available(), "load_avg_start": os.getloadavg()},
                           "train_article": train_article.title, "test_article": test_article.title}
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-knowledge-") as tmp:
        settings = Settings.from_env(data_dir=scratch_data_dir(Path(tmp)))
        services = compose.build(settings, embedder=QueryCache(get_embedder()), follow_registry=False)
        service = services.chat
        try:
            me = service.actor()
            t0 = time.perf_counter()
            asked = evaluate(service, [train_article], Options(squad=args.squad, limit=args.questions,
                                                               details=True, rule=rule))
            out["ask"] = {**headline(asked), "wall_s": round(time.perf_counter() - t0, 1)}
            out["ratings"] = rate(service, me, asked["questions"])
            with db.transaction(services.sessions) as s:
                planned = data.build_round(s, args.method)
            out["round_data"] = planned.summary()
            prompt_chars = [len(m["content"]) for r in planned.train for m in r["prompt"]]
            out["round_data"]["mean_prompt_chars"] = round(sum(prompt_chars) / max(len(prompt_chars), 1))
            started = time.perf_counter()
            run_id = rounds.start_round(settings, RoundOptions(args.method), sessions=services.sessions)
            out["round"] = follow_round(settings, services.sessions, run_id, started)
            name = out["round"]["adapter"]
            with db.transaction(services.sessions) as s:
                service.adapters.load(name, registry.get_adapter(s, name=name).path)
            for label, adapter in (("base", None), ("adapter", name)):
                t0 = time.perf_counter()
                report = evaluate(service, [test_article], Options(squad=args.squad, limit=args.eval_limit,
                                                                   split="report", adapter=adapter, rule=rule))
                out[f"eval_{label}"] = {**headline(report), "wall_s": round(time.perf_counter() - t0, 1)}
        finally:
            services.close()
    out["machine"]["load_avg_end"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
