"""Held-out figures of a new adapter next to its baseline (the base model or the parent adapter).

The figures are read from log-probabilities of stored answers, so they need no generation and no
judge: preference accuracy and mean margin on pairs (chosen minus rejected, summed over the answer's
tokens), the same for liked vs disliked answers (per-token mean, as they answer different prompts),
perplexity of liked answers, and, for a document round, perplexity of the held-out windows of its
text. A promotion decision can then rest on the round's target figure. Two figures are generated,
greedily, since no stored answer says them: answers to held-out questions about the user's texts
(F1), and, for a chat round, the everyday questions with known answers (``everyday_right``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chatlm.evaluation.verdict import FIGURES as VERDICT_FIGURES
from chatlm.training.data import Heldout, Record

TARGETS = {"dpo": "pair_margin", "kto": "rated_margin", "sft": "liked_perplexity", "document": "text_perplexity",
           "reader": "liked_perplexity"}
KNOWLEDGE_LIMIT = 16
"""Held-out questions about loaded texts answered per model (generation is the slow part on a CPU)."""
KNOWLEDGE_TOKENS = 64
LEARNT_LIMIT = 24
"""The round's corrections (and liked answers) re-asked per model to say what it learnt."""
LOWER_IS_BETTER = {key for key, (_, higher) in VERDICT_FIGURES.items() if not higher}
"""The figures where lower is better: the verdict's own table says which (one place)."""
Messages = list[dict[str, str]]
BATCH = 4


