"""Per-row sampling over a batch of logits: each row keeps its own temperature, top-p, top-k, seed."""

from __future__ import annotations

import torch

from chatlm.engine.params import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.seed is None:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(params.seed))
    return gen


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """Pick one token per row; greedy rows are argmaxed together, sampled rows one by one."""
    logits = logits.float()
    out = logits.argmax(dim=-1).tolist()
    for row, p in enumerate(params):
        if p.temperature <= 0:
            continue
        scores = logits[row] / p.temperature
        if p.top_k > 0 and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cum = sorted_scores.softmax(-1).cumsum(-1)
            drop = cum - sorted_scores.softmax(-1) > p.top_p
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
        probs = scores.softmax(-1).cpu()
        out[row] = int(torch.multinomial(probs, 1, generator=generators[row]).item())
    return out
