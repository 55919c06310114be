"""Is "the text does not say" in the reader's hidden state? A linear probe, trained on the SQuAD
*training* sample, scored on the development sample's calibration split (issue 23).

For each question the chat's own reader prompt is built (the app's retrieval, 3 passages) and the
shipped reader (bundled model + ``chatlm/adapters/reader``) reads it once; the hidden state of every
layer at the answer's first position is kept. Label: 1 when the passages hold a gold answer, 0 when
they do not (SQuAD's unanswerable questions, a missed retrieval, and a quarter of the answerable
questions asked again over passages of the same article that lack the answer, as reader records are
built). A logistic regression per layer (L2, classes balanced) is fitted on the training prompts and
its AUROC read on the calibration split, beside the reader's own first-token decline log-probability.

Training prompts: the Zelda and Spectre articles (the only ones of the training sample with
unanswerable questions), past the first 95 per article in ``reader_records``'s seeded order. The
shipped reader's rounds meant to read those 95; they were trained before that order was fixed
(it then hung on the negative-passage draws), and 68 of these 300 questions were among those they
did read. No reported question is read.

Run from the repository root (about 15 minutes on two idle cores):
``.venv/bin/python bench/decline_probe.py --train-limit 150 --json bench/out/decline_probe.json``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatlm import compose  # noqa: E402
from chatlm.chat.prompts import NOT_FOUND  # noqa: E402
from chatlm.config import Settings  # noqa: E402
from chatlm.engine import loader  # noqa: E402
from chatlm.evaluation.qa import QueryCache, split_questions  # noqa: E402
from chatlm.evaluation.scoring import auroc  # noqa: E402
from chatlm.knowledge.embed import get_embedder  # noqa: E402
from chatlm.knowledge.squad import Article, Question, load_squad  # noqa: E402
from chatlm.training.reader import NEGATIVE_SHARE, PASSAGES, in_round_order, record  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
READ_BY_THE_READER = 95
"""Questions per article (in the seeded order) the shipped reader's two rounds trained on."""


def training_questions(path: Path, limit: int) -> list[tuple[Article, list[Question]]]:
    """Zelda's and Spectre's questions past those a reader round's first 95 read."""
    articles = load_squad(path)
    return [(article, questions[READ_BY_THE_READER:][:limit])
            for article, questions in zip(articles, in_round_order(articles), strict=True)
            if article.title.startswith(("The_Legend_of_Zelda", "Spectre"))]


def prompts(settings: Settings, chosen: list[tuple[Article, list[Question]]], *, negatives: bool
            ) -> list[tuple[list[dict[str, str]], int]]:
    """(the reader's prompt, 1 if its passages hold a gold answer) for every question."""
    rng = random.Random(7)
    out: list[tuple[list[dict[str, str]], int]] = []
    with compose.scratch(settings, prefix="chatlm-probe-", load_model=False,
                         embedder=QueryCache(get_embedder())) as services:
        chat = services.chat
        actor = chat.actor()
        for article, questions in chosen:
            conv = chat.new_conversation(actor)
            chat.library.load(actor=actor, conversation_id=conv.id, name=article.title, text=article.text)
            chat.library.wait_for_embeddings()
            for q in questions:
                wide = chat.library.retrieve(conv.id, q.question, k=PASSAGES + 6)
                top = wide[:PASSAGES]
                numbered = [(i + 1, p.document, p.text) for i, p in enumerate(top)]
                inside = not q.is_impossible and any(a in p.text for p in top for a in q.answers)
                out.append((record(settings.system_prompt, q.question, numbered, "")["prompt"], int(inside)))
                if negatives and inside and rng.random() < NEGATIVE_SHARE:
                    others = [p for p in wide if not any(a in p.text for a in q.answers)][:PASSAGES]
                    if len(others) == PASSAGES:
                        lacking = [(i + 1, p.document, p.text) for i, p in enumerate(others)]
                        out.append((record(settings.system_prompt, q.question, lacking, "")["prompt"], 0))
    return out


def read(model: Any, tokenizer: Any, items: list[tuple[list[dict[str, str]], int]]) -> tuple[np.ndarray, np.ndarray]:
    """(hidden states [items, layers + 1, width] at the answer's first position, the reader's
    log-probability of the decline's first token there)."""
    from tqdm import tqdm

    decline = tokenizer(NOT_FOUND, add_special_tokens=False)["input_ids"][0]
    states, declines = [], []
    with torch.inference_mode():
        for messages, _ in tqdm(items, desc="reading", file=sys.stderr):
            ids = torch.tensor([tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                              tokenize=True, return_dict=False)])
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            states.append(torch.stack([h[0, -1] for h in out.hidden_states]).float().numpy())
            declines.append(float(torch.log_softmax(out.logits[0, -1].float(), -1)[decline]))
    return np.stack(states), np.array(declines)


def fit(x: np.ndarray, y: np.ndarray, l2: float) -> Any:
    """A balanced, L2-regularised logistic regression (LBFGS); returns its scoring function."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    share = yt.mean()
    weight = torch.where(yt > 0, 0.5 / share, 0.5 / (1 - share))
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = ((xt - mu) / sd) @ w + b
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")).mean()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (((torch.tensor(z, dtype=torch.float64) - mu) / sd) @ w + b).detach().numpy()


def separation(score: np.ndarray, y: np.ndarray) -> float:
    """AUROC of ``score`` ranking answerable (passages hold the answer) above the rest."""
    return round(auroc(list(score[y == 1]), list(score[y == 0])), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-limit", type=int, default=150, help="training questions per article")
    parser.add_argument("--calibration-limit", type=int, default=50, help="calibration questions per article")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    settings = Settings.from_env()
    train_items = prompts(settings, training_questions(DATA / "squad2-train-sample.json", args.train_limit),
                          negatives=True)
    calibration = [(a, split_questions(a.questions, "calibration")[:args.calibration_limit])
                   for a in load_squad(DATA / "squad2-dev-sample.json")]
    cal_items = prompts(settings, calibration, negatives=False)
    loaded = loader.load("bundled", Path(settings.data_dir), "cpu", quantize="none")
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(ROOT / "chatlm" / "adapters" / "reader")).eval()
    x_train, d_train = read(model, loaded.tokenizer, train_items)
    x_cal, d_cal = read(model, loaded.tokenizer, cal_items)
    y_train = np.array([label for _, label in train_items])
    y_cal = np.array([label for _, label in cal_items])
    result: dict[str, Any] = {
        "train": {"prompts": len(y_train), "answer_in_passages": int(y_train.sum())},
        "calibration": {"prompts": len(y_cal), "answer_in_passages": int(y_cal.sum())},
        "decline_first_token_auroc": {"train": separation(-d_train, y_train),
                                      "calibration": separation(-d_cal, y_cal)},
        "probe_auroc_by_layer": {},
    }
    for l2 in (1e-3, 1e-2, 1e-1):
        result["probe_auroc_by_layer"][str(l2)] = {
            str(layer): separation(fit(x_train[:, layer], y_train, l2)(x_cal[:, layer]), y_cal)
            for layer in range(0, x_train.shape[1], 3)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