def _ids(tokenizer: Any, prompt: Messages, completion: Messages) -> tuple[list[int], int]:
    """Token ids of prompt + completion and where the completion starts (as TRL tokenises them)."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return list(full), start


def completion_logps(model: Any, tokenizer: Any, items: Sequence[tuple[Messages, Messages]], *,
                     batch_size: int = BATCH) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each completion given its prompt; the vocabulary
    projection runs on the completion positions only (it is a fifth of a small model's cost)."""
    import torch

    device = next(model.parameters()).device
    encoded = [_ids(tokenizer, p, c) for p, c in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i][0]
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            lo = min(max(encoded[i][1] - 1, 0) for i in idx)
            keep = torch.arange(lo, width - 1, device=device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
            targets = ids[:, lo + 1:].to(device)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
            for row, i in enumerate(idx):
                seq, start = encoded[i]
                span = logp[row, max(start - 1, 0) - lo:len(seq) - 1 - lo]
                out[i] = (float(span.sum()), int(span.numel()))
    return out


def _key(prompt: Messages, completion: Messages) -> str:
    return json.dumps([prompt, completion], sort_keys=True, ensure_ascii=False)


def score(model: Any, tokenizer: Any, heldout: Heldout) -> dict[str, float]:
    """Every figure the held-out items allow, for the model as it is now (each distinct answer is
    scored once: a liked answer is both a chosen completion and a desirable one)."""
    wanted = [(r["prompt"], r["chosen"]) for r in heldout.pairs] + [(r["prompt"], r["rejected"]) for r in heldout.pairs]
    wanted += [(r["prompt"], r["completion"]) for r in [*heldout.rated, *heldout.liked]]
    unique = {_key(p, c): (p, c) for p, c in wanted}
    scored = dict(zip(unique, completion_logps(model, tokenizer, list(unique.values())), strict=True))

    def lp(prompt: Messages, completion: Messages) -> tuple[float, int]:
        return scored[_key(prompt, completion)]

    figures: dict[str, float] = {}
    if heldout.pairs:
        margins = [lp(r["prompt"], r["chosen"])[0] - lp(r["prompt"], r["rejected"])[0] for r in heldout.pairs]
        figures["pair_accuracy"] = sum(m > 0 for m in margins) / len(margins)
        figures["pair_margin"] = sum(margins) / len(margins)

    def per_token(r: Record) -> float:
        total, n = lp(r["prompt"], r["completion"])
        return total / max(n, 1)

    good = [per_token(r) for r in heldout.rated if r["label"]]
    bad = [per_token(r) for r in heldout.rated if not r["label"]]
    if good and bad:
        figures["rated_accuracy"] = sum(g > b for g in good for b in bad) / (len(good) * len(bad))
        figures["rated_margin"] = sum(good) / len(good) - sum(bad) / len(bad)
    if heldout.liked:
        lps = [lp(r["prompt"], r["completion"]) for r in heldout.liked]
        figures["liked_perplexity"] = math.exp(-sum(s for s, _ in lps) / max(sum(n for _, n in lps), 1))
    if heldout.texts:
        from chatlm.training.document import perplexity

        figures["text_perplexity"] = perplexity(model, tokenizer, heldout.texts)[0]
    figures.update(knowledge_f1(model, tokenizer, knowledge_items(heldout)))
    return {k: round(v, 4) for k, v in figures.items()}


def knowledge_items(heldout: Heldout, limit: int = KNOWLEDGE_LIMIT) -> list[tuple[Messages, list[str]]]:
    """Held-out questions asked about the user's loaded texts (the prompt quotes passages), each
    with the answers the user liked or wrote: the gold answers of a QA test on their own texts."""
    from chatlm.chat.prompts import GROUNDED_PREFIX

    items: dict[str, tuple[Messages, list[str]]] = {}
    for r in heldout.liked:
        prompt = r["prompt"]
        if prompt and prompt[-1]["role"] == "user" and prompt[-1]["content"].startswith(GROUNDED_PREFIX):
            items.setdefault(_key(prompt, []), (prompt, []))[1].append(r["completion"][0]["content"])
    return list(items.values())[:limit]


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Messages], *, max_new_tokens: int,
                   batch_size: int = BATCH) -> list[str]:
    """The model's greedy answers to chat prompts (left-padded batches), as the chat would start them."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    with torch.no_grad():
        for b in range(0, len(prompts), batch_size):
            encoded = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                       for p in prompts[b:b + batch_size]]
            width = max(len(x) for x in encoded)
            ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in encoded], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


def knowledge_f1(model: Any, tokenizer: Any, items: Sequence[tuple[Messages, list[str]]], *,
                 batch_size: int = BATCH) -> dict[str, float]:
    """SQuAD-rule F1 and exact match of the model's greedy answers against the liked answers,
    both cleaned like the QA harness cleans predictions (citations, labels, a decline)."""
    from chatlm.evaluation.scoring import clean_answer
    from chatlm.knowledge.squad import exact_match, f1

    if not items:
        return {}
    answers = greedy_answers(model, tokenizer, [p for p, _ in items], max_new_tokens=KNOWLEDGE_TOKENS,
                             batch_size=batch_size)
    golds = [[c for c in map(clean_answer, gs) if c] for _, gs in items]  # [] = a liked decline
    preds = [clean_answer(a) for a in answers]
    return {"knowledge_f1": sum(f1(p, g) for p, g in zip(preds, golds, strict=True)) / len(items),
            "knowledge_exact": sum(exact_match(p, g) for p, g in zip(preds, golds, strict=True)) / len(items)}


def everyday_right(model: Any, tokenizer: Any, system: Messages, asked: Sequence[int] | None = None) -> list[bool]:
    """For each everyday question (``chatlm.evaluation.everyday``; only those numbered ``asked``),
    whether the model, as it is now, answers it right, asked with the user's system prompt."""
    from chatlm.evaluation.everyday import QUESTIONS, TOKENS, says

    chosen = [QUESTIONS[i] for i in (range(len(QUESTIONS)) if asked is None else asked)]
    if not chosen:
        return []
    prompts = [[*system, {"role": "user", "content": q}] for q, _ in chosen]
    said = greedy_answers(model, tokenizer, prompts, max_new_tokens=TOKENS)
    return [says(a, words) for a, (_, words) in zip(said, chosen, strict=True)]


