"""Calibrate ``chatlm.adapters.scope.NEAR``: from which MiniLM cosine a question counts as one a
corrections adapter was taught.

A corrections adapter answers a question when the question is at least ``NEAR`` from one it was
trained on; otherwise the adapter it continued from answers. The risk is answering, with the
corrections adapter, a question the user never rated. So the threshold is the 95th percentile of
the cosine between a question and the nearest of ``--taught`` (50) *other* questions about the same
text, drawn at random: an unrated question about the same text reaches an adapter taught 50
questions about 1 time in 20. Questions about other texts, and everyday chat, are further away.

Measured on the SQuAD *training* sample (``../shared/data/squad2-train-sample.json``: ten articles,
never reported on), so no reported figure comes from the questions it was tuned on.

    .venv/bin/python bench/calibrate_scope.py [--per-article 60] [--taught 50] [--out bench/out/scope.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SQUAD = ROOT.parent / "shared/data/squad2-train-sample.json"
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    p.add_argument("--per-article", type=int, default=60, help="questions drawn per article")
    p.add_argument("--taught", type=int, default=50, help="other questions of the article a round was taught")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench/out/scope.json")
    args = p.parse_args()

    import numpy as np
    from tqdm import tqdm

    from chatlm.adapters.scope import NEAR, rows
    from chatlm.knowledge.embed import get_embedder
    from chatlm.knowledge.squad import load_squad

    embedder = get_embedder()
    rng = random.Random(args.seed)
    nearest_taught: list[float] = []
    for article in tqdm(load_squad(args.squad), desc="articles"):
        questions = list(dict.fromkeys(q.question.strip() for q in article.questions))
        found_rows = rows(embedder.embed, questions)
        for i in rng.sample(range(len(questions)), min(args.per_article, len(questions))):
            others = [j for j in range(len(questions)) if j != i]
            taught = rng.sample(others, min(args.taught, len(others)))
            nearest_taught.append(float((found_rows[taught] @ found_rows[i]).max()))
    found = np.asarray(nearest_taught)
    result = {
        "squad": str(args.squad), "questions": len(found), "taught": args.taught, "seed": args.seed,
        "quantiles": {str(q): round(float(np.quantile(found, q)), 3) for q in QUANTILES},
        "chosen": "0.95", "near_in_code": NEAR,
        "share_at_or_above_near": round(float((found >= NEAR).mean()), 4),
    }
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
