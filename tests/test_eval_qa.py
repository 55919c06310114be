"""`python -m chatlm eval qa`: the SQuAD v2 harness as a user runs it (a real process), its answer
clean-up and abstention rules, and the generating modes wired to a tiny model in-process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chatlm.chat.prompts import NOT_FOUND
from chatlm.cli import qa as qa_cli
from chatlm.evaluation import qa, scoring
from chatlm.evaluation.scoring import AbstainRule, Record, clean_answer, grounded, is_abstention, new_words, supported
from tests.conftest import MODEL_CACHE, REPO

MINI = Path(__file__).resolve().parent / "data" / "squad-mini.json"
"""16 paragraphs of SQuAD 2.0's "Normans" article, in the repository (tests/data/README.md)."""
REPORT_KEYS = {"n_questions", "exact_match", "f1", "has_ans_f1", "has_ans_exact", "no_ans_accuracy",
               "retrieval_recall_at_k", "k", "seconds", "mode", "adapter", "model", "per_article",
               "examples"}

EASY = {"version": "v2.0", "data": [
    {"title": "Volcanoes", "paragraphs": [
        {"context": "Mount Etna is an active stratovolcano on the east coast of Sicily. It erupted "
                    "spectacularly in 1669, sending lava into the city of Catania.",
         "qas": [{"id": "v1", "question": "In which year did Mount Etna erupt into Catania?",
                  "answers": [{"text": "1669", "answer_start": 80}], "is_impossible": False},
                 {"id": "v2", "question": "On which island is the stratovolcano Mount Etna?",
                  "answers": [{"text": "Sicily", "answer_start": 60}], "is_impossible": False}]},
        {"context": "Kilauea is a shield volcano on the Big Island of Hawaii. Its lava lake in the "
                    "Halemaumau crater drained in 2018.",
         "qas": [{"id": "v3", "question": "Which crater held the lava lake of Kilauea?",
                  "answers": [{"text": "Halemaumau", "answer_start": 80}], "is_impossible": False},
                 {"id": "v4", "question": "When did the lava lake of Mauna Kea freeze?",
                  "answers": [], "is_impossible": True}]},
    ]},
    {"title": "Bread", "paragraphs": [
        {"context": "Sourdough bread is leavened by a starter of wild yeast and lactobacilli, which "
                    "gives it a sour taste.",
         "qas": [{"id": "b1", "question": "What leavens sourdough bread?",
                  "answers": [{"text": "a starter of wild yeast and lactobacilli", "answer_start": 30}],
                  "is_impossible": False}]},
        {"context": "Baguettes are long thin loaves of French bread baked from lean dough.",
         "qas": [{"id": "b2", "question": "What dough are baguettes baked from?",
                  "answers": [{"text": "lean dough", "answer_start": 57}], "is_impossible": False}]},
    ]},
]}


def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATLM_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "chatlm", "eval", "qa", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


def easy_file(tmp_path: Path) -> Path:
    path = tmp_path / "easy.json"
    path.write_text(json.dumps(EASY), encoding="utf-8")
    return path


@pytest.mark.slow  # runs the command line in a subprocess
def test_retrieval_only_cli_reports_full_recall_on_an_easy_file(tmp_path) -> None:
    out_path = tmp_path / "report.json"
    data = tmp_path / "d"
    out = run(["--squad", str(easy_file(tmp_path)), "--retrieval-only", "--k", "1", "--json",
               str(out_path)], data)
    assert out.returncode == 0, out.stderr
    report = json.loads(out_path.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["mode"] == "retrieval-only" and report["k"] == 1
    assert report["n_questions"] == 6 and report["n_answerable"] == 5 and report["n_unanswerable"] == 1
    assert report["retrieval_recall_at_k"] == 1.0
    assert report["f1"] is None  # nothing was generated
    assert [a["title"] for a in report["per_article"]] == ["Volcanoes", "Bread"]
    assert all(a["retrieval_recall_at_k"] == 1.0 for a in report["per_article"])
    assert report["fusion"] is True  # embeddings were awaited: BM25+dense fusion was measured
    assert "retrieval_recall_at_k=1.000" in out.stderr
    assert not (data / "chatlm.db").exists()  # the user's database was not touched


@pytest.mark.slow  # runs the command line in a subprocess
def test_limit_and_missing_file(tmp_path) -> None:
    out_path = tmp_path / "r.json"
    out = run(["--squad", str(easy_file(tmp_path)), "--retrieval-only", "--limit", "1", "--json",
               str(out_path)], tmp_path / "d")
    assert out.returncode == 0, out.stderr
    assert json.loads(out_path.read_text())["n_questions"] == 2  # the first question of each article
    out = run(["--squad", str(tmp_path / "nope.json"), "--json", str(out_path)], tmp_path / "d")
    assert out.returncode == 2 and "No SQuAD file" in out.stderr


# ---- answer clean-up and abstention --------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [
    ("Rollo", "Rollo"),
    ("  Rollo.  ", "Rollo"),
    ("Rollo [1]", "Rollo"),
    ("\"the 10th century\" [1][2].", "the 10th century"),
    ("“Normandy”", "Normandy"),
    ("The answer to this question is: Normandy.", "Normandy"),
    ("Answer: 1669", "1669"),
    ("Sicily\nIt is an island.", "Sicily"),
    (NOT_FOUND, ""),
    ("I could not find that in the documents [1].", ""),
    ("Sorry, I couldn't find it.", ""),
    ("", ""),
])
def test_clean_answer(raw: str, expected: str) -> None:
    assert clean_answer(raw) == expected


