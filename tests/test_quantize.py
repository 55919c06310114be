"""int8 serving weights: greedy answers agree with full precision, a row's answer does not depend on
its batch mates, LoRA adapters still apply per row, and the calibration is measured once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from chatlm.config import Settings
from chatlm.engine import loader, quantize
from chatlm.engine.local import LocalBackend
from chatlm.engine.params import SamplingParams
from chatlm.errors import ConfigError
from tests.test_adapters import make_adapter

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)
PROMPTS = ["Say something", "What is the capital of France?", "Count to five.", "Tell me a story",
           "Hello there", "Why is the sky blue?", "Name a colour", "Give me a number"]


def _quantised(tiny: loader.LoadedModel, tmp_path: Path) -> loader.LoadedModel:
    model = copy.deepcopy(tiny.model)
    assert quantize.apply(model, "int8", tiny.tokenizer, cache_dir=tmp_path, key="tiny") > 0
    return loader.LoadedModel(model=model, tokenizer=tiny.tokenizer, model_id=tiny.model_id, path="",
                              device="cpu")


def _tokens(backend: LocalBackend, prompts: list[str], adapter: str | None = None) -> list[list[int]]:
    gens = [backend.chat([{"role": "user", "content": p}], GREEDY, adapter=adapter) for p in prompts]
    texts = [g.wait() for g in gens]
    return [backend.tokenizer.encode(t, add_special_tokens=False) for t in texts]


def test_greedy_int8_answers_agree_with_full_precision(tiny, tmp_path) -> None:
    full, int8 = LocalBackend(tiny), LocalBackend(_quantised(tiny, tmp_path))
    try:
        a, b = _tokens(full, PROMPTS), _tokens(int8, PROMPTS)
    finally:
        full.close()
        int8.close()
    first = sum(x[:1] == y[:1] for x, y in zip(a, b, strict=True))
    agreeing = sum(next((i for i, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), min(len(x), len(y)))
                   for x, y in zip(a, b, strict=True))
    total = sum(len(x) for x in a)
    assert first >= len(PROMPTS) - 1, (a, b)
    # a random 32-wide model has near-tied logits, so greedy paths part sooner than a real model's
    # (93 of 134 tokens here; the bundled model's perplexity is measured in bench/serve.py)
    assert agreeing >= 0.6 * total, f"{agreeing}/{total} tokens agree before the first difference"


def test_an_int8_row_answers_the_same_alone_and_in_a_full_batch(tiny, tmp_path) -> None:
    """Activations are quantised per token: batch mates never change a row's scale."""
    backend = LocalBackend(_quantised(tiny, tmp_path))
    try:
        alone = [_tokens(backend, [p])[0] for p in PROMPTS[:3]]
        together = _tokens(backend, PROMPTS)[:3]
    finally:
        backend.close()
    assert alone == together


def test_lora_adapters_apply_per_row_on_int8_weights(tiny, tmp_path) -> None:
    path = make_adapter(tiny.model, tmp_path / "lora", seed=3)
    backend = LocalBackend(_quantised(tiny, tmp_path))
    try:
        base = _tokens(backend, PROMPTS[:2])
        backend.load_adapter("tuned", path)
        gens = [backend.chat([{"role": "user", "content": p}], GREEDY, adapter=a)
                for p in PROMPTS[:2] for a in (None, "tuned")]
        texts = [g.wait() for g in gens]
    finally:
        backend.close()
    mixed = [backend.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert [mixed[0], mixed[2]] == base  # base rows in a batch with adapter rows are untouched
    assert mixed[1] != base[0] and mixed[3] != base[1]  # the adapter changes its rows


def test_calibration_is_measured_once_and_kept(tiny, tmp_path, monkeypatch) -> None:
    _quantised(tiny, tmp_path)
    assert len(list(tmp_path.glob("int8-*.safetensors"))) == 1

    def measured_again(*_a: object) -> None:
        raise AssertionError("the calibration ran again")

    monkeypatch.setattr(quantize, "measure_inputs", measured_again)
    _quantised(tiny, tmp_path)


def test_the_setting_means_int8_on_cpu_and_is_checked() -> None:
    # int8 changes answers users see: opt-in only; fp16 keeps them, and is the default where it runs
    assert quantize.resolve("auto", "cpu") == ("fp16" if quantize.fp16_available() else "none")
    assert quantize.resolve("int8", "cpu") == "int8"
    assert quantize.resolve("auto", "cuda") == "none"
    assert quantize.resolve("none", "cpu") == "none"
    with pytest.raises(ConfigError, match="CPU only"):
        quantize.resolve("int8", "cuda")
    with pytest.raises(ConfigError, match="CHATLM_QUANTIZE"):
        Settings.from_env({"CHATLM_QUANTIZE": "int4"})


def test_int8_weights_take_a_quarter_of_the_memory(tiny, tmp_path) -> None:
    def weight_bytes(model: torch.nn.Module) -> int:
        return sum(t.untyped_storage().nbytes() for m in model.modules() if type(m) in (torch.nn.Linear,
                   quantize.Int8Linear) for t in m.buffers() if t is not None and t.dtype == torch.int8) + \
            sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)

    before, after = weight_bytes(tiny.model), weight_bytes(_quantised(tiny, tmp_path).model)
    assert after <= 0.3 * before


