"""Crash part: serve, send a message through the UI's ``/send``, SIGKILL the server at a chosen moment
(prefill, streaming, around the answer's commit, or during a training round's registration), read the
database while nothing runs, restart — N times over one data directory.

What counts as "told stored": the UI shows the user's message only after it is committed (its first
output is read back from the database), and shows the answer with its stored ratings (an update with
``feedback_value``) only after the answer is committed. Those must survive every later kill.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reliability_common import REPO, Server, integrity, kill_pid, model_spec, offline_db, percentile

SYSTEM = "You are a helpful assistant."
PHASES = {"prefill": 0.2, "streaming": 0.45, "commit": 0.35}
"""Share of message cycles aimed at each moment (training cycles are drawn first, ``training_share``)."""
IN_FLIGHT = ("pending", "streaming")
"""Statuses of an answer still streaming (the service's in-progress name is ``pending``)."""
KEPT = ("interrupted", "stopped")
SUFFIXES = (" *(stopped)*", " *(the answer failed", " … *(interrupted")
"""What the UI appends to a stopped, failed or interrupted answer."""
SEED = """
import sys
from chatlm.store import db, repo
url = sys.argv[1]
db.upgrade(url)
S = db.make_sessionmaker(db.make_engine(url))
with db.transaction(S) as s:
    uid = repo.get_or_create_user(s, name=repo.LOCAL_USER).id
for i in range(int(sys.argv[2])):
    with db.transaction(S) as s:
        conv = repo.create_conversation(s, user_id=uid, system_prompt="")
        q = repo.add_message(s, conversation_id=conv.id, role="user", content=f"What is {i} plus {i}?")
        for text, value in ((f"{2 * i}", 1), (f"Maybe {i + 7}?", -1)):
            a = repo.add_message(s, conversation_id=conv.id, role="assistant", content=text, parent_id=q.id,
                                 prompt_messages=[{"role": "user", "content": q.content}], model_id="m")
            repo.set_rating(s, message_id=a.id, user_id=uid, value=value)
"""
"""Rated pairs written with the app's own code (run under ``app_root``, so its migrations apply)."""


@dataclass
class CrashConfig:
    cycles: int = 300
    model: str = "tiny"
    launch: str = "exec"
    training_share: float = 0.05
    min_tokens: int = 16
    max_tokens: int = 160
    seed: int = 0
    work: Path = Path("/tmp/chatlm-reliability")
    app_root: Path = REPO
    """Code the server runs (a ``git archive`` of another commit measures the figure before a change)."""
    ready_timeout: float = 120
    progress: bool = True


@dataclass
class Cycle:
    index: int
    phase: str
    text: str = ""
    served: bool = False
    landed: str = ""
    """What the client had seen at the kill: ``before_first_output``, ``message_shown`` (the message,
    no answer text yet), ``streaming`` (answer text), ``after_answer`` (the stored answer)."""
    told_user: bool = False
    told_answer: bool = False
    shown_answer: str = ""
    seen: str = ""
    ttft_s: float | None = None
    restart_s: float | None = None
    training: dict[str, Any] | None = None
    after_restart: str = ""
    """The killed answer's row once a new server had started: kept, none, complete, in_flight."""
    kept: str = ""
    user_stored: bool | None = None
    """For a kill before the first output: whether the user's message had been committed."""
    error: str = ""


def value(output: Any) -> Any:
    """An output's value (handlers return ``gr.update``, which reaches the client as a dict)."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def read_outputs(outputs: list[Any], text: str, completed: bool) -> tuple[bool, bool, str, bool]:
    """(user message shown, answer shown as stored, the last assistant text, any answer text seen).
    The UI reads the message back from the database before showing it; its stored-state update
    (``feedback_value``, after the first output) or the end of the job means the answer is stored."""
    told_user = final = streamed = False
    last = ""
    for idx, out in enumerate(outputs):
        chat = out[0] if isinstance(out, list | tuple) and out else None
        messages = value(chat) or []
        if any(m.get("role") == "user" and _text(m.get("content")) == text for m in messages):
            told_user = True
            final = final or (idx > 0 and isinstance(chat, dict) and "feedback_value" in chat)
        if messages and messages[-1].get("role") == "assistant":
            last = _text(messages[-1].get("content"))
            streamed = streamed or bool(last.strip())
    for suffix in SUFFIXES:
        last = last.split(suffix)[0]
    return told_user, told_user and (final or completed), last, streamed


class CrashRun:
    def __init__(self, cfg: CrashConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.nonce = secrets.token_hex(3)
        self.data = cfg.work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        model = model_spec(cfg.model, self.data, cfg.work)
        self.server = Server(self.data, model, cfg.launch, log=cfg.work / "server.log", root=cfg.app_root)
        self.cycles: list[Cycle] = []
        self.integrity_failures: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []
        self.training: list[dict[str, Any]] = []
        self.first_token_est = 0.4
        """Seconds from sending to the first answer text the client sees (a running estimate)."""
        self.s_per_token = 0.03

    # ---- one cycle ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        started = time.monotonic()
        if self.cfg.training_share > 0:
            subprocess.run([sys.executable, "-c", SEED, f"sqlite:///{self.data / 'chatlm.db'}", "12"],
                           cwd=self.cfg.app_root, env=self._env(), check=True)
        first_start = self.server.start(self.cfg.ready_timeout)
        bar = tqdm(range(self.cfg.cycles), desc="crash", unit="cycle", file=sys.stderr, disable=not self.cfg.progress)
        try:
            for i in bar:
                c = self._cycle(i)
                self.cycles.append(c)
                self._check_offline(c)
                bar.set_postfix(lost=len(self.lost), bad_db=len(self.integrity_failures),
                                kept=sum(x.after_restart == "kept" for x in self.cycles))
                c.restart_s = self._restart(c)
            final = self._final()
        finally:
            bar.close()
            self.server.kill()
        return self.summary(first_start, final, time.monotonic() - started)

    def _env(self) -> dict[str, str]:
        import os

        return {**os.environ, "PYTHONPATH": str(self.cfg.app_root)}

    def _cycle(self, i: int) -> Cycle:
        from gradio_client import Client

        training = self.rng.random() < self.cfg.training_share
        phase = "training" if training else self.rng.choices(list(PHASES), weights=list(PHASES.values()))[0]
        c = Cycle(index=i, phase=phase, text=f"crash cycle {i} {self.nonce}")
        client = None
        try:
            client = Client(self.server.url, verbose=False)
            client.predict(None, api_name="/load")
            c.served = True
            if training:
                c.training = self._training_cycle(client)
                c.landed = "training"
            else:
                self._message_cycle(client, c)
        except Exception as exc:  # recorded: a cycle whose server does not serve is a finding
            c.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.server.kill()
            if client is not None:
                client.close()
        return c

    def _message_cycle(self, client: Any, c: Cycle) -> None:
        """Aim the kill by time, from running estimates of the first token's delay and of the
        stream's pace (the UI sends text in batches, so outputs do not count tokens)."""
        max_new = self.rng.randint(self.cfg.min_tokens, self.cfg.max_tokens)
        job = client.submit(text=c.text, sys_prompt=SYSTEM, temperature=0.0, top_p=0.9, max_new=max_new,
                            api_name="/send")
        t0 = time.monotonic()
        stream = max_new * self.s_per_token
        if c.phase == "prefill":  # before the first token: around the message's commit and the prefill
            at = self.rng.uniform(0, self.first_token_est * 1.3)
        elif c.phase == "streaming":
            at = self.first_token_est + self.rng.uniform(0.05, 0.95) * stream
        else:  # around the answer's final commit
            at = self.first_token_est + stream + self.rng.uniform(-0.3, 0.15)
        done_at = None
        while time.monotonic() < t0 + at:
            if job.done():
                done_at = time.monotonic()
                break
            if c.ttft_s is None and read_outputs(job.outputs(), c.text, False)[3]:
                c.ttft_s = time.monotonic() - t0
            time.sleep(0.005)
        self.server.kill()
        completed = False
        with contextlib.suppress(Exception):  # the stream ends with the server; outputs() has what came
            job.result(timeout=10)
            completed = True
        c.told_user, c.told_answer, c.seen, streamed = read_outputs(job.outputs(), c.text, completed)
        if c.told_answer:
            c.shown_answer = c.seen
            c.landed = "after_answer"
        else:
            c.landed = "streaming" if streamed else ("message_shown" if c.told_user else "before_first_output")
        if c.ttft_s is not None:
            self.first_token_est = 0.7 * self.first_token_est + 0.3 * min(c.ttft_s, 10.0)
            if done_at is not None:
                pace = (done_at - t0 - c.ttft_s) / max_new
                self.s_per_token = 0.7 * self.s_per_token + 0.3 * min(max(pace, 0.001), 1.0)

    def _training_cycle(self, client: Any) -> dict[str, Any]:
        """Start a round from the UI; SIGKILL the server and the worker while it evaluates or registers
        (``rename``: the moment its adapter directory takes its final name, just before the commit)."""
        adapters = self.data / "adapters"
        before = set(p.name for p in adapters.iterdir()) if adapters.is_dir() else set()
        msg = str(value(client.predict("auto", 0, 2, 0, False, None, api_name="/start_round")[0]))
        out: dict[str, Any] = {"started": msg, "mode": self.rng.choice(["evaluating", "rename"])}
        if "started" not in msg:
            return out
        run_id = int(msg.split()[1])
        out["run_id"] = run_id
        deadline = time.monotonic() + 180
        tmp, pid = None, None
        while time.monotonic() < deadline and tmp is None:
            found = list(adapters.glob(f".tmp-run{run_id}-pid*")) if adapters.is_dir() else []
            if found:
                tmp, pid = found[0], int(found[0].name.rsplit("-pid", 1)[1])
            time.sleep(0.01)
        if tmp is None or pid is None:
            out["killed"] = "no worker directory seen"
            return out
        while time.monotonic() < deadline and not ((tmp / "adapter_model.safetensors").is_file()
                                                   and not (tmp / "_trainer").exists()):
            if not tmp.exists():
                break
            time.sleep(0.005)
        if out["mode"] == "evaluating":
            time.sleep(self.rng.uniform(0, 0.6))
        else:
            while time.monotonic() < deadline and tmp.exists():
                pass  # busy-wait: the rename-to-commit window is milliseconds
        out["worker_alive_at_kill"] = kill_pid(pid)  # the worker first: it is the one registering
        self.server.kill()
        out["final_dir_seen"] = sorted(set(p.name for p in adapters.iterdir()) - before - {tmp.name})
        return out

    # ---- reading the database while nothing runs --------------------------------------------
    def _check_offline(self, c: Cycle) -> None:
        with offline_db(self.data) as con:
            ok, detail = integrity(con)
            if not ok:
                self.integrity_failures.append({"cycle": c.index, "detail": detail})
            users = {r["content"] for r in con.execute("SELECT content FROM messages WHERE role='user'")}
            answers: dict[str, list[tuple[str, str]]] = {}
            for r in con.execute("SELECT u.content AS q, m.status, m.content FROM messages m "
                                 "JOIN messages u ON m.parent_id = u.id WHERE m.role = 'assistant'"):
                answers.setdefault(r["q"], []).append((r["status"], r["content"]))
            self._check_told(users, answers, c.index)
            if c.landed == "before_first_output":
                c.user_stored = c.text in users
            self._judge_previous(answers)
            if c.training is not None:
                c.training.update(self._registry_state(con, c.training.get("run_id")))
                self.training.append({"cycle": c.index, **c.training})

    def _check_told(self, users: set[str], answers: dict[str, list[tuple[str, str]]], now: int) -> None:
        """Every message any client was told is stored, in every cycle so far, is still there."""
        seen = {(x["cycle"], x["what"]) for x in self.lost}
        for c in self.cycles:
            missing = []
            if c.told_user and c.text not in users:
                missing.append(("user message", None))
            stored = [(s, norm(t)) for s, t in answers.get(c.text, [])]
            if c.told_answer and not any(status == "complete" and norm(c.shown_answer) in drawn(text)
                                         for status, text in stored):
                missing.append(("answer", stored[:2]))
            for what, detail in missing:
                if (c.index, what) not in seen:  # each loss once, when first seen
                    self.lost.append({"cycle": c.index, "checked_at": now, "what": what, "stored": detail})

    def _judge_previous(self, answers: dict[str, list[tuple[str, str]]]) -> None:
        """The answer killed in the previous cycle, after a server had started over it."""
        if len(self.cycles) < 2:
            return
        prev = self.cycles[-2]
        if prev.landed in ("streaming", "message_shown", "before_first_output") and not prev.after_restart:
            prev.after_restart, prev.kept = _judge(answers.get(prev.text, []))

    def _registry_state(self, con: Any, run_id: int | None) -> dict[str, Any]:
        rows = {r["name"]: r["path"] for r in con.execute("SELECT name, path FROM adapters")}
        run = con.execute("SELECT status, adapter_name, error FROM training_runs WHERE id = ?",
                          (run_id or -1,)).fetchone()
        folder = self.data / "adapters"
        dirs = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        missing = [n for n, p in rows.items() if not (Path(p) / "adapter_model.safetensors").is_file()]
        orphans = [d for d in dirs if not d.startswith(".") and d not in rows]
        status = run["status"] if run else None
        registered = bool(run and run["adapter_name"] in rows)
        return {"run_status": status, "registered": registered, "run_error": (run["error"] or "")[:200] if run else "",
                "registered_without_files": missing, "dirs_without_row": orphans,
                "tmp_dirs": [d for d in dirs if d.startswith(".tmp-run")],
                "consistent": not missing and not orphans and (registered == (status == "succeeded"))}

    def _restart(self, c: Cycle) -> float | None:
        for _ in range(2):
            try:
                return self.server.start(self.cfg.ready_timeout)
            except RuntimeError as exc:
                c.error = (c.error + f" | restart: {exc}")[:400]
                self.server.kill()
        raise RuntimeError(f"the server does not restart after cycle {c.index}: {c.error}")

    def _final(self) -> dict[str, Any]:
        """One more start over the last crash: it serves, the last killed answer is judged, and
        (with training cycles) a round run to its end shows the registry recovered."""
        from gradio_client import Client

        out: dict[str, Any] = {}
        client = Client(self.server.url, verbose=False)
        try:
            client.predict(None, api_name="/load")
            out["served"] = True
            if self.cfg.training_share > 0:
                out["recovery_round"] = self._recovery_round(client)
        finally:
            self.server.kill()
            client.close()
        self.cycles.append(Cycle(index=len(self.cycles), phase="final"))
        self._check_offline(self.cycles[-1])
        self.cycles.pop()
        with offline_db(self.data) as con:
            if out.get("recovery_round"):
                out["recovery_round"].update(self._registry_state(con, out["recovery_round"].get("run_id")))
        return out

    def _recovery_round(self, client: Any) -> dict[str, Any]:
        msg = str(value(client.predict("auto", 0, 2, 0, False, None, api_name="/start_round")[0]))
        out: dict[str, Any] = {"started": msg}
        if "started" not in msg:
            return out
        out["run_id"] = run_id = int(msg.split()[1])
        log = self.data / "training" / f"run-{run_id}.log"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.is_file() else ""
            if "registered" in text or "Traceback" in text:
                time.sleep(1.0)
                break
            time.sleep(0.25)
        return out

    # ---- figures ------------------------------------------------------------------------------
    def summary(self, first_start: float, final: dict[str, Any], seconds: float) -> dict[str, Any]:
        cs = self.cycles
        judged = [c for c in cs if c.landed == "streaming"]
        kept = [c for c in judged if c.after_restart == "kept"]
        restarts = [c.restart_s for c in cs if c.restart_s is not None]
        train = self.training
        return {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
            "cycles": len(cs),
            "phases_aimed": dict(Counter(c.phase for c in cs)),
            "landed": dict(Counter(c.landed or "error" for c in cs)),
            "integrity_ok": len(cs) + 1 - len(self.integrity_failures),
            "integrity_checks": len(cs) + 1,
            "integrity_failures": self.integrity_failures[:10],
            "served_after_restart": sum(c.served for c in cs[1:]) + bool(final.get("served")),
            "restarts": len(cs),
            "told_user_messages": sum(c.told_user for c in cs),
            "told_answers": sum(c.told_answer for c in cs),
            "lost": len(self.lost),
            "lost_detail": self.lost[:10],
            "killed_while_streaming": len(judged),
            "partial_kept": len(kept),
            "killed_answer_after_restart": {
                landed: dict(Counter(c.after_restart for c in cs if c.landed == landed))
                for landed in ("before_first_output", "message_shown", "streaming")},
            "partial_consistent_with_stream": sum(_prefix(c) for c in kept),
            "user_stored_when_killed_before_first_output": sum(bool(c.user_stored) for c in cs),
            "training": {"cycles": len(train), "registered": sum(bool(t.get("registered")) for t in train),
                         "consistent": sum(bool(t.get("consistent")) for t in train),
                         "detail": train[:20], **({"recovery_round": final["recovery_round"]}
                                                   if "recovery_round" in final else {})},
            "errors": [{"cycle": c.index, "error": c.error} for c in cs if c.error][:10],
            "first_start_s": round(first_start, 2),
            "restart_s": {"p50": percentile(restarts, 50), "p95": percentile(restarts, 95),
                          "max": round(max(restarts), 2) if restarts else None},
            "duration_s": round(seconds, 1),
        }


def _judge(rows: list[tuple[str, str]]) -> tuple[str, str]:
    """What became of a killed answer: ``kept`` (interrupted/stopped with its partial text),
    ``in_flight`` (still marked streaming after a restart), ``complete`` (stored whole, the client
    not told), ``none`` (nothing stored)."""
    for verdict, statuses in (("kept", KEPT), ("in_flight", IN_FLIGHT), ("complete", ("complete",))):
        for status, text in rows:
            if status in statuses and (text or verdict != "kept"):
                return verdict, text
    return "none", ""


def norm(text: str) -> str:
    """Text as compared: Gradio's Chatbot strips the whitespace around a message's content."""
    return " ".join(text.split())


CUT_MARK = " … *(cut at the token limit: Continue goes on)*"
"""What the chat draws after an answer cut at the token limit (``chatlm.ui.chat_view.MARKS["cut"]``,
kept here as text: this script does not import the app it kills)."""


def drawn(stored: str) -> set[str]:
    """How a complete stored answer may be drawn: as it is, or marked as cut at the token limit."""
    return {stored, norm(stored + CUT_MARK)}


def _prefix(c: Cycle) -> bool:
    """The kept text and what the client saw agree: one is a prefix of the other (the server may
    have streamed past its last checkpoint, or past what reached the client)."""
    kept, seen = norm(c.kept), norm(c.seen)
    return kept.startswith(seen) or seen.startswith(kept)


def run(cfg: CrashConfig) -> dict[str, Any]:
    return CrashRun(cfg).run()
