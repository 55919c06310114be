"""Dataset builders: invariants under random data (hypothesis) and TRL's own format handling."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chatlm.feedback.records import RatedAnswer, build

texts = st.text(alphabet="abcdefgh é", min_size=1, max_size=12)


@st.composite
def answer_sets(draw) -> list[RatedAnswer]:
    n_turns = draw(st.integers(1, 4))
    answers: list[RatedAnswer] = []
    next_id = 1
    for turn in range(n_turns):
        prompt = (("system", "sys"), ("user", draw(texts)))
        excluded = draw(st.booleans())
        for _ in range(draw(st.integers(1, 4))):
            answers.append(RatedAnswer(
                message_id=next_id, conversation_id=turn, parent_id=100 + turn, prompt=prompt,
                answer=draw(texts), rating=draw(st.sampled_from([1, -1, None])),
                better_answer=draw(st.one_of(st.none(), texts)), excluded=excluded))
            next_id += 1
    return draw(st.permutations(answers))


@settings(max_examples=200, deadline=None)
@given(answer_sets())
def test_invariants(answers: list[RatedAnswer]) -> None:
    excluded_prompts = {a.prompt for a in answers if a.excluded}
    kept_prompts = {a.prompt for a in answers if not a.excluded}
    stored = {tuple((m["role"], m["content"]) for m in a.prompt_messages) for a in answers}
    for fmt in ("sft", "kto", "dpo"):
        records, counts = build(fmt, answers)
        assert counts.records == len(records)
        lines = [json.dumps(r, sort_keys=True) for r in records]
        assert len(lines) == len(set(lines))  # deduplicated
        assert build(fmt, list(reversed(answers)))[0] == records  # deterministic
        for r in records:
            msgs = r["messages"][:-1] if fmt == "sft" else r["prompt"]
            prompt = tuple((m["role"], m["content"]) for m in msgs)
            assert prompt in stored  # the prompt is exactly what was stored
            if prompt in excluded_prompts:
                assert prompt in kept_prompts  # only via a kept conversation with the same prompt
            if fmt == "dpo":
                assert r["chosen"] != r["rejected"]
            if fmt == "kto":
                assert isinstance(r["label"], bool)


def test_expected_records_from_a_small_history() -> None:
    p = (("system", "sys"), ("user", "capital of France?"))
    answers = [
        RatedAnswer(1, 1, 10, p, "Paris", rating=1),
        RatedAnswer(2, 1, 10, p, "Lyon", rating=-1, better_answer="Paris is the capital."),
        RatedAnswer(3, 2, 20, (("user", "secret"),), "x", rating=1, excluded=True),
    ]
    sft, _ = build("sft", answers)
    assert [r["messages"][-1]["content"] for r in sft] == ["Paris", "Paris is the capital."]
    kto, counts = build("kto", answers)
    assert [(r["completion"][0]["content"], r["label"]) for r in kto] == [
        ("Paris", True), ("Lyon", False), ("Paris is the capital.", True)]
    assert (counts.desirable, counts.undesirable) == (2, 1)
    dpo, _ = build("dpo", answers)
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo}
    assert pairs == {("Paris is the capital.", "Lyon"), ("Paris", "Lyon")}


def test_records_pass_trl_format_handling(tmp_path, bundled) -> None:
    from datasets import Dataset
    from trl.data_utils import apply_chat_template, is_conversational

    p = (("system", "sys"), ("user", "capital of France?"))
    answers = [RatedAnswer(1, 1, 10, p, "Paris", rating=1),
               RatedAnswer(2, 1, 10, p, "Lyon", rating=-1, better_answer="Paris.")]
    for fmt in ("sft", "kto", "dpo"):
        records, _ = build(fmt, answers)
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        ds = Dataset.from_json(str(path))
        assert len(ds) == len(records)
        for example in ds:
            assert is_conversational(example)
            rendered = apply_chat_template(example, bundled.tokenizer)
            text = rendered.get("text") or rendered.get("prompt")
            assert "capital of France?" in text
