"""Writers part: many threads writing through ``ChatService`` (messages, ratings, renames) on one SQLite
file while a separate process writes a training run's progress row in a loop, as the training worker
does. Counts the lock/busy errors that reach a caller (``StorageError``) and checks afterwards that
every write that returned normally is in the file.

Run as a script (``python bench/reliability_writers.py DB_URL RUN_ID STOP_FILE INTERVAL``) it is that
progress-writing process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from reliability_common import REPO, StubBackend, integrity, offline_db, percentile

LOSS_HISTORY = 200
"""Loss points kept in the progress row, as the trainer keeps a bounded history."""


@dataclass
class WritersConfig:
    threads: int = 16
    writes: int = 500
    progress_interval: float = 0.005
    time_limit: float = 600
    """No write starts after this many seconds (a stuck pool would otherwise take hours)."""
    no_retrieval: bool = False
    """Give the service a library that opens no session of its own: the store alone, without the
    second pooled connection ``send`` takes for knowledge retrieval while holding its first."""
    work: Path = Path("/tmp/chatlm-reliability/writers")
    progress: bool = True


@dataclass
class Expected:
    """What one thread's successful writes must have left in the file."""

    messages: dict[str, str] = field(default_factory=dict)
    """user message text -> answer text."""
    ratings: dict[int, int] = field(default_factory=dict)
    """answer id -> last value set."""
    rating_calls: Counter[int] = field(default_factory=Counter)
    titles: dict[int, str] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    not_started: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Failed writes by kind (message, rating, rename)."""


class NoLibrary:
    """No documents in any conversation, without a query (see ``WritersConfig.no_retrieval``)."""

    def retrieve(self, conversation_id: int, question: str, k: int = 3) -> list[Any]:
        return []


def _writer(service: Any, t: int, n: int, start: threading.Barrier, out: Expected, bar: Any,
            limit: float) -> None:
    """``n`` writes in turn: a message (with its stub answer), a rating of that answer, a rename of a
    conversation of its own (each rename its own conversation, so every one can be checked)."""
    from chatlm.engine.params import SamplingParams
    from chatlm.errors import StorageError

    me = service.actor()
    conv = service.new_conversation(me).id
    renamed = [service.new_conversation(me).id for _ in range(n // 3 + 1)]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    unrated: list[int] = []
    start.wait()
    deadline = time.monotonic() + limit
    for j in range(n):
        if time.monotonic() > deadline:
            out.not_started = n - j
            bar.update(n - j)
            return
        kind = ("message", "rating", "rename")[j % 3]
        began = time.perf_counter()
        try:
            if kind == "message" or (kind == "rating" and not unrated):
                text = f"writer {t} message {j}"
                reply = service.send(me, conv, text, params)
                answer = reply.run()
                out.messages[text] = answer
                if reply.message_id is not None:
                    unrated.append(reply.message_id)
            elif kind == "rating":
                msg_id, value = unrated.pop(), 1 if j % 2 else -1
                service.rate(me, msg_id, value)
                out.ratings[msg_id] = value
                out.rating_calls[msg_id] += 1
            else:
                cid = renamed[j // 3]
                title = f"writer {t} title {j}"
                service.rename(me, cid, title)
                out.titles[cid] = title
        except StorageError as exc:
            out.errors["storage_busy" if "busy" in exc.message.lower() else "storage_other"] += 1
            out.failed[kind] += 1
        except Exception as exc:  # anything else reaching a caller is a finding too
            pool = "QueuePool limit" in str(exc)
            out.errors["pool_timeout" if pool else f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            out.failed[kind] += 1
        out.latencies.append(time.perf_counter() - began)
        bar.update(1)


def run(cfg: WritersConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from chatlm import compose
    from chatlm.config import Settings
    from chatlm.store import db, registry

    cfg.work.mkdir(parents=True, exist_ok=True)
    data = cfg.work / "data"
    settings = Settings.from_env({}, data_dir=data)
    service = compose.build(settings, StubBackend()).chat
    if cfg.no_retrieval:
        service.library = NoLibrary()  # type: ignore[assignment]
    with db.transaction(service.sessions) as s:
        run_id = registry.start_run(s, method="sft", params={"bench": "writers"}).id
    service.actor()  # the local user exists before the threads race to it
    stop = cfg.work / "stop"
    stop.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, __file__, settings.db_url, str(run_id), str(stop),
                             str(cfg.progress_interval)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    _wait_claimed(service.sessions, run_id, proc)
    barrier = threading.Barrier(cfg.threads)
    expected = [Expected() for _ in range(cfg.threads)]
    bar = tqdm(total=cfg.threads * cfg.writes, desc="writers", unit="write", file=sys.stderr,
               disable=not cfg.progress)
    threads = [threading.Thread(target=_writer, args=(service, t, cfg.writes, barrier, expected[t], bar,
                                                               cfg.time_limit))
               for t in range(cfg.threads)]
    started = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.monotonic() - started
    bar.close()
    stop.touch()
    progress = json.loads(proc.communicate(timeout=60)[0].strip().splitlines()[-1])
    service.sessions.kw["bind"].dispose()
    return _verify(cfg, data, run_id, expected, progress, seconds)


def _wait_claimed(sessions: Any, run_id: int, proc: subprocess.Popen[str]) -> None:
    from chatlm.store import db, registry

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with db.transaction(sessions) as s:
            if registry.get_run(s, run_id=run_id).status == "running":
                return
        if proc.poll() is not None:
            raise RuntimeError("the progress writer exited before claiming its run")
        time.sleep(0.1)
    raise RuntimeError("the progress writer did not claim its run")


def _verify(cfg: WritersConfig, data: Path, run_id: int, expected: list[Expected], progress: dict[str, Any],
            seconds: float) -> dict[str, Any]:
    missing: Counter[str] = Counter()
    with offline_db(data) as con:
        ok, detail = integrity(con)
        answers = {r["q"]: r["a"] for r in con.execute(
            "SELECT u.content AS q, m.content AS a FROM messages m JOIN messages u ON m.parent_id = u.id "
            "WHERE m.role = 'assistant' AND m.status = 'complete'")}
        ratings = {r["message_id"]: r["value"] for r in con.execute("SELECT message_id, value FROM ratings")}
        events = Counter(r["message_id"] for r in con.execute("SELECT message_id FROM rating_events"))
        titles = {r["id"]: r["title"] for r in con.execute("SELECT id, title FROM conversations")}
        run = con.execute("SELECT progress, heartbeat_at FROM training_runs WHERE id = ?", (run_id,)).fetchone()
    for e in expected:
        missing["messages"] += sum(answers.get(q) != a for q, a in e.messages.items())
        missing["ratings"] += sum(ratings.get(m) != v for m, v in e.ratings.items())
        missing["rating_events"] += sum(events.get(m, 0) != n for m, n in e.rating_calls.items())
        missing["renames"] += sum(titles.get(c) != t for c, t in e.titles.items())
    stored = json.loads(run["progress"]) if run and run["progress"] else {}
    progress_ok = stored.get("step") == progress.get("last_ok_step") and stored.get("loss") == progress.get(
        "last_ok_loss")
    errors: Counter[str] = Counter()
    for e in expected:
        errors.update(e.errors)
    lat = [x for e in expected for x in e.latencies]
    done = {k: sum(len(getattr(e, k)) for e in expected) for k in ("messages", "ratings", "titles")}
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "writes_planned": cfg.threads * cfg.writes,
        "writes_attempted": cfg.threads * cfg.writes - sum(e.not_started for e in expected),
        "writes_ok": sum(done.values()) + sum(sum(e.rating_calls.values()) - len(e.ratings) for e in expected),
        "by_kind_ok": {"messages": done["messages"], "ratings": sum(sum(e.rating_calls.values()) for e in expected),
                       "renames": done["titles"]},
        "storage_errors_surfaced": sum(v for k, v in errors.items() if k.startswith("storage")),
        "pool_timeouts_surfaced": errors.get("pool_timeout", 0),
        "errors": dict(errors),
        "failed_by_kind": dict(sum((e.failed for e in expected), Counter())),
        "missing_after": dict(missing),
        "integrity": detail if not ok else "ok",
        "progress_writer": {**{k: v for k, v in progress.items() if k != "last_ok_loss"},
                            "stored_matches_last_write": progress_ok},
        "write_latency_s": {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                            "max": round(max(lat), 4) if lat else None},
        "duration_s": round(seconds, 2),
        "writes_per_s": round(sum(len(e.latencies) for e in expected) / seconds, 1) if seconds else None,
    }


# ---- the progress-writing process ---------------------------------------------------------------------
def progress_main(argv: list[str]) -> int:
    """Claim the run as the worker does, then write its progress through the worker's own Reporter
    until told to stop; print how many writes the Reporter had to drop (it logs and goes on)."""
    from chatlm.store import db, registry
    from chatlm.store.models import utcnow
    from chatlm.training.worker import Reporter

    url, run_id, stop, interval = argv[0], int(argv[1]), Path(argv[2]), float(argv[3])
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        run = registry.get_run(s, run_id=run_id)
        run.status, run.pid, run.started_at = "running", os.getpid(), utcnow()
    dropped: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            dropped.append(record.getMessage())

    logging.getLogger("chatlm.training").addHandler(Count())
    report = Reporter(sessions, run_id)
    step, last_ok, losses, last_ok_loss = 0, None, [], []
    while not stop.exists():
        step += 1
        losses = [*losses, [step, round(1 / step, 5)]][-LOSS_HISTORY:]
        before = len(dropped)
        report({"phase": "training", "step": step, "total_steps": None, "loss": losses})
        if len(dropped) == before:
            last_ok, last_ok_loss = step, losses
        time.sleep(interval)
    with contextlib.suppress(Exception), db.transaction(sessions) as s:
        registry.get_run(s, run_id=run_id).status = "succeeded"
    print(json.dumps({"writes": step, "dropped": len(dropped), "dropped_examples": dropped[:3],
                      "last_ok_step": last_ok, "last_ok_loss": last_ok_loss}))
    return 0


if __name__ == "__main__":
    raise SystemExit(progress_main(sys.argv[1:]))
