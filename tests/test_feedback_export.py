"""`python -m chatlm export` on a database built through the service (real SQLite, tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chatlm.engine.params import SamplingParams
from tests.conftest import REPO
from tests.wiring import make_service, parts

P = SamplingParams(temperature=0.0, max_new_tokens=6)


def export(data_dir, fmt: str, out, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATLM_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "chatlm", "export", "--format", fmt, "--out",
                           str(out), *extra], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)


@pytest.mark.slow  # runs the command line in a subprocess
def test_export_all_formats(settings, tiny_backend, tmp_path) -> None:
    service = make_service(settings, tiny_backend)
    me = service.actor()
    kept = service.new_conversation(me, system_prompt="be brief")
    service.send(me, kept.id, "first question", P).run()
    first = service.history(me, kept.id)[-1][0]
    service.retry(me, first.id, SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)).run()
    second = service.history(me, kept.id)[-1][0]
    service.rate(me, first.id, 1)
    service.rate(me, second.id, -1, comment="off topic", reason="wrong",
                 better_answer="The right answer.")
    hidden = service.new_conversation(me)
    service.send(me, hidden.id, "private question", P).run()
    service.rate(me, service.history(me, hidden.id)[-1][0].id, 1)
    service.set_excluded(me, hidden.id, True)

    results = {}
    for fmt in ("messages", "sft", "kto", "dpo"):
        out = tmp_path / f"{fmt}.jsonl"
        proc = export(settings.data_dir, fmt, out)
        assert proc.returncode == 0, proc.stderr
        assert "records" in proc.stderr
        results[fmt] = [json.loads(line) for line in out.read_text().splitlines()]
        assert "private question" not in out.read_text()

    assert len(results["messages"]) == 1
    assert results["messages"][0]["messages"][0] == {"role": "system", "content": "be brief"}
    assert [r["messages"][-1]["content"] for r in results["sft"]] == [first.content,
                                                                       "The right answer."]
    assert all(r["messages"][:-1] == first.prompt_messages for r in results["sft"])
    assert [r["label"] for r in results["kto"]] == [True, False, True]
    chosen = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in results["dpo"]}
    assert chosen == {(first.content, second.content), ("The right answer.", second.content)}
    proc = export(settings.data_dir, "kto", tmp_path / "k.jsonl")
    assert "2 liked/desirable, 1 disliked/undesirable" in proc.stderr
    # filters
    proc = export(settings.data_dir, "kto", tmp_path / "none.jsonl", "--user", "nobody")
    assert (tmp_path / "none.jsonl").read_text() == "" and "0 records" in proc.stderr
    proc = export(settings.data_dir, "kto", tmp_path / "a.jsonl", "--adapter", "base",
                  "--since", "2000-01-01")
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3
    bad = export(settings.data_dir, "kto", tmp_path / "x.jsonl", "--since", "yesterday")
    assert bad.returncode == 2 and "not a date" in bad.stderr


@pytest.mark.slow  # runs the command line in a subprocess
def test_building_datasets_in_the_ui_leaves_no_folder_per_export(settings, tiny_backend, monkeypatch) -> None:
    import json as json_module
    import tempfile
    from pathlib import Path

    import chatlm.ui.feedback as feedback_ui

    service = make_service(settings, tiny_backend)
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "a question", P).run()
    service.rate(me, service.history(me, conv.id)[-1][0].id, 1)
    before = set(Path(tempfile.gettempdir()).glob("chatlm-export-*"))
    wired = parts(service)
    tab = feedback_ui.FeedbackTab(service, wired["who"], wired["feedback"])
    monkeypatch.setattr(feedback_ui, "EXPORT_KEEP_S", -1.0)  # every earlier file counts as handed over
    paths = [tab.export("sft")[0] for _ in range(5)]
    assert json_module.loads(Path(paths[-1]).read_text().splitlines()[0])["messages"]
    assert sum(Path(p).exists() for p in paths) == 1  # only the newest; the rest were cleaned up
    created = set(Path(tempfile.gettempdir()).glob("chatlm-export-*")) - before
    assert len(created) == 1  # one folder for the process, not one per export
    tab._exports.cleanup()
    assert not any(p.exists() for p in created)


def test_every_dataset_format_has_words_a_user_reads() -> None:
    from chatlm.feedback import records
    from chatlm.ui.feedback import DATASET_WORDS

    assert list(DATASET_WORDS) == list(records.FORMATS)
    assert not any(term in " ".join(DATASET_WORDS.values()).upper() for term in ("SFT", "KTO", "DPO", "TRL", "LORA"))
