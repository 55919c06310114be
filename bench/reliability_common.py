"""Shared pieces of the reliability benchmark: the model a crash cycle can restart quickly, a server
subprocess we may SIGKILL, a read of the database taken only while no server runs, and a stub backend
for storage-only runs."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatlm.engine.backend import Backend

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MODEL_CACHE = REPO / ".pytest_cache" / "chatlm-data"
"""Where the tests keep the safetensors copy of the bundled model (and so its tokenizer)."""
PRELOAD = ["torch", "transformers", "gradio", "fastapi", "uvicorn", "alembic.command", "sqlite3", "accelerate",
           "safetensors", "tokenizers", "chatlm.server", "chatlm.cli.main", "chatlm.ui.chat_page", "chatlm.ui.training",
           "chatlm.ui.feedback", "chatlm.ui.knowledge", "chatlm.api.openai", "chatlm.engine.local", "chatlm.store.db"]
"""Modules the fork launcher imports once, so a restart costs the app's start, not the imports."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (as numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 4)


def write_json(part: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """Merge one part's figures into ``bench/out/reliability.json`` (parts run separately)."""
    path = out or OUT / "reliability.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(ValueError):
            merged = json.loads(path.read_text())
    merged[part] = result
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path


# ---- models ------------------------------------------------------------------------------------
def tiny_model_dir(target: Path, *, context: int = 2048) -> Path:
    """A tiny random Llama (hidden 32, 2 layers) with the bundled tokenizer, saved with
    ``save_pretrained``: it loads in well under a second and streams ~40 tokens/s through the UI,
    so a crash cycle costs the restart, not the model. Its text is nonsense, which is all we need."""
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from chatlm.engine import loader

    tokenizer = AutoTokenizer.from_pretrained(loader.local_path(loader.resolve("bundled"), MODEL_CACHE))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def model_spec(model: str, data_dir: Path, work: Path) -> str:
    """``tiny`` (built under ``work``), ``bundled`` (the tests' safetensors cache linked into the data
    dir, so no 25 s dequantisation), or any CHATLM_MODEL value."""
    if model == "tiny":
        return str(tiny_model_dir(work / "tiny-model"))
    if model == "bundled":
        cached = MODEL_CACHE / "models"
        if cached.is_dir():
            (data_dir / "models").mkdir(parents=True, exist_ok=True)
            for entry in cached.iterdir():
                link = data_dir / "models" / entry.name
                if not link.exists():
                    link.symlink_to(entry.resolve())
    return model


# ---- the server as a process we may kill ---------------------------------------------------------
def _serve_child(env: dict[str, str], port: int, log: str) -> None:
    """Body of a forked server: the same entry point as ``python -m chatlm serve``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    from chatlm.cli.main import main

    raise SystemExit(main(["serve", "--port", str(port)]))


_FORK_CONTEXT: Any = None


def _fork_context() -> Any:
    global _FORK_CONTEXT
    if _FORK_CONTEXT is None:
        import multiprocessing

        bench_dir = str(Path(__file__).resolve().parent)
        if bench_dir not in sys.path:
            sys.path.insert(0, bench_dir)
        _FORK_CONTEXT = multiprocessing.get_context("forkserver")
        _FORK_CONTEXT.set_forkserver_preload([*PRELOAD, "reliability_common"])
    return _FORK_CONTEXT


@dataclass
class Server:
    """``python -m chatlm serve`` on a free loopback port. ``launch="exec"`` runs exactly that command;
    ``"fork"`` forks it from a stdlib forkserver that imported torch, transformers and gradio once
    (a restart then takes ~4 s instead of ~10 s: what lets the 20-cycle test fit in its budget)."""

    data_dir: Path
    model: str
    launch: str = "exec"
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    root: Path = REPO
    """The code it runs (``exec`` only: the fork launcher preloads this checkout's modules)."""
    port: int = 0
    pid: int | None = None
    _proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def child_env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.root), os.environ.get("PYTHONPATH", "")) if p)
        return {"CHATLM_DATA_DIR": str(self.data_dir), "CHATLM_MODEL": self.model, "CHATLM_DEVICE": "cpu",
                "CHATLM_HOST": "127.0.0.1", "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", **self.env}

    def start(self, timeout: float = 120) -> float:
        """Start and wait until ``/v1/models`` answers; returns the seconds that took."""
        self.port = free_port()
        log = self.log or self.data_dir.parent / "server.log"
        started = time.monotonic()
        if self.launch == "fork":
            if self.root != REPO:
                raise RuntimeError("the fork launcher serves this checkout only; use launch='exec'")
            self._proc = _fork_context().Process(target=_serve_child, args=(self.child_env(), self.port, str(log)),
                                                 daemon=False)
            self._proc.start()
        else:
            with open(log, "ab") as out:
                self._proc = subprocess.Popen([sys.executable, "-m", "chatlm", "serve", "--port", str(self.port)],
                                              cwd=self.root, env={**os.environ, **self.child_env()}, stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self._proc.pid
        while True:
            if not self.alive():
                raise RuntimeError(f"the server exited during start; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the server did not answer within {timeout:g} s; see {log}")
            time.sleep(0.05)

    def alive(self) -> bool:
        if self._proc is None:
            return False
        if self.launch == "fork":
            return bool(self._proc.is_alive())
        return self._proc.poll() is None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the load part ends this way)."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        self.kill()

    def kill(self) -> None:
        """SIGKILL: no handler, no atexit, no flush; then reap the process."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            if self.launch == "fork":
                self._proc.join(timeout=30)
            else:
                self._proc.wait(timeout=30)
        self._proc, self.pid = None, None


def kill_pid(pid: int) -> bool:
    """SIGKILL a process we started indirectly (a training worker); False if it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


# ---- the database, read only while nothing else has it open ----------------------------------------
def db_path(data_dir: Path) -> Path:
    return data_dir / "chatlm.db"


@contextlib.contextmanager
def offline_db(data_dir: Path) -> Any:
    """A plain sqlite3 connection to the app's file, opened while the server is down (the first
    open after a kill replays the WAL, as the restarted server would)."""
    con = sqlite3.connect(db_path(data_dir), timeout=10)
    con.row_factory = sqlite3.Row
    try:
        yield con
    finally:
        con.close()


def integrity(con: sqlite3.Connection) -> tuple[bool, str]:
    """``PRAGMA integrity_check`` plus ``foreign_key_check``: ok only if both are clean."""
    rows = [r[0] for r in con.execute("PRAGMA integrity_check")]
    fks = list(con.execute("PRAGMA foreign_key_check"))
    ok = rows == ["ok"] and not fks
    return ok, "ok" if ok else f"integrity={rows[:5]} foreign_keys={[tuple(r) for r in fks[:5]]}"


# ---- a backend for storage-only runs ----------------------------------------------------------------
class StubBackend(Backend):
    """Answers at once with a fixed text: the writers part measures the store, not a model."""

    model_id = "stub"
    context_window = 4096

    def __init__(self, answer: str = "stub answer") -> None:
        self.answer = answer
        self._ids = itertools.count(1)

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return 8 + sum(len(m.get("content", "")) for m in messages) // 4

    def chat(self, messages: Sequence[dict[str, str]], params: Any, *, adapter: str | None = None,
             continue_final: bool = False, **copy: Any) -> Any:
        from chatlm.engine.generation import Generation

        gen = Generation(id=next(self._ids), prompt_tokens=self.count_tokens(messages), params=params,
                         adapter=adapter)
        gen._emit(self.answer)
        gen.completion_tokens = 2
        gen._finish("stop")
        return gen

    def close(self) -> None:
        pass
