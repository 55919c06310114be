"""Cheaper weights for serving on the CPU, two ways (``CHATLM_QUANTIZE``):

- ``fp16``: every linear layer keeps its weights in half precision and multiplies them in float32
  (fbgemm's half-precision GEMM, ``F16Linear``). Only the weights are rounded, and the bundled GGUF's
  4-bit blocks survive that almost exactly: greedy answers equal full precision's on 49 of 50 chat
  prompts and 49 of 50 shared questions (``bench/answers.py``), and a step for eight chats is about
  a third shorter.
- ``int8``: every linear layer (the output head included) multiplies int8 weights by int8
  activations (``torch._int_mm``) and rescales to float. It changes most greedy answers.

The rest of this docstring is int8's.

Decoding on a CPU is bound by memory bandwidth: each step reads every weight once, and int8 weights
are a quarter of fp32. What keeps a 135M model's answers intact (measured in ``bench/serve.py``):

- activations are quantised per token (one scale per row), never per batch, so a row's answer
  does not depend on which other chats share its batch (per-batch scales, torch's
  ``quantize_dynamic``, raised perplexity by 71 %);
- SmoothQuant's per-channel smoothing (alpha 0.5) moves activation outliers into the weights, with
  input ranges measured once on ``calibration`` text and kept next to the model.

A quantised layer stays an ``nn.Linear``, so LoRA adapters wrap it (``chatlm.engine.lora``) and
apply per row in float on top of the int8 result. Training rounds never use this: they load their own fp32 model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chatlm.errors import ConfigError

log = logging.getLogger(__name__)
ALPHA = 0.5
"""SmoothQuant's migration strength: 0.5 measured best of 0.5 and 0.8 (perplexity +1.2 % vs +3.2 %)."""


class Int8Linear(nn.Linear):
    """A linear layer whose weight lives only as int8 with one scale per output channel; the input
    is smoothed, quantised per row, multiplied in int8 and rescaled to float."""

    def __init__(self, in_features: int, out_features: int, tensors: dict[str, torch.Tensor]) -> None:
        nn.Module.__init__(self)  # no float weight is allocated
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight_t", tensors["qweight_t"])
        self.register_buffer("scale", tensors["scale"])
        self.register_buffer("inv_smooth", tensors.get("inv_smooth"))
        self.register_buffer("qbias", tensors.get("qbias"))
        # LoRA loading and transformers read ``weight`` for its shape, device and dtype only: a one-byte int8
        # tensor broadcast to the shape (an int dtype, so the adapters stay in float)
        self.register_buffer("weight", torch.zeros((), dtype=torch.int8).expand(out_features, in_features),
                             persistent=False)
        self.bias = None

    @staticmethod
    def quantise(linear: nn.Linear, input_max: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The int8 tensors of a float layer, smoothed by its measured input range when given."""
        weight = linear.weight.detach().float()
        out: dict[str, torch.Tensor] = {}
        if input_max is not None:  # x @ W.T == (x / s) @ (W * s).T
            weight_max = weight.abs().amax(dim=0).clamp(min=1e-5)
            smooth = (input_max.float().clamp(min=1e-5) ** ALPHA / weight_max ** (1 - ALPHA)).clamp(min=1e-5)
            weight = weight * smooth
            out["inv_smooth"] = 1.0 / smooth
        scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        out["qweight_t"] = (weight / scale[:, None]).round().to(torch.int8).t().contiguous()
        out["scale"] = scale
        if linear.bias is not None:
            out["qbias"] = linear.bias.detach().float().clone()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        if self.inv_smooth is not None:
            rows = rows * self.inv_smooth
        row_scale = (rows.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
        out = torch._int_mm((rows / row_scale).round_().to(torch.int8), self.qweight_t)
        out = out.float().mul_(row_scale).mul_(self.scale)
        if self.qbias is not None:
            out += self.qbias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class F16Linear(nn.Linear):
    """A linear layer whose weight lives only as float16, packed for fbgemm's half-precision GEMM:
    the input, the arithmetic and the output stay float32, so only the weights are rounded (to
    11 bits, from the bundled GGUF's 4-bit blocks, which the rounding barely moves), where int8
    rounded every token's activations too. fbgemm's kernel for it served eight chats a third faster
    (``bench/serve.py``); its packed form holds about 3.4 bytes a weight, so memory barely changes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        nn.Module.__init__(self)  # no float32 weight is kept
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.quantized.linear_prepack_fp16(
            weight.detach().float(), None if bias is None else bias.detach().float())
        # LoRA loading and transformers read ``weight`` for its shape, device and dtype only: the
        # compute dtype, broadcast from one value
        self.register_buffer("weight", torch.zeros(()).expand(self.out_features, self.in_features),
                             persistent=False)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, self.in_features).float(), self.packed)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights"


