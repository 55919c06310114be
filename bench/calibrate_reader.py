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

``--rule`` instead keeps the agreement threshold (``--threshold``, the configured 0.6) and sweeps the
reader's two overrides (``chatlm.knowledge.answer.SURE_SPAN``: answer despite a poor agreement when the span's
first token has at least this log-probability; ``SURE_DECLINE``: decline when ``decline_score``
reaches this). They exist to let a round's taught answers and declines through; the table shows what
each pair costs or gains on untaught questions, and the most permissive pair that lowers neither
has-answer F1 nor no-answer accuracy by more than 0.005 (against the rule without overrides) is
printed (``--rule`` needs a report made with this version: ``span`` and
``span_logprob`` per question).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatlm.knowledge.answer import declines
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


def rule_figures(questions: list[dict], threshold: float, sure_span: float, sure_decline: float) -> dict[str, float]:
    """The served rule (``chatlm.knowledge.answer.declines``) replayed on each question's span and signals."""
    has_f1, no_ok = [], []
    for q in questions:
        span = q.get("span") or ""
        declined = not span or declines(q.get("support_score") or 0.0, threshold,
                                        decline_score=q.get("decline_score"), span_logprob=q.get("span_logprob"),
                                        sure_span=sure_span, sure_decline=sure_decline)
        if q["is_impossible"]:
            no_ok.append(1.0 if declined else 0.0)
        else:
            has_f1.append(0.0 if declined else f1(span, q["answers"]))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {"has_ans_f1": mean(has_f1), "no_ans_accuracy": mean(no_ok),
            "balanced": (mean(has_f1) + mean(no_ok)) / 2}


def sweep_rule(questions: list[dict], threshold: float) -> int:
    inf = float("inf")
    spans = [-0.02, -0.05, -0.1, -0.2, -0.5, inf]
    declines = [0.0, 1.0, 2.0, 3.0, 5.0, inf]
    base = rule_figures(questions, threshold, inf, inf)
    print("| SURE_SPAN | SURE_DECLINE | has-answer F1 | no-answer accuracy | mean |\n| --- | --- | --- | --- | --- |")
    rows = [(s, d, rule_figures(questions, threshold, s, d)) for s in spans for d in declines]
    for s, d, fig in rows:
        print(f"| {s:g} | {d:g} | {fig['has_ans_f1']:.3f} | {fig['no_ans_accuracy']:.3f} | {fig['balanced']:.3f} |")
    fine = [(s, d, fig) for s, d, fig in rows if fig["has_ans_f1"] >= base["has_ans_f1"] - 0.005
            and fig["no_ans_accuracy"] >= base["no_ans_accuracy"] - 0.005]
    s, d, fig = min(fine, key=lambda r: min(r[0], 10.0) + min(r[1], 10.0))  # lowest thresholds: most let through
    print(f"\nwithout overrides: has-answer F1 {base['has_ans_f1']:.3f}, no-answer accuracy "
          f"{base['no_ans_accuracy']:.3f}; most permissive that lowers neither: SURE_SPAN {s:g}, SURE_DECLINE {d:g} "
          f"(has-answer F1 {fig['has_ans_f1']:.3f}, no-answer accuracy {fig['no_ans_accuracy']:.3f}) "
          f"on {len(questions)} calibration questions")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--field", default="support_score", choices=("support_score", "decline_score"),
                   help="the signal: MiniLM agreement (support_score) or the reader's own (decline_score)")
    p.add_argument("--rule", action="store_true", help="sweep the reader's overrides of the agreement rule")
    p.add_argument("--threshold", type=float, default=0.6, help="with --rule: the agreement threshold in force")
    args = p.parse_args()
    global FIELD
    FIELD = args.field
    report = json.loads(args.report.read_text(encoding="utf-8"))
    if report.get("split") != "calibration":
        print("error: calibrate on the calibration split only", file=sys.stderr)
        return 2
    questions = report["questions"]
    if args.rule:
        return sweep_rule(questions, args.threshold)
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
