"""The TRL trainer of a round: LoRA on every linear layer, one config shape for SFT, KTO and DPO (and
SFT's language-modelling form for a document round: the loss on every token of the text).

TRL (and accelerate under it) picks the device: the same command trains on a GPU in bf16 when one
is present and on the CPU in fp32 otherwise. Gradient checkpointing is off: the models we train are
small, and recomputing activations would cost a third of the time for memory we do not need.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from chatlm.training.data import RoundData

LEARNING_RATES = {"sft": 2e-4, "kto": 1e-4, "dpo": 1e-4, "document": 2e-4, "reader": 2e-4}
"""LoRA learning rates: ~10x what full fine-tuning uses, as LoRA updates are low-rank."""
CORRECTIONS_LR = 1e-3
"""An SFT round on written corrections. In ``bench/corrections.py``, at 2e-4 a chat round's 40 steps
taught none of 20 corrections (their style, not their facts), at 1e-3 all 20; a knowledge round
(from the reader) answered 18 of 50 corrected questions as corrected at 1e-3 against 10-12 at 2e-4.
What it costs elsewhere is kept from users by serving such a round only to what it was taught
(``chatlm.adapters.scope``)."""
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
"""No LoRA dropout: it copies every layer input (a fifth more memory and time on a CPU)."""
BATCH_SIZE = 4
SMALL_DATA = 50
"""A round makes 3 passes over fewer records than this, 1 from here on (SFT: ``MIN_STEPS``)."""
MIN_STEPS = 40
"""An SFT round on ratings makes at least this many optimiser steps (passes over the data up to
``MAX_EPOCHS``; 1 pass from 160 records): a user's handful of corrections must be learnt
(``bench/corrections.py``). One pass over many ratings already moves an adapter (one pass over
83 DPO pairs took the held-out ranking of liked over disliked answers from 0.59 to 0.97)."""
MAX_EPOCHS = 20


def default_epochs(method: str, records: int) -> int:
    """Passes over the training records when the admin does not say."""
    if method == "sft":
        return max(1, min(MAX_EPOCHS, math.ceil(MIN_STEPS * BATCH_SIZE / max(records, 1))))
    return 3 if records < SMALL_DATA else 1
MICRO_BATCH = 2
"""Examples per forward pass; the batch is reached by gradient accumulation, which halves the
activation memory of a step (preference pairs with knowledge passages are long)."""
MAX_LENGTH = 1024
BETA = 0.1
LOSS_HISTORY = 1000

Progress = Callable[[dict[str, Any]], None]


def corrections_round(round_data: RoundData) -> bool:
    """SFT on ratings with written corrections: it trains at ``CORRECTIONS_LR``."""
    return round_data.method == "sft" and bool(round_data.corrections)


def hyperparams(round_data: RoundData, params: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides the weights, stored with the adapter."""
    method = round_data.method
    lr = CORRECTIONS_LR if corrections_round(round_data) else LEARNING_RATES[method]
    def given(key: str, default: Any) -> Any:
        return default if params.get(key) is None else params[key]

    hp: dict[str, Any] = {
        "method": method,
        "epochs": float(given("epochs", default_epochs(method, len(round_data.train)))),
        "learning_rate": float(given("lr", lr)),
        "max_steps": None if params.get("max_steps") is None else int(params["max_steps"]),
        "batch_size": int(params.get("batch_size") or BATCH_SIZE), "max_length": MAX_LENGTH,
        "seed": int(params.get("seed") or 42), "lora": dict(LORA), "train_records": len(round_data.train),
    }
    # a reader record, and a rated answer about a text, quotes three passages (~750 tokens): one a
    # pass keeps a round within 4 GB (two a pass took a knowledge round to 4.8 GB)
    hp["micro_batch"] = min(1 if method == "reader" or round_data.knowledge else MICRO_BATCH,
                            hp["batch_size"])
    hp["batch_size"] -= hp["batch_size"] % hp["micro_batch"]
    if method in ("dpo", "kto"):
        hp["beta"] = BETA
    if round_data.kto_weights:
        hp["desirable_weight"], hp["undesirable_weight"] = round_data.kto_weights
    if round_data.source and "window" in round_data.source:
        hp["window"] = round_data.source["window"]
    if (hp["learning_rate"] <= 0 or hp["epochs"] <= 0 or hp["batch_size"] < 1
            or (hp["max_steps"] is not None and hp["max_steps"] < 1)):
        raise ValueError(f"Invalid training parameters: {params}")
    return hp


