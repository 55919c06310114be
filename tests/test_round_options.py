"""What a round is asked to do is checked once, before anything starts, in the product's words."""

from __future__ import annotations

import dataclasses

import pytest

from chatlm.errors import InputError
from chatlm.training.options import WINDOW, RoundOptions


@pytest.mark.parametrize(("asked", "said"), [
    ({"method": "magic"}, "The training method must be one of auto, sft"),
    ({"epochs": 0}, "The passes over the data (epochs) must be more than 0."),
    ({"lr": 1.5}, "The learning rate must be between 0 and 1."),
    ({"max_steps": 0}, "Max steps must be a whole number of at least 1."),
    ({"batch_size": 2.5}, "Batch size must be a whole number of at least 1."),
    ({"squad": "/no/such/file.json"}, "No SQuAD file at /no/such/file.json."),
    ({"method": "reader"}, "A reader round needs a SQuAD training file"),
    ({"reader_data": "x.json"}, "is for a reader round"),
    ({"method": "document"}, "A document round needs one text"),
    ({"method": "document", "document": 1, "window": 4}, "The window must be between 8 and 512 tokens."),
    ({"method": "sft", "document": 1}, "is for a document round"),
])
def test_a_round_asked_wrongly_is_refused_whole_with_a_reason(asked: dict, said: str) -> None:
    with pytest.raises(InputError) as refused:
        RoundOptions(**asked)
    assert said in refused.value.message and "--" not in refused.value.message  # no command-line flags


def test_the_run_row_gets_absolute_files_and_the_methods_own_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a text")
    (tmp_path / "train.json").write_text("{}")
    document = RoundOptions("document", text="notes.txt", max_steps=3).params()
    assert document == {"text": str(tmp_path / "notes.txt"), "window": WINDOW, "max_steps": 3,
                        "from_active": False, "guests": False, "reader_skip": 0}
    reader = RoundOptions("reader", reader_data="train.json").params()
    assert reader["reader_data"] == str(tmp_path / "train.json") and reader["prefix"] == "reader"
    asked = RoundOptions("dpo", lr=1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        asked.lr = 0.5  # type: ignore[misc]