def same_answer(said: str, wanted: str) -> bool:
    """Whether an answer says what the user wrote: equal after SQuAD normalisation (case,
    punctuation, articles, spaces) once citations and labels are cleaned, or both the decline."""
    from chatlm.evaluation.scoring import clean_answer
    from chatlm.knowledge.squad import normalize_answer

    a, b = clean_answer(said), clean_answer(wanted)
    return normalize_answer(a) == normalize_answer(b)


def learnt(model: Any, tokenizer: Any, items: Sequence[tuple[Messages, str]], adapters: Sequence[str | None],
           *, limit: int = LEARNT_LIMIT) -> dict[str | None, int]:
    """How many of the round's own targets (a user's corrections, or liked answers) each model
    answers as written, greedily, on the prompt they were given with."""
    items = list(items)[:limit]
    if not items:
        return {a: 0 for a in adapters}
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t in items)
    out: dict[str | None, int] = {}
    for adapter in adapters:
        with using(model, adapter):
            said = greedy_answers(model, tokenizer, [p for p, _ in items], max_new_tokens=longest + 8)
        out[adapter] = sum(same_answer(a, t) for a, (_, t) in zip(said, items, strict=True))
    return out


@contextmanager
def using(model: Any, adapter: str | None) -> Iterator[None]:
    """Run the PeftModel as the base model (None) or with one of its adapters."""
    if adapter is None:
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    model.set_adapter(adapter)
    try:
        yield
    finally:
        model.set_adapter(previous)


def target_of(method: str, figures: dict[str, float]) -> str | None:
    """The round's figure of merit, or the first one the held-out items allow."""
    for key in (TARGETS[method], *TARGETS.values()):
        if key in figures:
            return key
    return None


def compare(model: Any, tokenizer: Any, heldout: Heldout, *, method: str, trained: str = "default",
            baseline: str | None = None, baseline_name: str = "base",
            corrections: Sequence[tuple[Messages, str]] = (),
            liked: Sequence[tuple[Messages, str]] = (),
            everyday: Messages | None = None, answers: Sequence[int] | None = None) -> dict[str, Any]:
    """Figures of the trained adapter and of the baseline, side by side, with the round's target,
    and what it learnt: how many of the round's ``corrections`` each answers as the user wrote them,
    and how many ``liked`` answers the adapter still gives (the verdict reads these metrics).
    ``everyday`` (a chat round: the user's system prompt, maybe none) adds the everyday questions,
    answered as they will be served: by the adapter the ones numbered ``answers`` (None: all), the
    others by the baseline (an adapter with a scope, ``chatlm.adapters.scope``)."""
    model.eval()
    with using(model, trained):
        new = score(model, tokenizer, heldout)
        mine = everyday_right(model, tokenizer, everyday, answers) if everyday is not None else []
    with using(model, baseline):
        old = score(model, tokenizer, heldout)
        if everyday is not None:
            theirs = everyday_right(model, tokenizer, everyday)
            served = list(theirs)
            for i, right in zip(range(len(theirs)) if answers is None else answers, mine, strict=True):
                served[i] = right
            old["everyday_right"] = round(sum(theirs) / len(theirs), 4)
            new["everyday_right"] = round(sum(served) / len(served), 4)
    key = target_of(method, new)
    out: dict[str, Any] = {
        "method": method, "target": key, "lower_is_better": key in LOWER_IS_BETTER,
        "baseline_name": baseline_name,
        "heldout": {"pairs": len(heldout.pairs), "rated": len(heldout.rated), "liked": len(heldout.liked),
                    "texts": len(heldout.texts)},
        "adapter": new, "baseline": old,
    }
    if corrections or liked:
        fixed = learnt(model, tokenizer, corrections, (trained, baseline))
        kept = learnt(model, tokenizer, liked, (trained,))
        out["learnt"] = {"corrections": min(len(corrections), LEARNT_LIMIT), "adapter": fixed[trained],
                         "baseline": fixed[baseline], "liked": min(len(liked), LEARNT_LIMIT),
                         "liked_kept": kept[trained]}
    return out
