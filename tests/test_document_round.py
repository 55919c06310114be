"""Learn a document (issue 12): a round trains a LoRA adapter on one text with the causal-LM loss and
lowers the perplexity of the windows of that text it held out; `eval perplexity` measures the same
figure from the shell; a missing or too short text is refused before anything starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from chatlm.compose import sessions_for
from chatlm.config import Settings
from chatlm.errors import InputError
from chatlm.knowledge.chunk import chunk_text
from chatlm.store import db, registry, repo
from chatlm.store import documents as docs
from chatlm.training import document, paths, rounds
from chatlm.training.options import RoundOptions
from tests.conftest import REPO

COLOURS = ("red", "blue", "green", "white")
TEXT = "# Lamps\n\n" + " ".join(f"Lamp {i % 12} in the hall is {COLOURS[i % 4]} and it is on."
                                for i in range(150))
"""A repetitive text: what its held-out windows say, the training windows say too."""
WINDOW = 32


@pytest.fixture
def tiny_settings(tmp_path, tiny_dir) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data", model=str(tiny_dir), device="cpu")


def store(settings: Settings, text: str, name: str = "lamps.md") -> int:
    """A text as the library stores a loaded one (its id is what `train --document` takes)."""
    sessions = sessions_for(settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
        doc = docs.add_document(s, user_id=uid, name=name, mime="text/plain", text=text,
                                chunks=[(c.idx, c.start, c.end, c.text) for c in chunk_text(text)])
        return doc.id


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATLM_DATA_DIR": str(settings.data_dir), "CHATLM_DATABASE_URL": settings.db_url,
           "CHATLM_MODEL": settings.model, "CHATLM_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "chatlm", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_windows_cover_the_text_and_hold_out_every_tenth(tiny, tiny_settings, tmp_path) -> None:
    pieces = document.windows(tiny.tokenizer, TEXT, WINDOW)
    assert "".join(pieces) == TEXT and document.windows(tiny.tokenizer, TEXT, WINDOW) == pieces
    sizes = [len(tiny.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in pieces]
    assert all(abs(n - WINDOW) <= 2 for n in sizes[:-1]) and WINDOW // 2 <= sizes[-1] < 2 * WINDOW, sizes
    train, held = document.split(pieces)
    assert held == pieces[9::10] and len(train) + len(held) == len(pieces)
    assert document.split(pieces[:3]) == (pieces[:2], pieces[2:3])  # fewer than ten: the last one

    # a file read by the app's parser and the same text loaded in a chat give the same round
    md = tmp_path / "lamps.md"
    md.write_text(TEXT.replace("# Lamps", "# **Lamps**"), encoding="utf-8")
    doc_id = store(tiny_settings, document.read_text_file(md))
    with db.transaction(sessions_for(tiny_settings)) as s:
        stored = document.build_round(s, tiny_settings, {"document": doc_id, "window": WINDOW}, tiny.tokenizer)
        from_file = document.build_round(s, tiny_settings, {"text": str(md), "window": WINDOW}, tiny.tokenizer)
        with pytest.raises(InputError, match="changed after the round was started"):
            document.build_round(s, tiny_settings, {"text": str(md), "text_sha256": "0" * 64}, tiny.tokenizer)
    assert stored.method == "document" and stored.dataset_hash == from_file.dataset_hash
    assert all(set(r) == {"text"} for r in stored.train)  # language modelling: the loss on every token
    assert not {r["text"] for r in stored.train} & set(stored.heldout.texts)
    assert stored.summary()["document"]["heldout_windows"] == len(stored.heldout.texts) >= 2


@pytest.mark.slow  # runs the command line in a subprocess
def test_missing_or_too_short_text_is_refused_and_starts_nothing(tiny_settings, tmp_path) -> None:
    sessions = sessions_for(tiny_settings)
    with pytest.raises(InputError, match=r"No document with id 99; no text is stored yet"):
        rounds.start_round(tiny_settings, RoundOptions("document", document=99), sessions=sessions)
    short = store(tiny_settings, "Lamp 1 is red. Lamp 2 is blue.", name="short.txt")
    with pytest.raises(InputError, match=rf"No document with id 99; stored texts: {short} \(short.txt\)"):
        rounds.start_round(tiny_settings, RoundOptions("document", document=99), sessions=sessions)
    with pytest.raises(InputError, match=r"short.txt is \d+ tokens long: too short .* at least 384 tokens"):
        rounds.start_round(tiny_settings, RoundOptions("document", document=short), sessions=sessions)
    with pytest.raises(InputError, match="needs one text"):
        rounds.start_round(tiny_settings, RoundOptions("document"), sessions=sessions)
    with pytest.raises(InputError, match="is for a document round"):
        rounds.start_round(tiny_settings, RoundOptions("sft", document=short), sessions=sessions)
    with db.transaction(sessions) as s:
        assert registry.latest_runs(s) == []
    assert not paths.adapters_dir(tiny_settings).exists()

    # from the shell: a file too short for its windows, then one that is not there
    f = tmp_path / "short.txt"
    f.write_text("Lamp 1 is red. Lamp 2 is blue.\n")
    out = cli(tiny_settings, "train", "--text", str(f), "--window", "64")
    assert out.returncode == 2 and "too short to learn and hold out a part" in out.stderr, out.stderr
    assert "at least 96 tokens" in out.stderr
    out = cli(tiny_settings, "train", "--text", str(tmp_path / "nope.txt"))
    assert out.returncode == 2 and "No file at" in out.stderr, out.stderr
    with db.transaction(sessions) as s:
        assert registry.latest_runs(s) == []


@pytest.mark.slow
def test_document_round_lowers_heldout_perplexity(tiny_settings, tmp_path) -> None:
    f = tmp_path / "lamps.md"
    f.write_text(TEXT, encoding="utf-8")
    doc_id = store(tiny_settings, document.read_text_file(f))
    sessions = sessions_for(tiny_settings)
    options = RoundOptions("document", document=doc_id, window=WINDOW, max_steps=20, lr=2e-3)
    run_id = rounds.start_round(tiny_settings, options, sessions=sessions)
    run = rounds.wait(tiny_settings, run_id, timeout=600, sessions=sessions)
    assert run.status == "succeeded", (run.error, rounds.log_path(tiny_settings, run_id).read_text()[-3000:])
    with db.transaction(sessions) as s:
        adapter = registry.get_adapter(s, name=str(run.adapter_name))
    m = adapter.metrics
    assert adapter.method == run.method == "document" and adapter.hyperparams["window"] == WINDOW
    assert m["target"] == "text_perplexity" and m["lower_is_better"] and m["heldout"]["texts"] >= 2
    new, base = m["adapter"]["text_perplexity"], m["baseline"]["text_perplexity"]
    print(f"held-out text perplexity: adapter {new}, base {base}")
    assert m["verdict"]["label"] == "better" and new < 0.8 * base, m
    assert m["dataset"]["document"]["document_id"] == doc_id and m["train"]["steps"] == 20

    # the shell measures the same figure on the same held-out windows of the file, base and adapter
    figures = {}
    for name in (None, adapter.name):
        out = cli(tiny_settings, "eval", "perplexity", "--text", str(f), "--window", str(WINDOW), "--heldout",
                  "--no-progress", "--json", "-", *(["--adapter", name] if name else []))
        assert out.returncode == 0, out.stderr
        figures[name] = json.loads(out.stdout)
        assert figures[name]["adapter"] == name and figures[name]["windows"] == m["heldout"]["texts"]
    print(f"eval perplexity --heldout: adapter {figures[adapter.name]['perplexity']}, "
          f"base {figures[None]['perplexity']}")
    assert figures[adapter.name]["perplexity"] == pytest.approx(new, rel=1e-3)
    assert figures[None]["perplexity"] == pytest.approx(base, rel=1e-3)
    out = cli(tiny_settings, "eval", "perplexity", "--text", str(f), "--adapter", "nope")
    assert out.returncode == 2 and "No adapter named 'nope'" in out.stderr, out.stderr
    listing = cli(tiny_settings, "adapters", "list").stdout
    assert re.search(rf"^\s+{adapter.name}\s+document\s+-\s+.*text_perplexity", listing, re.M), listing
