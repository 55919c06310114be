"""Load part: many visitors at once on loopback, half through the UI's ``/send`` (``gradio_client``),
half through ``/v1/chat/completions`` (the official ``openai`` client, streaming), each a few short
requests, the whole run bounded in time. An explicit "busy" (HTTP 429, the UI's busy notice) is a
correct answer under overload; anything else — an error, a request still waiting at the deadline —
is counted against the server."""

from __future__ import annotations

import contextlib
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reliability_common import Server, model_spec, offline_db, percentile
from reliability_crash import SYSTEM, norm, read_outputs, value

BUSY_WORDS = ("busy", "queue is full", "too many")


@dataclass
class LoadConfig:
    visitors: int = 100
    requests: int = 3
    max_new: int = 8
    time_limit: float = 300
    model: str = "tiny"
    work: Path = Path("/tmp/chatlm-reliability/load")
    launch: str = "exec"
    progress: bool = True


@dataclass
class Request:
    visitor: int
    kind: str
    """``ui`` or ``api``."""
    text: str
    outcome: str = ""
    """``ok``, ``busy``, ``timeout`` (still waiting at the deadline), ``not_started`` or ``error``."""
    detail: str = ""
    ttft_s: float | None = None
    seconds: float | None = None
    answer: str = ""


@dataclass
class LoadRun:
    cfg: LoadConfig
    nonce: str = field(default_factory=lambda: secrets.token_hex(3))
    results: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    setup_errors: list[str] = field(default_factory=list)
    started: float = 0.0
    deadline: float = float("inf")
    """Set once every visitor is ready; no request starts after it, none is waited for past it."""

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        data = self.cfg.work / "data"
        data.mkdir(parents=True, exist_ok=True)
        server = Server(data, model_spec(self.cfg.model, data, self.cfg.work.parent), self.cfg.launch,
                        log=self.cfg.work / "server.log")
        server.start()
        model_id = _model_id(server.url)
        self.bar = tqdm(total=self.cfg.visitors * self.cfg.requests, desc="load", unit="req", file=sys.stderr,
                        disable=not self.cfg.progress)
        ready = threading.Barrier(self.cfg.visitors + 1)
        threads = [threading.Thread(target=self._visitor, args=(v, server.url, model_id, ready), daemon=True)
                   for v in range(self.cfg.visitors)]
        try:
            setup = time.monotonic()
            for t in threads:
                t.start()
            ready.wait(timeout=600)  # every visitor has its client: they start together
            self.started = time.monotonic()
            setup_s = self.started - setup
            self.deadline = self.started + self.cfg.time_limit
            for t in threads:
                t.join(timeout=max(1.0, self.deadline + 30 - time.monotonic()))
            total = time.monotonic() - self.started
        finally:
            self.bar.close()
            server.stop()
        stored = self._check_stored(data)
        return self.summary(total, setup_s, stored, model_id)

    # ---- visitors -------------------------------------------------------------------------------
    def _visitor(self, v: int, url: str, model_id: str, ready: threading.Barrier) -> None:
        kind = "ui" if v % 2 == 0 else "api"
        try:
            client = _ui_client(url) if kind == "ui" else _api_client(url)
        except Exception as exc:
            with self.lock:
                self.setup_errors.append(f"{type(exc).__name__}: {exc}"[:200])
            client = None
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(timeout=600)
        try:
            for r in range(self.cfg.requests):
                req = Request(visitor=v, kind=kind, text=f"load visitor {v} request {r} {self.nonce}")
                if client is None:
                    req.outcome, req.detail = "error", "client setup failed"
                elif time.monotonic() >= self.deadline:
                    req.outcome = "not_started"
                else:
                    t0 = time.monotonic()
                    (self._ui if kind == "ui" else self._api)(client, req, model_id, t0)
                    req.seconds = round(time.monotonic() - t0, 4)
                with self.lock:
                    self.results.append(req)
                    self.bar.update(1)
        finally:
            if kind == "ui" and client is not None:
                client.close()

    def _ui(self, client: Any, req: Request, model_id: str, t0: float) -> None:
        try:
            job = client.submit(text=req.text, sys_prompt=SYSTEM, temperature=0.7, top_p=0.9,
                                max_new=self.cfg.max_new, api_name="/send")
            while not job.done():
                if req.ttft_s is None and read_outputs(job.outputs(), req.text, False)[3]:
                    req.ttft_s = time.monotonic() - t0
                if time.monotonic() >= self.deadline:
                    job.cancel()
                    req.outcome = "timeout"
                    return
                time.sleep(0.01)
            result = job.result(timeout=5)
        except Exception as exc:
            _classify(req, exc)
            return
        notice = str(value(result[2]) or "") if isinstance(result, list | tuple) and len(result) > 2 else ""
        _, told_answer, answer, streamed = read_outputs(job.outputs(), req.text, True)
        if req.ttft_s is None and streamed:
            req.ttft_s = time.monotonic() - t0
        if any(w in notice.lower() for w in BUSY_WORDS):
            req.outcome, req.detail = "busy", notice[:200]
        elif told_answer and streamed:
            req.outcome, req.answer = "ok", answer
        else:
            req.outcome, req.detail = "error", f"no answer shown; notice: {notice[:160]!r}"

    def _api(self, client: Any, req: Request, model_id: str, t0: float) -> None:
        try:
            stream = client.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": req.text}], max_tokens=self.cfg.max_new,
                temperature=0.7, stream=True, timeout=max(1.0, self.deadline - time.monotonic()))
            text = ""
            for chunk in stream:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    if req.ttft_s is None:
                        req.ttft_s = time.monotonic() - t0
                    text += delta
            req.outcome, req.answer = "ok", text
        except Exception as exc:
            _classify(req, exc)

    # ---- what was stored ---------------------------------------------------------------------
    def _check_stored(self, data: Path) -> dict[str, Any]:
        """Every UI message that got its answer is in the database with that answer, complete; and
        what a busy refusal left behind (the service commits the message before asking the backend)."""
        with offline_db(data) as con:
            users = {r["content"] for r in con.execute("SELECT content FROM messages WHERE role='user'")}
            answers: dict[str, list[tuple[str, str]]] = {}
            for r in con.execute("SELECT u.content AS q, m.status, m.content FROM messages m "
                                 "JOIN messages u ON m.parent_id = u.id WHERE m.role = 'assistant'"):
                answers.setdefault(r["q"], []).append((r["status"], norm(r["content"])))
        ui = [r for r in self.results if r.kind == "ui"]
        accepted = [r for r in ui if r.outcome == "ok"]
        missing = [r.text for r in accepted if ("complete", norm(r.answer)) not in answers.get(r.text, [])]
        busy = [r for r in ui if r.outcome == "busy"]
        return {"ui_accepted": len(accepted), "ui_accepted_missing": len(missing), "missing_examples": missing[:5],
                "ui_busy_message_stored": sum(r.text in users for r in busy),
                "ui_busy_answer_stored": sum(bool(answers.get(r.text)) for r in busy)}

    def summary(self, total: float, setup_s: float, stored: dict[str, Any], model_id: str) -> dict[str, Any]:
        rs = self.results
        outcomes = {kind: dict(Counter(r.outcome for r in rs if r.kind == kind)) for kind in ("ui", "api")}
        errors = [r for r in rs if r.outcome in ("error", "timeout")]

        def figures(xs: list[float]) -> dict[str, Any]:
            return {"n": len(xs), "p50": percentile(xs, 50), "p95": percentile(xs, 95)}

        ttft = {kind: figures([r.ttft_s for r in rs if r.kind == kind and r.ttft_s is not None and r.outcome == "ok"])
                for kind in ("ui", "api")}
        ttft["all"] = figures([r.ttft_s for r in rs if r.ttft_s is not None and r.outcome == "ok"])
        return {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
            "model_id": model_id,
            "requests": len(rs),
            "ok": sum(r.outcome == "ok" for r in rs),
            "busy": sum(r.outcome == "busy" for r in rs),
            "errors_other_than_busy": len(errors),
            "timeouts_at_deadline": sum(r.outcome == "timeout" for r in rs),
            "not_started_before_deadline": sum(r.outcome == "not_started" for r in rs),
            "outcomes": outcomes,
            "error_kinds": dict(Counter(r.detail.split(":")[0][:60] for r in errors)),
            "error_examples": [r.detail for r in errors[:5]],
            "busy_examples": list({r.detail for r in rs if r.outcome == "busy"})[:3],
            "client_setup_errors": self.setup_errors[:5],
            "ttft_s": ttft,
            "request_s": figures([r.seconds for r in rs if r.seconds is not None and r.outcome == "ok"]),
            "stored": stored,
            "client_setup_s": round(setup_s, 2),
            "total_duration_s": round(total, 2),
        }


def _classify(req: Request, exc: Exception) -> None:
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__}: {exc}"
    if status == 429 or any(w in str(exc).lower() for w in BUSY_WORDS):
        req.outcome, req.detail = "busy", text[:200]
    elif "timeout" in type(exc).__name__.lower():
        req.outcome, req.detail = "timeout", text[:200]
    else:
        req.outcome, req.detail = "error", text[:200]


def _ui_client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False)


def _api_client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def _model_id(url: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
        return str(json.load(r)["data"][0]["id"])


def run(cfg: LoadConfig) -> dict[str, Any]:
    return LoadRun(cfg).run()
