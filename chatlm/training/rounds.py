"""Start a training round in its own worker process, follow it, and clean up after one that died.

The database is the only channel between the server (or the CLI) and the worker: the worker writes
its progress and result to the run row; whoever started it reads them. One round at a time: the
registry refuses a second writer, and a round whose process is gone is marked failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chatlm.config import Settings
from chatlm.errors import ChatLMError, InputError
from chatlm.store import db, registry
from chatlm.store.models import TrainingRun
from chatlm.training import data
from chatlm.training import document as doc_round
from chatlm.training.options import RoundOptions
from chatlm.training.paths import ADAPTER_PREFIX, TMP_PREFIX, adapters_dir

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DIED = "The training process ended unexpectedly"


def log_path(settings: Settings, run_id: int) -> Path:
    return Path(settings.data_dir) / "training" / f"run-{run_id}.log"


def reap(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Mark runs whose process is gone as failed and remove what dead workers left in the adapters
    folder: temporary directories, and a finished directory whose registration never committed (a
    SIGKILL between the rename and the commit). Registered adapters are never touched. A dead
    worker's temporary directory goes before its run is marked failed: whoever reads "failed" finds
    nothing left behind."""
    folder = adapters_dir(settings)
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if entry.name.startswith(TMP_PREFIX):  # only this host's: another's worker may be writing it
            named = re.fullmatch(r"\d+(?:-(.+))?-pid(\d+)", entry.name.removeprefix(TMP_PREFIX))
            host, pid = (named.group(1) or registry.HOST, int(named.group(2))) if named else (registry.HOST, 0)
            if host == registry.HOST and not registry.process_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
    with db.transaction(sessions) as s:
        alive = False
        for run in s.scalars(select(TrainingRun).where(TrainingRun.status.in_(registry.RUNNING))):
            if run.status == "running" and not registry.run_alive(run):
                registry.fail_run(s, run_id=run.id, error=f"{DIED} (process {run.pid} on {run.host or 'this host'}).")
            else:
                alive = True
        registered = {Path(a.path).resolve() for a in registry.list_adapters(s)}
    for entry in sorted(folder.iterdir()) if folder.is_dir() and not alive else ():
        if (entry.is_dir() and not entry.is_symlink() and entry.name.startswith(f"{ADAPTER_PREFIX}-v")
                and entry.resolve() not in registered):
            shutil.rmtree(entry, ignore_errors=True)


def _child_env(settings: Settings) -> dict[str, str]:
    """The worker reads its settings from the environment: pass the ones that decide the round."""
    url = settings.db_url
    if url.startswith("sqlite:///") and not url.startswith(("sqlite:////", "sqlite:///:memory:")):
        url = f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "CHATLM_DATA_DIR": str(Path(settings.data_dir).resolve()), "CHATLM_DATABASE_URL": url,
            "CHATLM_MODEL": settings.model, "CHATLM_DEVICE": settings.device, "PYTHONPATH": path,
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def start_round(settings: Settings, options: RoundOptions, *, sessions: sessionmaker[Session]) -> int:
    """Check there is enough data, create the run (refused while another runs), spawn the worker.
    ``sessions``: the caller's database (an entry point opens it, ``chatlm.compose.sessions_for``)."""
    method = options.method
    reap(settings, sessions)
    params = options.params()
    tokenizer = doc_round.load_tokenizer(settings) if method == "document" else None
    with db.transaction(sessions) as s:
        if method == "document":  # a missing or too short text: refused now, not in a log later
            checked = doc_round.build_round(s, settings, params, tokenizer).source or {}
            params["text_sha256"] = checked["sha256"]
        elif method != "reader":
            data.build_round(s, method, guests=options.guests)  # too little data: say it now
        if options.from_active and registry.active_adapter(s) is None:
            raise InputError("No adapter is active, so there is nothing to continue from: "
                             "train without continuing from the active adapter.")
        run_id = registry.start_run(s, method=method, params=params).id
    return spawn(settings, run_id, sessions=sessions)


def spawn(settings: Settings, run_id: int, *, sessions: sessionmaker[Session]) -> int:
    """Run a created round's worker in its own process (or leave it to a queue worker); its run id."""
    if settings.trainer == "queue":  # a worker elsewhere claims it (python -m chatlm.training.worker --serve)
        return run_id
    log = log_path(settings, run_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "chatlm.training.worker", str(run_id)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_child_env(settings), start_new_session=True)
    except OSError as exc:
        with db.transaction(sessions) as s:
            registry.fail_run(s, run_id=run_id, error=f"Could not start the training process: {exc}")
        raise ChatLMError(f"Could not start the training process: {exc}") from exc
    with db.transaction(sessions) as s:
        run = registry.get_run(s, run_id=run_id)
        if run.status == "queued":  # from now on a dead pid means a dead round
            run.status, run.pid, run.host = "running", proc.pid, registry.HOST
    threading.Thread(target=_watch, args=(proc, settings, sessions), daemon=True,
                     name=f"training-run-{run_id}").start()
    return run_id


def _watch(proc: subprocess.Popen[bytes], settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Collect the worker's exit (no zombie that looks alive) and clean up if it died silently."""
    proc.wait()
    with contextlib.suppress(ChatLMError):
        reap(settings, sessions)


def wait(settings: Settings, run_id: int, *, timeout: float | None = None,
         on_progress: Callable[[TrainingRun], None] | None = None,
         sessions: sessionmaker[Session], poll: float = 0.5) -> TrainingRun:
    """Block until the round succeeds or fails (or ``timeout`` seconds pass); returns the run row."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with db.transaction(sessions) as s:
            run = registry.get_run(s, run_id=run_id)
        if on_progress is not None:
            on_progress(run)
        if run.status in ("succeeded", "failed"):
            return run
        if run.status == "running" and not registry.run_alive(run):
            reap(settings, sessions)
            continue
        if deadline is not None and time.monotonic() > deadline:
            raise ChatLMError(f"Training round {run_id} is still {run.status} after {timeout:g} s; "
                              f"its log is {log_path(settings, run_id)}.")
        time.sleep(poll)
