"""Fewer weight bytes or faster matrix products for serving on a CPU, and what each does to answers
(issue 27). Two parts, one JSON:

- ``kernels``: torch's weight-only kernels on the bundled model's four linear shapes, against
  fbgemm's fp16 GEMM (``CHATLM_QUANTIZE=fp16``, the CPU default): the relative error of one output
  against float32 arithmetic, and microseconds a call for one row and for eight. The weights are
  made like the bundled GGUF's Q4_1 blocks (32 weights sharing a scale and a minimum), which
  torch's int4 layout holds exactly; int8 weight-only rounds them per output channel.
- ``answers``: every linear layer's product in bfloat16 (AMX; weights kept once in bfloat16, the rest
  of the model in float32), either in every step or in the prefill only, against full precision:
  greedy answers identical on ``bench/answers.py``'s 50 chat prompts and 50 shared questions,
  the Paris case, and in-process times of a prefill and a decoding step.

Run from the repository root (about 12 minutes on two idle cores):
``.venv/bin/python bench/precision.py --json bench/out/precision.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from answers import CHAT, PARIS, SYSTEM, reference, shared_questions  # noqa: E402

from chatlm.engine import loader  # noqa: E402
from chatlm.torch_threads import use_all_cores  # noqa: E402

SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536))
"""(out, in) of q/o, k/v, gate/up and down in SmolLM2-135M."""
GROUP = 32


def timed(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - start) / repeat * 1e6, 1)


def q4_1_weight(out_f: int, in_f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes 0..15, per-block scales, per-block minima, the float32 weight they make)."""
    codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.int32)
    scale = (torch.rand(out_f, in_f // GROUP) * 0.01).half().float()
    low = (-torch.rand(out_f, in_f // GROUP) * 0.05).half().float()
    weight = codes.float() * scale.repeat_interleave(GROUP, 1) + low.repeat_interleave(GROUP, 1)
    return codes, scale, low, weight


def kernel_rows(out_f: int, in_f: int) -> list[dict[str, Any]]:
    """Each way's error and speed on one (out, in) shape."""
    codes, scale, low, weight = q4_1_weight(out_f, in_f)
    fp16 = torch.ops.quantized.linear_prepack_fp16(weight, None)
    int4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scale_zero = torch.stack([scale.t(), (low + 8 * scale).t()], -1).contiguous()  # (q - 8)·s + z
    per_channel = weight.abs().amax(1) / 127
    int8 = (weight / per_channel[:, None]).round().clamp(-127, 127).to(torch.int8)

    def int4_mm(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dtype), int4, GROUP, scale_zero.to(dtype))

    def int8_mm(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.to(dtype), int8, per_channel.to(dtype))

    ways: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "fbgemm fp16 weights, float32 arithmetic": lambda x: torch.ops.quantized.linear_dynamic_fp16(x, fp16),
        "int4 weights (exact), float16 activations": lambda x: int4_mm(x, torch.float16),
        "int4 weights (exact), bfloat16 activations": lambda x: int4_mm(x, torch.bfloat16),
        "int8 weights per channel, float32 activations": lambda x: int8_mm(x, torch.float32),
        "int8 weights per channel, bfloat16 activations": lambda x: int8_mm(x, torch.bfloat16),
    }
    one, eight = torch.randn(1, in_f), torch.randn(8, in_f)
    want = nn.functional.linear(one, weight)
    rows = []
    for name, way in ways.items():
        error = float((way(one).float() - want).abs().max() / want.abs().max())
        rows.append({"shape": [out_f, in_f], "way": name, "relative_error": float(f"{error:.2e}"),
                     "us_1_row": timed(lambda w=way: w(one), 100), "us_8_rows": timed(lambda w=way: w(eight), 30)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def kernels() -> list[dict[str, Any]]:
    return [row for out_f, in_f in SHAPES for row in kernel_rows(out_f, in_f)]


class BF16Product(nn.Module):
    """A linear layer whose product runs in bfloat16 (weights kept in bfloat16; ``prefill_only``:
    single-token steps keep the float32 weight)."""

    prefill_only = False

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.half = linear.weight.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prefill_only and x.shape[-2] == 1:
            return nn.functional.linear(x, self.weight, self.bias)
        out = nn.functional.linear(x.to(torch.bfloat16), self.half).to(x.dtype)
        return out if self.bias is None else out + self.bias


def step_times(model: Any) -> dict[str, float]:
    """Milliseconds of a prefill (1 x 26, 8 x 29 tokens) and a decoding step (1 and 8 rows, 180 cached)."""
    out: dict[str, float] = {}
    with torch.inference_mode():
        for rows, cols in ((1, 26), (8, 29)):
            ids = torch.randint(200, 30000, (rows, cols))
            micros = timed(lambda i=ids: model(input_ids=i, logits_to_keep=1), 3)
            out[f"prefill_{rows}x{cols}_ms"] = round(micros / 1000, 1)
        for rows in (1, 8):
            cache = model(input_ids=torch.randint(200, 30000, (rows, 180)), use_cache=True).cache
            token = torch.randint(200, 30000, (rows, 1))
            start = time.perf_counter()
            for _ in range(10):
                cache = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1).cache
            out[f"step_{rows}_rows_ms"] = round((time.perf_counter() - start) / 10 * 1000, 1)
    return out


def answers(n: int, max_tokens: int) -> dict[str, Any]:
    full = loader.load("bundled", Path(tempfile.mkdtemp(prefix="chatlm-precision-")), "cpu", quantize="none")
    sets = {"chat": [[{"role": "user", "content": q}] for q in CHAT[:n]],
            "shared_questions": [[{"role": "user", "content": q}] for q in
                                 shared_questions(ROOT.parent / "shared" / "data" / "squad2-dev-sample.json", n)],
            "paris": [[{"role": "user", "content": PARIS}],
                      [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PARIS}]]}
    result: dict[str, Any] = {"full_precision": step_times(full.model)}
    want = {name: reference(full, convs, max_tokens) for name, convs in sets.items()}
    names = [n for n, m in full.model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]
    for name in names:
        full.model.set_submodule(name, BF16Product(full.model.get_submodule(name)))
    for mode, prefill_only in (("bf16_products", False), ("bf16_prefill_only", True)):
        BF16Product.prefill_only = prefill_only
        row: dict[str, Any] = step_times(full.model)
        for name, convs in sets.items():
            got = reference(full, convs, max_tokens)
            row[name] = {"identical": sum(a == b for a, b in zip(got, want[name], strict=True)), "of": len(convs)}
            if name == "paris":
                row[name]["answers"] = got
        result[mode] = row
        print(mode, json.dumps(row), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    use_all_cores()
    torch.manual_seed(0)
    result = {"kernels": kernels(), "answers": answers(args.n, args.max_tokens)}
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
