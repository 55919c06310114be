"""Choose the decline rule for the questions a corrections round was taught (issue 24), on a
calibration run, never on the run that is reported.

Input: the JSON of ``bench/corrections.py knowledge`` (its ``detail``: every rated question with
the chat's span and signals before and after the round). Run it on the SQuAD *training* sample for
calibration (``--squad ../shared/data/squad2-train-sample.json --article 5 --other 4``: Spectre rated,
Zelda scored), and report on the development sample's Normans article.

A question counts as taught when the round's adapter answered it (its scores after the round differ
from before; a held-out rating is answered by the reader as before). For each pair
(``sure_span``, ``sure_decline``) of ``chatlm.knowledge.answer.declines``, replayed on the spans and
signals after the round: how many corrections are answered as corrected and how many liked answers
stay as they were. The pair that learns the most corrections while keeping as many liked answers
as the reader's own pair wins (the issue's targets: >= 80 % learnt, >= 95 % kept); ties go to the
pair nearest the reader's own, so a taught question is judged as an untaught one unless it gains.

    .venv/bin/python bench/calibrate_taught.py bench/out/corrections_knowledge_calib.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatlm.config import Settings
from chatlm.knowledge.answer import SURE_DECLINE, SURE_SPAN, declines
from chatlm.knowledge.squad import exact_match, normalize_answer

SPANS = [-0.25 * i for i in range(0, 13)] + [float("inf"), float("-inf")]
DECLINES = [0.25 * i for i in range(-12, 13)]


def taught(q: dict[str, Any]) -> bool:
    """Answered by the round's adapter (in a report without the adapter: its signals moved; the
    reader, greedy, repeats itself)."""
    if "taught" in q:
        return bool(q["taught"])
    return q["before"].get("decline_score") != q["after"].get("decline_score")


def answer(scores: dict[str, Any], threshold: float, sure_span: float, sure_decline: float) -> str:
    """The chat's short answer under the pair: the span, or "" for the decline."""
    span = scores.get("span") or ""
    if not span or declines(scores.get("support_score") or 0.0, threshold,
                            decline_score=scores.get("decline_score"), span_logprob=scores.get("span_logprob"),
                            sure_span=sure_span, sure_decline=sure_decline):
        return ""
    return span


def replay(detail: list[dict[str, Any]], threshold: float, sure_span: float, sure_decline: float) -> dict[str, int]:
    learnt = kept = 0
    for q in detail:
        new = answer(q["after"], threshold, sure_span, sure_decline)
        if q["corrected"]:
            learnt += (not new) if not q["wanted"] else bool(exact_match(new, [q["wanted"]]))
        else:
            kept += normalize_answer(new) == normalize_answer(q["before"]["prediction"] or "")
    return {"learnt": learnt, "kept": kept}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("--threshold", type=float, default=Settings.abstain_threshold,
                   help="the agreement threshold in force (CHATLM_ABSTAIN_THRESHOLD)")
    args = p.parse_args()
    detail = [q for q in json.loads(args.report.read_text(encoding="utf-8"))["detail"] if taught(q)]
    corrected = sum(q["corrected"] for q in detail)
    declines_wanted = sum(q["corrected"] and not q["wanted"] for q in detail)
    print(f"{len(detail)} taught questions: {corrected} corrections ({declines_wanted} declines), "
          f"{len(detail) - corrected} liked")
    now = replay(detail, args.threshold, SURE_SPAN, SURE_DECLINE)
    print(f"the reader's rule (sure_span {SURE_SPAN}, sure_decline {SURE_DECLINE}): "
          f"learnt {now['learnt']}/{corrected}, kept {now['kept']}/{len(detail) - corrected}")
    rows = [(s, d, replay(detail, args.threshold, s, d)) for s in SPANS for d in DECLINES]
    best = max((r for r in rows if r[2]["kept"] >= now["kept"]),
               key=lambda r: (r[2]["learnt"], -abs(r[1] - SURE_DECLINE) - abs(max(min(r[0], 9.0), -9.0) - SURE_SPAN)))
    print("| sure_span | sure_decline | learnt | kept |\n| --- | --- | --- | --- |")
    shown = (SURE_SPAN, -1.0, -2.0, float("inf"), float("-inf"))
    for s, d, f in rows:
        if (d in (-2.0, -1.0, 0.0, 1.0, 2.0) and s in shown) or (s, d) == best[:2]:
            print(f"| {s} | {d} | {f['learnt']} | {f['kept']} |")
    print(f"best: sure_span {best[0]}, sure_decline {best[1]}: learnt {best[2]['learnt']}/{corrected}, "
          f"kept {best[2]['kept']}/{len(detail) - corrected}")


if __name__ == "__main__":
    main()