def test_abstention_and_answer_checks() -> None:
    assert is_abstention(NOT_FOUND) and is_abstention(NOT_FOUND.upper())
    assert not is_abstention("Denmark, Iceland and Norway")
    passage = ["Its lava lake in the Halemaumau crater drained in 2018."]
    assert supported("the Halemaumau crater", passage)
    assert not supported("Mauna Kea", passage)
    assert not supported("Hale", passage)  # whole words
    assert new_words("France is a region of.", "What is France a region of?") == []
    assert new_words("The lake drained in 2018", "When did the lake drain?") == ["drained", "2018"]
    assert grounded(["drained", "2018"], passage) and not grounded(["2019"], passage)


def _record(answer: str, question: str = "Who led the Norse?", *, impossible: bool = False,
            shown: tuple[str, ...] = ("Rollo led the Norse into Normandy.",), top_dense: float = 0.9) -> Record:
    rec = Record(id="q", article="A", question=question, answers=[] if impossible else ["Rollo"],
                 is_impossible=impossible, paragraph_index=0, top_dense=top_dense)
    qa._finish(rec, answer, SimpleNamespace(finish_reason="stop", completion_tokens=3, error=None), shown)
    return rec


def test_abstain_rules_and_scores() -> None:
    kept = _record("Rollo [1].")
    echoed = _record("The Norse were led.", impossible=True)
    made_up = _record("Bjorn", impossible=True)
    paraphrase = _record("Rollo led them")
    declined = _record(NOT_FOUND, impossible=True)
    off_topic = _record("Rollo", impossible=True, top_dense=0.1)
    records = [kept, echoed, made_up, paraphrase, declined, off_topic]

    def reasons(rule: AbstainRule) -> list[str | None]:
        for rec in records:
            rec.apply(rule)
        return [r.abstained_by for r in records]

    assert reasons(AbstainRule("none", None)) == [None, None, None, None, "model", None]
    assert reasons(AbstainRule("echo", None)) == [None, "echo", None, None, "model", None]
    assert reasons(AbstainRule("grounded", None)) == [None, "echo", "grounded", None, "model", None]
    assert reasons(AbstainRule("verbatim", 0.5)) == [None, "echo", "grounded", "verbatim", "model",
                                                     "min_dense"]
    report = scoring.score(records)
    assert report["has_ans_f1"] == 0.5 and report["no_ans_accuracy"] == 1.0
    assert report["abstained_by"] == {"echo": 1, "grounded": 1, "min_dense": 1, "model": 1, "verbatim": 1}
    table = {row["rule"]: row for row in scoring.variants(records, 0.5)}
    assert table["model"]["no_ans_accuracy"] == 0.25 and table["model"]["has_ans_f1"] == 0.75
    assert table["model+verbatim+min_dense=0.5"]["no_ans_accuracy"] == 1.0
    assert [r.abstained_by for r in records][-1] == "min_dense"  # variants() left the records alone