def fp16_available() -> bool:
    """Whether this torch build has fbgemm's half-precision GEMM (x86 CPUs with AVX2)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized,
                                                                              "linear_prepack_fp16")


def resolve(mode: str, device: str) -> str:
    """What ``CHATLM_QUANTIZE`` means on this device. ``auto`` is fp16 on an x86 CPU and full
    precision elsewhere: fp16 keeps what users read (greedy answers equal full precision's on 49 of
    50 chat prompts and 49 of 50 shared questions, Paris both ways, QA F1 30.4 either way) and
    serves eight chats about a third faster (``bench/answers.py``, ``bench/serve.py``); ``chatlm
    ask`` asks for ``none`` itself (one answer: packing would cost it more than it saves). int8
    changed the greedy answer to all 50 shared questions and 46 of 50 chat prompts: an opt-in."""
    if mode == "auto":
        return "fp16" if device == "cpu" and fp16_available() else "none"
    if mode in ("int8", "fp16") and device != "cpu":
        raise ConfigError(f"CHATLM_QUANTIZE={mode} runs on the CPU only; use none with CUDA")
    if mode == "fp16" and not fp16_available():
        raise ConfigError("CHATLM_QUANTIZE=fp16 needs torch's fbgemm kernels (an x86 CPU); use none")
    return mode


def _targets(model: Any) -> list[str]:
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and module.in_features >= 16]


def measure_inputs(model: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    """Each target layer's largest input magnitude per channel over the calibration text."""
    from chatlm.engine import calibration

    targets = set(_targets(model))
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in targets:
            def record(_m: Any, args: tuple[torch.Tensor, ...], _out: Any, name: str = name) -> None:
                peak = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
                seen[name] = torch.maximum(seen[name], peak) if name in seen else peak
            hooks.append(module.register_forward_hook(record))
    chat = tokenizer.apply_chat_template(calibration.CHAT, tokenize=True, return_dict=False)
    prose = tokenizer.encode(calibration.PROSE, add_special_tokens=False)
    try:
        with torch.inference_mode():
            for ids in (list(chat), prose):
                model(input_ids=torch.tensor([ids], device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return {k: v.cpu() for k, v in seen.items()}


def cache_file(cache_dir: Path, key: str) -> Path:
    """Where the int8 tensors of the model named by ``key`` are kept."""
    return cache_dir / f"int8-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def _read_cache(model: Any, path: Path) -> dict[str, torch.Tensor] | None:
    """The kept int8 tensors when ``path`` holds them for every target layer of ``model``."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        kept = load_file(str(path))
        if all(tuple(kept[f"{name}/qweight_t"].shape) == (m.in_features, m.out_features)
               for name in _targets(model) if (m := model.get_submodule(name)) is not None):
            return kept
        log.warning("%s is for another model: quantising again", path)
    except (OSError, ValueError, KeyError):
        log.warning("unreadable %s: quantising again", path)
    return None


def _int8_tensors(model: Any, tokenizer: Any, cache_dir: Path | None, key: str) -> dict[str, torch.Tensor]:
    """Every target layer's int8 tensors (``<layer>/<tensor>``), made once per model and kept in
    ``cache_dir``: a later start reads them and never touches the float weights of those layers
    (they stay unread in the mmapped checkpoint), so it neither pays the calibration nor holds the
    float and int8 copies at once (1 GB more at the peak of a first start)."""
    from safetensors.torch import save_file

    path = None
    if cache_dir is not None:
        path = cache_file(cache_dir, key)
        if (kept := _read_cache(model, path)) is not None:
            return kept
    ranges = measure_inputs(model, tokenizer)
    tensors: dict[str, torch.Tensor] = {}
    for name in _targets(model):
        for part, value in Int8Linear.quantise(model.get_submodule(name), ranges.get(name)).items():
            tensors[f"{name}/{part}"] = value
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        save_file(tensors, str(tmp))
        tmp.replace(path)  # atomic: a crash never leaves half a file to load
    return tensors


def _swap_targets(model: Any, make: Callable[[str, nn.Module], nn.Module]) -> int:
    """Replace every target layer by ``make(name, layer)``; return how many. The head then holds
    its own copy, so the model no longer ties it to the embedding."""
    names = _targets(model)
    for name in names:
        model.set_submodule(name, make(name, model.get_submodule(name)))
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return len(names)


def _install(model: Any, tensors: dict[str, torch.Tensor]) -> int:
    """Swap every target layer for an ``Int8Linear`` holding its tensors; return how many."""
    def make(name: str, old: nn.Module) -> nn.Module:
        prefix = f"{name}/"
        mine = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        return Int8Linear(old.in_features, old.out_features, mine)

    return _swap_targets(model, make)


def _install_fp16(model: Any, read: Callable[[str], torch.Tensor] | None = None) -> int:
    """Swap every target layer for an ``F16Linear``; return how many. Its float32 weight comes
    from the layer, or from ``read`` (a checkpoint tensor by name) when the layer was never loaded."""
    def make(name: str, old: nn.Module) -> nn.Module:
        if read is None:
            return F16Linear(old.weight, old.bias)
        return F16Linear(read(f"{name}.weight"), None if old.bias is None else read(f"{name}.bias"))

    return _swap_targets(model, make)


def apply(model: Any, mode: str, tokenizer: Any, *, cache_dir: Path | None = None, key: str = "") -> int:
    """Replace the model's linear layers in place when ``mode`` is int8 or fp16; return how many."""
    if mode == "fp16":
        count = _install_fp16(model)
    elif mode == "int8":
        tensors = _int8_tensors(model, tokenizer, cache_dir, key or str(getattr(model.config, "_name_or_path", "")))
        count = _install(model, tensors)
    else:
        return 0
    for param in model.parameters():  # what is left (the embedding, the norms) may be a view of the
        param.data = param.data.clone()  # mmapped checkpoint, which then stays resident (400 MB here)
    log.info("%s weights: %d linear layers", mode, count)
    return count


def load_cached(path: str, dtype: torch.dtype, cache_dir: Path, key: str) -> Any | None:
    """The int8 model straight from the kept int8 tensors (``None`` when there is no cache for
    ``key``): its linear layers become ``Int8Linear`` with the cached tensors, and their float
    weights are never read, converted or dropped (a second start saves the float load)."""
    kept_at = cache_file(cache_dir, key)
    if not kept_at.is_file():
        return None

    def install(model: Any, _read: Any) -> bool:
        kept = _read_cache(model, kept_at)
        if kept is not None:
            _install(model, kept)
            log.info("int8 weights read from %s", kept_at.name)
        return kept is not None

    return _assembled(path, dtype, install)


def load_fp16(path: str, dtype: torch.dtype) -> Any | None:
    """The fp16 model, each linear layer packed from its float32 weight read alone from the
    checkpoint: loading the whole float model first held 540 MB of float32 beside the packed
    weights (1.4 GB at the peak of a start, against 0.9 GB once started)."""
    def install(model: Any, read: Callable[[str], torch.Tensor]) -> bool:
        _install_fp16(model, read)
        return True

    return _assembled(path, dtype, install)


def _assembled(path: str, dtype: torch.dtype, install: Any) -> Any | None:
    """The model built without initialising its weights, its linear layers swapped by
    ``install(model, read)`` (``read``: a checkpoint tensor by parameter name), and only the float
    tensors left (the embedding, the norms) read from the checkpoint. ``None`` when ``install``
    declines or the checkpoint is not one local safetensors file with every tensor: the caller loads
    in float and calls ``apply``."""
    checkpoint = Path(path) / "model.safetensors"
    if not checkpoint.is_file():
        return None
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(path)
    with no_init_weights():  # parameters are allocated (untouched pages), never initialised
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    partners = {**{source: target for target, source in tied.items()}, **tied}
    with safe_open(str(checkpoint), framework="pt") as f:
        stored = set(f.keys())

    def read(name: str) -> torch.Tensor:
        """One tensor, the file opened for it alone: the pages a mapped file was read through
        count as this process's memory until it is closed (540 MB of float32 here)."""
        key_in_file = name if name in stored else partners.get(name)
        if key_in_file not in stored:
            raise KeyError(name)
        with safe_open(str(checkpoint), framework="pt") as f:
            return f.get_tensor(key_in_file).clone()  # owned, not a view of the file

    try:
        if not install(model, read):
            return None
        for name, param in model.named_parameters():
            value = read(name)
            if tuple(value.shape) != tuple(param.shape):
                log.warning("%s: %s has shape %s, not %s: loading in float", checkpoint, name,
                            tuple(value.shape), tuple(param.shape))
                return None
            param.data = value.to(dtype)
    except KeyError as missing:
        log.warning("%s has no tensor for %s: loading in float", checkpoint, missing)
        return None
    if (Path(path) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()