def peft_model(model: Any, parent_path: str | None) -> Any:
    """A fresh LoRA on the base model, or the parent adapter made trainable to continue from it."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if parent_path:
        return PeftModel.from_pretrained(model, parent_path, adapter_name="default", is_trainable=True)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))


def _progress_callback(report: Progress, tokens_per_example: float) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Writes step, loss history, tokens/s and time left to the run row at each log."""

        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.losses: list[list[float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()
            report({"phase": "training", "step": 0, "total_steps": state.max_steps, "loss": []})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                self.losses = [*self.losses, [state.global_step, round(float(logs["loss"]), 5)]][-LOSS_HISTORY:]
            elapsed = time.perf_counter() - self.started
            step, total = state.global_step, state.max_steps
            tokens = state.num_input_tokens_seen or step * args.train_batch_size * tokens_per_example
            report({"phase": "training", "step": step, "total_steps": total, "epoch": state.epoch,
                    "loss": self.losses, "elapsed_s": round(elapsed, 1),
                    "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                    "seconds_left": round(elapsed / step * (total - step), 1) if step else None})

    return ProgressCallback()


def _grouped(trainer_cls: type) -> type:
    """The trainer with length-grouped batches computed from its tokenised columns (TRL's preference
    datasets have no ``input_ids`` column, so the stock sampler cannot find the lengths)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class Grouped(trainer_cls):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            ds = self.train_dataset
            cols = [c for c in ds.column_names if c == "input_ids" or c.endswith("_ids")]
            lengths = [sum(len(x) for x in row) for row in zip(*(ds[c] for c in cols), strict=True)]
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=lengths)

    Grouped.__name__ = f"Grouped{trainer_cls.__name__}"
    return Grouped


def score_completions_only_on_cpu() -> bool:
    """TRL's fused LM head projects only the tokens that carry a label on CUDA/XPU, but every token
    elsewhere (so that compiled backends such as Neuron see fixed shapes). A CPU compiles nothing, and
    the prompt is most of a rated turn's tokens (a knowledge question quotes its passages), so let it
    project the completion tokens only: the same loss, a fifth less time and a quarter less memory
    in ``bench/train.py``. Returns whether the patch is in place (a TRL without the hook is left be)."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if not getattr(original, "chatlm_cpu", False):
        def compact(device: Any) -> bool:
            return bool(original(device)) or device.type == "cpu"

        compact.chatlm_cpu = True  # type: ignore[attr-defined]
        compact.original = original  # type: ignore[attr-defined]
        trl_utils._use_triton = compact
    return True


def make_trainer(model: Any, tokenizer: Any, round_data: RoundData, hp: dict[str, Any], *,
                 output_dir: str, device: str, report: Progress) -> Any:
    """The SFT/KTO/DPO (or document) trainer over ``model`` (already a PeftModel), reporting progress."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    score_completions_only_on_cpu()
    method = round_data.method
    common: dict[str, Any] = {
        "output_dir": output_dir, "per_device_train_batch_size": hp["micro_batch"],
        "gradient_accumulation_steps": hp["batch_size"] // hp["micro_batch"],
        "num_train_epochs": hp["epochs"], "max_steps": hp["max_steps"] or -1,
        "learning_rate": hp["learning_rate"], "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "gradient_checkpointing": False, "bf16": device == "cuda",
        "use_cpu": device == "cpu", "seed": hp["seed"], "data_seed": hp["seed"], "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding", "max_length": hp["max_length"],
        "dataloader_pin_memory": device == "cuda",
    }
    dataset = Dataset.from_list(round_data.train)
    if method in ("sft", "reader"):  # a reader round is SFT on SQuAD records (chatlm.training.reader)
        config: Any = SFTConfig(**common, train_sampling_strategy="group_by_length")
        trainer_cls: type = SFTTrainer
    elif method == "document":  # a "text" column: TRL's language modelling, every token in the loss
        config = SFTConfig(**common, dataset_text_field="text", completion_only_loss=False, packing=False)
        trainer_cls = SFTTrainer
    elif method == "dpo":
        config = DPOConfig(**common, beta=hp["beta"], train_sampling_strategy="group_by_length")
        trainer_cls = DPOTrainer
    else:  # KTO's KL estimate pairs neighbours in a fixed order: sequential batches only
        config = KTOConfig(**common, beta=hp["beta"], desirable_weight=hp["desirable_weight"],
                           undesirable_weight=hp["undesirable_weight"])
        trainer_cls = KTOTrainer
    chars = sum(len(str(r)) for r in round_data.train) / max(len(round_data.train), 1)
    callback = _progress_callback(report, tokens_per_example=chars / 4)
    return _grouped(trainer_cls)(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                 callbacks=[callback])
