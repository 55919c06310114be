"""LoRA adapters checked before they are served: safetensors only, a config peft accepts, and every
matrix the shape of the base layer it targets (loading is ``chatlm.engine.lora``'s)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chatlm.errors import AdapterError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_adapter(path: Path, base_model: Any, name: str) -> dict[str, Any]:
    """Refuse what would load wrong or unsafely; return the adapter's config."""
    if not NAME_RE.match(name) or name == "__base__":
        raise AdapterError(f"Invalid adapter name {name!r}: letters, digits, . _ - only")
    check_files(path)
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterError(f"Adapter {path}: {CONFIG} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"Adapter {path}: {CONFIG} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"Adapter {path} is not a LoRA adapter ({config.get('peft_type')})")
    _check_config(path, config)
    _check_shapes(path, base_model)
    return config


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """peft's own checks of the config, and the types it uses without checking, before the model
    is touched: a config that fails half-way through loading would leave layers injected."""
    from peft import LoraConfig

    numbers = {"r": (int,), "lora_alpha": (int, float)}
    for key, kinds in numbers.items():
        value = config.get(key)
        if key in config and (isinstance(value, bool) or not isinstance(value, kinds) or value <= 0):
            raise AdapterError(f"Adapter {path.name}: `{key}` in {CONFIG} must be a positive number")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise AdapterError(f"Adapter {path.name}: `target_modules` in {CONFIG} must be names")
    try:
        LoraConfig.from_pretrained(str(path))
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"Adapter {path.name}: {CONFIG} is not a usable LoRA config ({exc})") from exc


def check_files(path: Path) -> None:
    """An adapter directory holds safetensors weights and its config (what a round must have
    written before it registers an adapter, and what activating one needs)."""
    if not path.is_dir():
        raise AdapterError(f"No adapter directory at {path}")
    if not (path / WEIGHTS).is_file():
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {', '.join(pickled)}: pickle files are refused)" if pickled else ""
        raise AdapterError(f"Adapter {path} has no {WEIGHTS}; adapters load from safetensors "
                             f"only{hint}")
    if not (path / CONFIG).is_file():
        raise AdapterError(f"Adapter {path} is incomplete: {CONFIG} is missing")


def _check_shapes(path: Path, base_model: Any) -> None:
    """Every LoRA matrix must fit the base module it targets: the real test of 'same base'."""
    from safetensors import SafetensorError, safe_open

    modules = dict(base_model.named_modules())
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if ".lora_A." not in key and ".lora_B." not in key:
                    continue
                shape = f.get_slice(key).get_shape()
                target = key.split(".lora_")[0].removeprefix("base_model.model.")
                module = modules.get(target)
                if module is None or not hasattr(module, "in_features"):
                    raise AdapterError(
                        f"Adapter {path.name} was made for another base model: it targets "
                        f"`{target}`, which this model does not have")
                expected = module.in_features if ".lora_A." in key else module.out_features
                got = shape[1] if ".lora_A." in key else shape[0]
                if got != expected:
                    raise AdapterError(
                        f"Adapter {path.name} was made for another base model: `{target}` has "
                        f"{expected} features here, the adapter expects {got}")
    except (OSError, ValueError, SafetensorError) as exc:  # a truncated or garbled file
        raise AdapterError(f"Adapter {path.name}: {WEIGHTS} is not a readable safetensors "
                           f"file ({exc})") from exc


def attach(model: Any, path: Path, name: str) -> Any:
    """The model wrapped by peft with this adapter active (offline measures such as perplexity;
    serving uses ``chatlm.engine.lora``, per row)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), adapter_name=name).eval()