@pytest.mark.parametrize("layout", ["untied", "tied", "head-only"])
def test_a_start_from_the_int8_cache_answers_as_the_start_that_built_it(tiny, tmp_path, monkeypatch,
                                                                         layout) -> None:
    """A second start builds the int8 model from the kept int8 tensors and reads only the float
    tensors left (never the float weights of the quantised layers, never the calibration), and its
    greedy answers are the first start's, token for token. ``head-only`` is the GGUF cache's
    layout: tied embeddings stored once under ``lm_head.weight`` (safetensors' ``save_model``)."""
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(**{**tiny.model.config.to_dict(), "tie_word_embeddings": layout != "untied"})
    model_dir = tmp_path / "model"
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(model_dir)
    if layout == "head-only":
        save_model(model, str(model_dir / "model.safetensors"))
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            stored = set(f.keys())
        assert "lm_head.weight" in stored and "model.embed_tokens.weight" not in stored
    tiny.tokenizer.save_pretrained(model_dir)
    settings = Settings.from_env({}, model=str(model_dir), data_dir=tmp_path / "data", quantize="int8",
                                 device="cpu")

    def answers() -> list[list[int]]:
        backend = LocalBackend.from_settings(settings)
        try:
            assert isinstance(backend.loaded.model.lm_head, quantize.Int8Linear)
            return _tokens(backend, PROMPTS)
        finally:
            backend.close()

    built = answers()
    assert len(list((tmp_path / "data" / "models").glob("int8-*.safetensors"))) == 1

    def not_again(*_a: object, **_k: object) -> None:
        raise AssertionError("a start from the int8 cache loaded the float model or calibrated")

    monkeypatch.setattr(quantize, "measure_inputs", not_again)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", not_again)
    assert answers() == built


@pytest.mark.skipif(not quantize.fp16_available(), reason="fbgemm's half-precision GEMM needs an x86 CPU")
def test_fp16_weights_answer_as_full_precision_and_take_adapters_per_row(tiny, tmp_path) -> None:
    """``CHATLM_QUANTIZE=fp16``: only the weights are rounded (to float16), the arithmetic stays
    float32, so greedy answers are full precision's; a LoRA adapter still applies to its rows only."""
    model = copy.deepcopy(tiny.model)
    assert quantize.apply(model, "fp16", tiny.tokenizer) > 0
    assert any(isinstance(m, quantize.F16Linear) for m in model.modules())
    half = loader.LoadedModel(model=model, tokenizer=tiny.tokenizer, model_id=tiny.model_id, path="",
                              device="cpu")
    full, fp16 = LocalBackend(tiny), LocalBackend(half)
    try:
        a, b = _tokens(full, PROMPTS), _tokens(fp16, PROMPTS)
        fp16.load_adapter("tuned", make_adapter(tiny.model, tmp_path / "lora", seed=3))
        gens = [fp16.chat([{"role": "user", "content": p}], GREEDY, adapter=x)
                for p in PROMPTS[:2] for x in (None, "tuned")]
        mixed = [fp16.tokenizer.encode(g.wait(), add_special_tokens=False) for g in gens]
    finally:
        full.close()
        fp16.close()
    assert sum(x == y for x, y in zip(a, b, strict=True)) >= len(PROMPTS) - 1, (a, b)
    assert [mixed[0], mixed[2]] == b[:2] and mixed[1] != b[0] and mixed[3] != b[1]
    assert quantize.resolve("fp16", "cpu") == "fp16"
    with pytest.raises(ConfigError, match="CPU only"):
        quantize.resolve("fp16", "cuda")
    assert Settings.from_env({"CHATLM_QUANTIZE": "fp16"}).quantize == "fp16"


@pytest.mark.skipif(not quantize.fp16_available(), reason="fbgemm's half-precision GEMM needs an x86 CPU")
@pytest.mark.parametrize("layout", ["tied", "head-only"])
def test_an_fp16_start_reads_each_layer_alone_and_answers_as_packing_the_float_model(
        tiny, tmp_path, monkeypatch, layout) -> None:
    """A start with ``fp16`` packs each linear layer from its own float32 tensor in the checkpoint
    (never the whole float model beside the packed one), and answers as packing a loaded float
    model does, token for token."""
    import transformers
    from safetensors.torch import save_model

    model_dir = tmp_path / "model"
    tiny.model.save_pretrained(model_dir)
    if layout == "head-only":  # the GGUF cache's layout: the tied matrix stored once, as the head
        save_model(tiny.model, str(model_dir / "model.safetensors"))
    tiny.tokenizer.save_pretrained(model_dir)
    packed_in_memory = copy.deepcopy(tiny.model)
    quantize.apply(packed_in_memory, "fp16", tiny.tokenizer)
    reference = LocalBackend(loader.LoadedModel(model=packed_in_memory, tokenizer=tiny.tokenizer,
                                                model_id="tiny", path="", device="cpu"))
    try:
        want = _tokens(reference, PROMPTS)
    finally:
        reference.close()

    def not_called(*_a: object, **_k: object) -> None:
        raise AssertionError("an fp16 start loaded the whole float model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", not_called)
    settings = Settings.from_env({}, model=str(model_dir), data_dir=tmp_path / "data", quantize="fp16",
                                 device="cpu")
    backend = LocalBackend.from_settings(settings)
    try:
        assert isinstance(backend.loaded.model.lm_head, quantize.F16Linear)
        assert _tokens(backend, PROMPTS) == want
    finally:
        backend.close()
