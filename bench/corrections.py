"""Corrections benchmark (issue 24): after one round on a user's ratings and a promotion, does the
chat answer the corrected questions as the user wrote, keep the liked answers, and not get worse
elsewhere?

Run from the repository root (bundled model; one JSON object printed and written to ``--out``)::

    .venv/bin/python bench/corrections.py knowledge [--questions 80] [--eval-limit 50]
    .venv/bin/python bench/corrections.py chat

``knowledge``: a fresh install (the shipped reader answers questions about a text) is asked the
first ``--questions`` questions of article A of the shared development sample, a chat per question,
through the chat's own path; a user who knows the answers likes the right ones (SQuAD F1 >= 0.5, or
a decline of an unanswerable question) and dislikes the others with the gold span (or the decline)
written as the better answer. One ``auto`` round, promoted, then the same questions are asked again
in new chats: a correction is learnt when the new answer equals it (SQuAD exact match on the span,
or a decline for a decline), a liked answer is kept when the new answer is the same. Article B's
report split (``--eval-limit`` questions) is answered before and after: the other article's F1
must not fall.

``chat``: 20 made-up questions about a user's own world (what a model cannot know) are answered,
disliked and corrected with a short better answer; 20 other everyday questions are asked and not
rated. One ``auto`` round, promoted; then both sets are asked again in new chats: a correction is
learnt on a normalised match (case, punctuation, articles, spaces), and the other answers are
compared with their answers before the round (unchanged, word for word).

Greedy decoding throughout, so a difference comes from the adapter. Targets: >= 80 % of corrections
learnt, >= 95 % of liked answers kept, the other article's F1 not lower; the round within 15 minutes
and 4 GB (its wall time and the worker's peak resident memory are reported).
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

CORRECTED = [  # (question, the better answer the user writes)
    ("What time is our team stand-up?", "9:15 every weekday, in the blue room."),
    ("Who is my manager?", "Priya Raman."),
    ("What is the wifi password at the office?", "Ask reception; it changes every Monday."),
    ("Which editor does our team use?", "Neovim with the team's shared config."),
    ("What is the name of my cat?", "Biscuit."),
    ("Where do we keep the spare keys?", "In the red tin on the top shelf of the pantry."),
    ("When is my dentist appointment?", "Thursday at 3 pm."),
    ("What is our project's code name?", "Bluefin."),
    ("Which day is the recycling collected?", "Tuesday morning."),
    ("What is my favourite tea?", "Smoky lapsang souchong, no milk."),
    ("Who fixes the printer at work?", "Tomasz from IT, extension 4412."),
    ("What is the name of our sailing boat?", "The Kestrel."),
    ("How do I book the meeting room?", "Through the calendar: add Room 2 as a guest."),
    ("What is my gym locker number?", "Locker 57."),
    ("Which train do I take home?", "The 17:42 from platform 3."),
    ("What is our band's name?", "The Paper Lanterns."),
    ("Where is the team offsite this year?", "A farmhouse near Hay-on-Wye."),
    ("What is my daughter's school called?", "Elmfield Primary."),
    ("What do I call my sourdough starter?", "Clint Yeastwood."),
    ("Which plant needs water every day?", "The basil on the kitchen windowsill."),
]
REWORDED = [  # each corrected question as a user might ask it another day (written with the list above)
    "When is the team stand-up?", "Who's my manager?", "What's the office wifi password?",
    "What editor does the team use?", "What's my cat called?", "Where are the spare keys kept?",
    "When's my appointment at the dentist?", "What's the code name of our project?",
    "What day is recycling collected?", "Which tea do I like best?", "Who repairs the printer at work?",
    "What's our sailing boat called?", "How can I book the meeting room?", "What number is my gym locker?",
    "What train do I take to get home?", "What is the name of our band?", "Where's the team offsite this year?",
    "What is the name of my daughter's school?", "What's my sourdough starter called?",
    "Which plant has to be watered every day?",
]
"""Not trained on: a corrections adapter answers a question only when it is worded almost as one it
was taught (``chatlm.adapters.scope``); these say how far that reaches."""
OTHERS = [  # (question, words one of which a right answer says)
    ("What is the capital of France?", ("paris",)), ("How many days are in a leap year?", ("366",)),
    ("What colour is the sky on a clear day?", ("blue",)), ("Name a fruit that is yellow.", ("banana", "lemon")),
    ("What is two plus three?", ("5", "five")), ("What do bees make?", ("honey",)),
    ("What is the opposite of hot?", ("cold",)), ("How many legs does a spider have?", ("8", "eight")),
    ("What is frozen water called?", ("ice",)), ("Which planet do we live on?", ("earth",)),
    ("What do you use to write on a blackboard?", ("chalk",)), ("What animal says moo?", ("cow",)),
    ("How many hours are in a day?", ("24", "twenty-four")), ("What is the largest ocean?", ("pacific",)),
    ("What language is spoken in Spain?", ("spanish",)),
    ("What do plants need to grow?", ("water", "sunlight", "light")),
    ("What is the first letter of the alphabet?", ()), ("What shape has three sides?", ("triangle",)),
    ("What is the boiling point of water in Celsius?", ("100",)), ("What do you call a baby dog?", ("puppy",)),
]
"""Everyday questions nobody rates. Judged two ways: the answer word for word as before the round,
and right as before (one of the words, as a word; a keyword check written with the questions, before
any round was run; the alphabet's "a" is in every answer, so that question is not judged right or
wrong)."""
CHAT_TOKENS = 48


def _services(data_dir: Path) -> Any:
    """A fresh install: the bundled model, the shipped reader for questions about a text."""
    from chatlm import compose
    from chatlm.config import Settings
    from chatlm.evaluation.qa import QueryCache
    from chatlm.knowledge.embed import get_embedder

    settings = Settings.from_env(data_dir=data_dir)
    services = compose.build(settings, embedder=QueryCache(get_embedder()), follow_registry=False)
    services.chat.adapters.ensure_reader()
    return settings, services


def _round(settings: Any, services: Any, method: str, epochs: float | None = None,
           lr: float | None = None) -> dict[str, Any]:
    from train import follow_round

    from chatlm.store import db
    from chatlm.training import data, rounds
    from chatlm.training.options import RoundOptions

    with db.transaction(services.sessions) as s:
        planned = data.build_round(s, method)
    started = time.perf_counter()
    options = RoundOptions(method, epochs=epochs, lr=lr)
    run_id = rounds.start_round(settings, options, sessions=services.sessions)
    out = follow_round(settings, services.sessions, run_id, started)
    out["round_data"] = planned.summary()
    services.chat.adapters.promote(out["adapter"])  # what a user does next: Promote
    return out


def knowledge(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from knowledge_round import answers_by_question, headline, rate

    from chatlm.evaluation.qa import Options, evaluate
    from chatlm.evaluation.scoring import AbstainRule
    from chatlm.knowledge.squad import exact_match, load_squad, normalize_answer

    rule = AbstainRule(check="none", min_dense=None)  # the chat's own answers, no clean-up rule
    articles = load_squad(args.squad)
    a, b = articles[args.article], articles[args.other]
    out: dict[str, Any] = {"train_article": a.title, "test_article": b.title, "questions": args.questions}
    settings, services = _services(data_dir)
    service = services.chat
    try:
        me = service.actor()
        before_b = evaluate(service, [b], Options(squad=args.squad, limit=args.eval_limit, split="report", rule=rule))
        out["other_before"] = headline(before_b)
        asked = evaluate(service, [a], Options(squad=args.squad, limit=args.questions, details=True, rule=rule))
        out["asked"] = headline(asked)
        out["ratings"] = rate(service, me, asked["questions"])
        ids = answers_by_question(service, me)
        out["round"] = _round(settings, services, args.method, args.epochs, args.lr)
        again = evaluate(service, [a], Options(squad=args.squad, limit=args.questions, details=True, rule=rule))
        after = {q["question"]: q for q in again["questions"]}
        learnt = kept = corrected = liked = 0
        misses: list[dict[str, str]] = []
        detail: list[dict[str, Any]] = []
        for q in asked["questions"]:
            if q["question"] not in ids:
                continue
            new = after[q["question"]]["prediction"]
            right = (not q["prediction"]) if q["is_impossible"] else q["f1"] >= 0.5
            detail.append({"question": q["question"], "impossible": q["is_impossible"], "corrected": not right,
                           "taught": after[q["question"]]["adapter"] == out["round"]["adapter"],
                           "wanted": "" if q["is_impossible"] else q["answers"][0],
                           "before": _scores(q), "after": _scores(after[q["question"]])})
            if right:
                liked += 1
                kept += normalize_answer(new) == normalize_answer(q["prediction"])
                continue
            corrected += 1
            wanted = "" if q["is_impossible"] else q["answers"][0]
            ok = (not new) if not wanted else bool(exact_match(new, [wanted]))
            learnt += ok
            if not ok and len(misses) < 8:
                misses.append({"question": q["question"], "wanted": wanted or "(decline)", "said": new or "(decline)"})
        out["corrections"] = {"corrected": corrected, "learnt": learnt, "share": round(learnt / max(corrected, 1), 3),
                              "liked": liked, "kept": kept, "kept_share": round(kept / max(liked, 1), 3),
                              "misses": misses}
        out["detail"] = detail
        after_b = evaluate(service, [b], Options(squad=args.squad, limit=args.eval_limit, split="report", rule=rule))
        out["other_after"] = headline(after_b)
    finally:
        services.close()
    return out


def _scores(q: dict[str, Any]) -> dict[str, Any]:
    """What the chat answered and the figures its decline rule read (to replay a rule on them)."""
    return {k: q.get(k) for k in ("prediction", "span", "support_score", "decline_score", "span_logprob", "adapter")}


def chat(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from chatlm.engine.params import SamplingParams
    from chatlm.evaluation.everyday import says
    from chatlm.evaluation.heldout import same_answer

    params = SamplingParams(temperature=0.0, max_new_tokens=CHAT_TOKENS)
    out: dict[str, Any] = {"corrected": len(CORRECTED), "others": len(OTHERS)}
    settings, services = _services(data_dir)
    service = services.chat

    def ask(question: str) -> tuple[int, str]:
        conv = service.new_conversation(me)
        reply = service.send(me, conv.id, question, params)
        text = reply.run()
        return int(service.history(me, conv.id)[-1][0].id), text

    try:
        me = service.actor()
        for question, better in CORRECTED:
            message_id, _ = ask(question)
            service.rate(me, message_id, -1, better_answer=better)
        before = {q: ask(q)[1] for q, _ in OTHERS}
        out["round"] = _round(settings, services, args.method, args.epochs, args.lr)
        learnt = [(q, better, ask(q)[1]) for q, better in CORRECTED]
        out["corrections"] = {"learnt": sum(same_answer(said, better) for _, better, said in learnt),
                              "misses": [{"question": q, "wanted": b, "said": s} for q, b, s in learnt
                                         if not same_answer(s, b)][:8]}
        reworded = [(q, better, ask(q)[1]) for q, (_, better) in zip(REWORDED, CORRECTED, strict=True)]
        out["reworded"] = {"asked": len(reworded),
                           "learnt": sum(same_answer(said, better) for _, better, said in reworded),
                           "answers": [{"question": q, "wanted": b, "said": s} for q, b, s in reworded]}
        after = {q: ask(q)[1] for q, _ in OTHERS}
        out["others_unchanged"] = sum(before[q].strip() == after[q].strip() for q, _ in OTHERS)
        judged = [(q, words) for q, words in OTHERS if words]
        out["others_right"] = {"judged": len(judged), "before": sum(says(before[q], w) for q, w in judged),
                               "after": sum(says(after[q], w) for q, w in judged)}
        out["others_changed"] = [{"question": q, "before": before[q], "after": after[q]}
                                 for q, _ in OTHERS if before[q].strip() != after[q].strip()][:6]
    finally:
        services.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("knowledge", "chat"))
    p.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    p.add_argument("--questions", type=int, default=80, help="knowledge: questions of article A asked and rated")
    p.add_argument("--article", type=int, default=0, help="knowledge: the rated article (its index in --squad)")
    p.add_argument("--other", type=int, default=1, help="knowledge: the other article, scored before and after")
    p.add_argument("--eval-limit", type=int, default=50, help="knowledge: report-split questions of article B")
    p.add_argument("--method", default="auto")
    p.add_argument("--epochs", type=float, help="passes over the data (default: the round's own rule)")
    p.add_argument("--lr", type=float, help="learning rate (default: the round's own)")
    p.add_argument("--out", type=Path)
    p.add_argument("--keep", type=Path, help="an empty folder to keep the install in (its database and adapters)")
    args = p.parse_args()

    import torch
    from train import scratch_data_dir

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-corrections-") as tmp:
        data_dir = scratch_data_dir(args.keep or Path(tmp))
        result = (knowledge if args.part == "knowledge" else chat)(args, data_dir)
    result = {"part": args.part, "method": args.method, "epochs_asked": args.epochs, "lr_asked": args.lr,
              **result,
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.is_available(), "load_avg_end": os.getloadavg()},
              "wall_s": round(time.perf_counter() - started, 1)}
    text = json.dumps(result, indent=2)
    out = args.out or ROOT / f"bench/out/corrections_{args.part}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
