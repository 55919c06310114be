"""Short versions of bench/reliability.py: kill -9 cycles and concurrent writers. They assert what
must hold whatever the timing (nothing told stored is lost, the file is intact, the app serves again,
every write that returned is there), never how fast anything is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


def test_the_crash_bench_knows_the_chats_cut_mark() -> None:
    """The crash bench compares what a client was shown with what is stored; an answer cut at the
    token limit is drawn with the chat's mark, which the bench keeps as text."""
    from reliability_crash import CUT_MARK

    from chatlm.ui.chat_view import MARKS

    assert MARKS["cut"] == CUT_MARK


def test_twenty_kill_nine_cycles_lose_nothing_told_stored(tiny_dir: Path, tmp_path: Path) -> None:
    """20 cycles of serve → /send → SIGKILL before the first token, while streaming or around the
    answer's commit → read the file → restart. The server is forked from a preloaded forkserver
    (same entry point as ``python -m chatlm serve``) so a restart costs ~4 s, not ~10 s."""
    from reliability_crash import CrashConfig, run

    fig = run(CrashConfig(cycles=20, model=str(tiny_dir), launch="fork", training_share=0, min_tokens=8,
                          max_tokens=32, seed=11, work=tmp_path / "crash", progress=False))
    assert fig["cycles"] == 20 and not fig["errors"], fig["errors"]
    assert fig["lost"] == 0, fig["lost_detail"]
    assert fig["integrity_ok"] == fig["integrity_checks"] == 21, fig["integrity_failures"]
    assert fig["served_after_restart"] == fig["restarts"] == 20
    assert fig["told_user_messages"] > 0
    # an answer cut off by the kill is never left marked as streaming once a server started again,
    # and what was kept of it agrees with what the client was shown
    after = fig["killed_answer_after_restart"]
    assert all("in_flight" not in verdicts for verdicts in after.values()), after
    assert fig["partial_consistent_with_stream"] == fig["partial_kept"]


def test_concurrent_writers_and_a_progress_writing_process(tmp_path: Path) -> None:
    """4 threads × 50 writes through ChatService and the training worker's Reporter in another
    process, on one SQLite file: nothing surfaces as a lock error and every write is there."""
    from reliability_writers import WritersConfig, run

    fig = run(WritersConfig(threads=4, writes=50, work=tmp_path / "writers", progress=False))
    assert fig["errors"] == {}, fig["errors"]
    assert fig["writes_ok"] == fig["writes_attempted"] == 200
    assert fig["missing_after"] == {"messages": 0, "ratings": 0, "rating_events": 0, "renames": 0}
    assert fig["integrity"] == "ok"
    writer = fig["progress_writer"]
    assert writer["writes"] > 0 and writer["dropped"] == 0, writer
    assert writer["stored_matches_last_write"]
