"""Pick the reader's decline threshold on the calibration split (never on the report split).

Input: an ``eval qa --details`` report of the calibration split run with the reader and
``CHATLM_READER_THRESHOLD=-1000`` (so it never declines: every question has its span and its
support score, ``-(log p(decline) - log p(copy))`` at the first token). For each threshold the
answer is the span when the score reaches it and the decline otherwise; the threshold with the best
overall SQuAD v2 F1 wins. Prints a table and the chosen value (set it as ``CHATLM_READER_THRESHOLD``
or keep it as the default in ``chatlm/config.py``).

    .venv/bin/python bench/calibrate_reader.py bench/out/reader_calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatlm.knowledge.squad import f1


def figures(questions: list[dict], threshold: float) -> dict[str, float]:
    has_f1, no_ok, total = [], [], []
    for q in questions:
        score = q.get("support_score")
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
    args = p.parse_args()
    report = json.loads(args.report.read_text(encoding="utf-8"))
    if report.get("split") != "calibration":
        print("error: calibrate on the calibration split only", file=sys.stderr)
        return 2
    questions = report["questions"]
    scores = sorted({round(q["support_score"], 2) for q in questions if q.get("support_score") is not None})
    best = max(((t, figures(questions, t)) for t in [*scores, 1e9]), key=lambda tf: (tf[1]["f1"], -abs(tf[0])))
    print("| threshold | F1 | has-answer F1 | no-answer accuracy |\n| --- | --- | --- | --- |")
    for t in sorted({*scores[:: max(1, len(scores) // 12)], best[0], 0.0}):
        fig = figures(questions, t)
        print(f"| {t:.2f} | {fig['f1']:.3f} | {fig['has_ans_f1']:.3f} | {fig['no_ans_accuracy']:.3f} |")
    print(f"\nchosen threshold: {best[0]:.2f} (F1 {best[1]['f1']:.3f} on {len(questions)} calibration questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
