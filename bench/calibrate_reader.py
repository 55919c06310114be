"""Choose the decline threshold for the reader's answers on the calibration split (never on the report split).

Input: an ``eval qa --details`` report of the calibration split run with ``CHATLM_ABSTAIN_THRESHOLD=-1``
(so nothing is declined: every question has its span and both signals). ``--field support_score``
sweeps the MiniLM agreement of question and best sentence (the rule in force,
``CHATLM_ABSTAIN_THRESHOLD``); ``--field decline_score`` sweeps the reader's own first-token
``log p(decline) - log p(any span start)``. For each threshold the answer is the span when the
signal reaches it and the decline otherwise; the threshold with the best mean of has-answer F1 and
no-answer accuracy wins (the issue's targets are on both; overall F1 on a split that is half
unanswerable would pick "always decline", useless to a user).

    .venv/bin/python bench/calibrate_reader.py bench/out/reader_calibration.json [--field decline_score]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatlm.knowledge.squad import f1

FIELD = "support_score"


def figures(questions: list[dict], threshold: float) -> dict[str, float]:
    has_f1, no_ok, total = [], [], []
    for q in questions:
        score = q.get(FIELD)
        answered = score is not None and score >= threshold and bool(q.get("answer"))
        if q["is_impossible"]:
            no_ok.append(0.0 if answered else 1.0)
            total.append(no_ok[-1])
        else:
            has_f1.append(f1(q["answer"], q["answers"]) if answered else 0.0)
            total.append(has_f1[-1])
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {"f1": mean(total), "has_ans_f1": mean(has_f1), "no_ans_accuracy": mean(no_ok)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--field", default="support_score", choices=("support_score", "decline_score"),
                   help="the signal: MiniLM agreement (support_score) or the reader's own (decline_score)")
    args = p.parse_args()
    global FIELD
    FIELD = args.field
    report = json.loads(args.report.read_text(encoding="utf-8"))
    if report.get("split") != "calibration":
        print("error: calibrate on the calibration split only", file=sys.stderr)
        return 2
    questions = report["questions"]
    sign = -1 if FIELD == "decline_score" else 1  # a higher decline score means less support
    for q in questions:
        if q.get(FIELD) is not None:
            q[FIELD] = sign * q[FIELD]
    scores = sorted({round(q[FIELD], 2) for q in questions if q.get(FIELD) is not None})
    def balanced(fig: dict[str, float]) -> float:
        return (fig["has_ans_f1"] + fig["no_ans_accuracy"]) / 2

    best = max(((t, figures(questions, t)) for t in scores), key=lambda tf: (balanced(tf[1]), -abs(tf[0])))
    print("| threshold | F1 | has-answer F1 | no-answer accuracy |\n| --- | --- | --- | --- |")
    for t in sorted({*scores[:: max(1, len(scores) // 12)], best[0], 0.0}):
        fig = figures(questions, t)
        print(f"| {t:.2f} | {fig['f1']:.3f} | {fig['has_ans_f1']:.3f} | {fig['no_ans_accuracy']:.3f} |")
    print(f"\nchosen threshold: {best[0]:.2f} (has-answer F1 {best[1]['has_ans_f1']:.3f}, no-answer accuracy "
          f"{best[1]['no_ans_accuracy']:.3f}, F1 {best[1]['f1']:.3f} on {len(questions)} calibration questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