# ---- the generating modes, wired to a tiny random model (fast; the text is nonsense) ------------
def _args(squad: Path, out: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    qa_cli.add_arguments(parser)
    argv = ["--squad", str(squad), "--json", str(out), "--no-progress", "--max-new-tokens", "4"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


@pytest.mark.parametrize("mode", ["rag", "oracle"])
def test_generating_modes_with_a_tiny_model(tmp_path, monkeypatch, tiny_backend, mode) -> None:
    monkeypatch.setenv("CHATLM_DATA_DIR", str(tmp_path / "d"))
    out = tmp_path / "r.json"
    extra = {"oracle": True} if mode == "oracle" else {}
    assert qa_cli.run_cli(_args(easy_file(tmp_path), out, details=True, **extra),
                      backend_factory=lambda _settings: tiny_backend) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == mode and report["model"] == "tiny-random"
    assert report["n_questions"] == 6 and report["retrieval_recall_at_k"] == 1.0
    assert 0.0 <= report["f1"] <= 1.0 and report["errors"] == 0
    assert {q["finish_reason"] for q in report["questions"]} <= {"stop", "length"}
    assert all(q["completion_tokens"] <= 4 for q in report["questions"])
    assert report["examples"] and report["abstain_rule"] == "model+echo+min_dense=0.5"
    assert len(report["abstain_variants"]) == 8


def test_together_and_conversation_ask_through_one_knowledge_base_and_one_chat(tmp_path, monkeypatch,
                                                                            tiny_backend) -> None:
    from chatlm.chat.turns import ChatService

    monkeypatch.setenv("CHATLM_DATA_DIR", str(tmp_path / "d"))
    asked: list[tuple[int, int]] = []  # (conversation, documents it holds) of every question asked
    send = ChatService.send

    def spy(self, user_id, conversation_id, content, *args, **kwargs):
        asked.append((conversation_id, len(self.library.documents(conversation_id))))
        return send(self, user_id, conversation_id, content, *args, **kwargs)

    monkeypatch.setattr(ChatService, "send", spy)
    out = tmp_path / "r.json"
    assert qa_cli.run_cli(_args(easy_file(tmp_path), out, together=True, conversation=True),
                      backend_factory=lambda _settings: tiny_backend) == 0
    report = json.loads(out.read_text())
    assert report["together"] and report["conversation"] and report["n_questions"] == 6
    assert report["retrieval_recall_at_k"] == 1.0  # the right article is found among both
    assert {docs for _, docs in asked} == {2}  # each chat holds both articles
    assert len({conv for conv, _ in asked}) == 2  # one chat per article, all its questions in it


def test_unknown_adapter_is_a_clear_error(tmp_path, monkeypatch, tiny_backend) -> None:
    from chatlm.errors import ChatLMError

    monkeypatch.setenv("CHATLM_DATA_DIR", str(tmp_path / "d"))
    with pytest.raises(ChatLMError, match="No adapter named 'nope'"):
        qa_cli.run_cli(_args(easy_file(tmp_path), tmp_path / "r.json", adapter="nope"),
                   backend_factory=lambda _settings: tiny_backend)


def test_a_registered_adapter_is_the_one_that_answers(tmp_path, monkeypatch, tiny) -> None:
    import copy
    import dataclasses

    from chatlm.config import Settings
    from chatlm.engine.local import LocalBackend
    from chatlm.store import db, registry
    from tests.test_adapters import make_adapter

    monkeypatch.setenv("CHATLM_DATA_DIR", str(tmp_path / "d"))
    path = make_adapter(tiny.model, tmp_path / "tiny-v1", 3)
    url = Settings.from_env().db_url
    db.upgrade(url)
    with db.transaction(db.make_sessionmaker(db.make_engine(url))) as s:
        registry.register(s, name="tiny-v1", base_model="tiny", path=str(path), method="sft", dataset_hash="0")
    reports = {}
    for name in (None, "tiny-v1"):
        out = tmp_path / f"{name}.json"
        extra = {"adapter": name} if name else {}
        fresh = LocalBackend(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)))  # the run closes it
        assert qa_cli.run_cli(_args(easy_file(tmp_path), out, details=True, **extra),
                          backend_factory=lambda _settings, b=fresh: b) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["tiny-v1"]["adapter"] == "tiny-v1"
    raw = [[q.get("raw", q["prediction"]) for q in r["questions"]] for r in reports.values()]
    assert raw[0] != raw[1]  # the adapter changed the answers: it, not the base model, was scored


# ---- the real model on SQuAD questions (tests/data) ------------------------------------------
@pytest.mark.slow
def test_rag_on_squad_questions(tmp_path, bundled) -> None:
    data = tmp_path / "d"
    (data / "models").mkdir(parents=True)
    # reuse the session's safetensors copy of the bundled model instead of dequantising again
    for entry in (MODEL_CACHE / "models").iterdir():
        (data / "models" / entry.name).symlink_to(entry)
    out_path = tmp_path / "report.json"
    out = run(["--squad", str(MINI), "--limit", "4", "--details", "--json", str(out_path)], data)
    assert out.returncode == 0, out.stderr
    report = json.loads(out_path.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["mode"] == "rag" and report["model"] == "SmolLM2-135M-Instruct"
    assert report["n_questions"] == 4 and len(report["per_article"]) == 1
    assert report["errors"] == 0 and report["fusion"] is True
    assert report["reader"] == "reader"  # what a fresh install answers: the shipped reader reads
    for q in report["questions"]:  # each answer a span of its passages, or the decline
        assert q["extractive"] and (q["prediction"] == "" or q["supported"]), q
    assert not (data / "chatlm.db").exists()
