"""`python -m chatlm.training.worker RUN_ID`: one training round, in its own process.

A round never shares a process with the server: a crash, a kill or an out-of-memory error ends the
worker alone, and the run row says what happened. The adapter is written to a hidden temporary
directory inside ``<data_dir>/adapters/`` and renamed to its final name only once it is complete and
evaluated, in the same transaction that registers it; on any failure the temporary directory is
removed and the active adapter is never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from chatlm.config import Settings
from chatlm.errors import ChatLMError
from chatlm.store import db, registry
from chatlm.store.models import utcnow
from chatlm.training import data, document, reader
from chatlm.training.paths import ADAPTER_PREFIX, adapters_dir, temp_dir

log = logging.getLogger("chatlm.training")
QA_LIMIT = 10
"""Questions per SQuAD article asked when a round is given ``--squad`` (generation is slow on CPU)."""


class Stopped(BaseException):
    """SIGTERM: unwind like an error so the temporary directory is removed and the run marked."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped("The training process was stopped (SIGTERM).")


class Reporter:
    """Writes progress to the run row (with the heartbeat); a busy database never stops training."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int) -> None:
        self.sessions, self.run_id = sessions, run_id
        self.state: dict[str, Any] = {}

    def __call__(self, update: dict[str, Any]) -> None:
        self.state = {**self.state, **update}
        try:
            with db.transaction(self.sessions) as s:
                run = registry.get_run(s, run_id=self.run_id)
                run.progress, run.heartbeat_at = dict(self.state), utcnow()
        except ChatLMError as exc:
            log.warning("progress not saved: %s", exc.message)


Named = tuple[str, str]
"""(adapter name, directory)."""


def _mark_running(sessions: sessionmaker[Session],
                  run_id: int) -> tuple[str, dict[str, Any], Named | None, Named | None]:
    """Claim the run; returns its method, parameters, parent adapter and the adapter active now."""
    with db.transaction(sessions) as s:
        run = registry.get_run(s, run_id=run_id)
        if run.status not in registry.RUNNING:
            raise ChatLMError(f"Training run {run_id} is already {run.status}.")
        run.status, run.pid, run.started_at, run.heartbeat_at = "running", os.getpid(), utcnow(), utcnow()
        run.host = registry.HOST
        run.progress = {"phase": "preparing"}
        found = registry.active_adapter(s)
        active = (found.name, found.path) if found else None
        return run.method, dict(run.params), active if run.params.get("from_active") else None, active


def run_round(settings: Settings, run_id: int) -> int:
    """Train, evaluate, save and register one round; returns the process exit code."""
    from chatlm import compose

    sessions = compose.sessions_for(settings)
    tmp: Path | None = None
    try:
        method, params, parent, active = _mark_running(sessions, run_id)
        report = Reporter(sessions, run_id)
        with db.transaction(sessions) as s:
            if method == "document":
                round_data = document.build_round(s, settings, params)
            elif method != "reader":
                round_data = data.build_round(s, method, guests=bool(params.get("guests")))
        if method == "reader":  # SQuAD records, not ratings: retrieval runs outside the transaction
            report({"phase": "preparing"})
            round_data = reader_round(settings, params)
        if parent is None and round_data.knowledge:  # ratings of knowledge answers: teach the reader on
            parent = reader_parent(settings, sessions)
        logs = Path(settings.data_dir) / "training"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"run-{run_id}.jsonl").write_text(round_data.jsonl, encoding="utf-8")
        report({"phase": "loading", "data": round_data.summary()})
        tmp = temp_dir(settings, run_id, os.getpid(), registry.HOST)
        tmp.mkdir(parents=True)
        model_id, hp, metrics = _train_and_evaluate(settings, round_data, params, parent, active, tmp, report)
        report({"phase": "registering"})
        with db.transaction(sessions) as s:
            name = registry.next_name(s, prefix=str(params.get("prefix") or ADAPTER_PREFIX),
                                      taken=lambda n: (adapters_dir(settings) / n).exists())
            final = adapters_dir(settings) / name
            tmp.rename(final)
            tmp = final  # removed below if the registration does not commit
            registry.register(s, name=name, base_model=model_id, parent=parent[0] if parent else None,
                              path=str(final.resolve()), method=round_data.method,
                              dataset_hash=round_data.dataset_hash, hyperparams=hp, metrics=metrics)
            run = registry.get_run(s, run_id=run_id)
            run.status, run.adapter_name, run.finished_at = "succeeded", name, utcnow()
            run.method, run.progress = round_data.method, {**report.state, "phase": "done"}
        tmp = None
        print(f"round {run_id}: {name} ({round_data.method}) registered", flush=True)
        return 0
    except BaseException as exc:  # every failure, a kill included, is recorded
        message = exc.message if isinstance(exc, ChatLMError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        if tmp is not None:  # gone before the run says failed: whoever reads "failed" finds nothing left
            shutil.rmtree(tmp, ignore_errors=True)
            tmp = None
        try:
            with db.transaction(sessions) as s:
                if registry.get_run(s, run_id=run_id).status in registry.RUNNING:
                    registry.fail_run(s, run_id=run_id, error=message)
        except Exception:  # the reaper marks it later from the dead pid
            traceback.print_exc()
        return 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def reader_round(settings: Settings, params: dict[str, Any]) -> Any:
    """A reader round's data, retrieved by the app's own library over a throwaway database (no model)."""
    from chatlm import compose
    from chatlm.evaluation.qa import QueryCache
    from chatlm.knowledge.embed import get_embedder

    with compose.scratch(settings, prefix="chatlm-reader-", load_model=False,
                         embedder=QueryCache(get_embedder())) as services:
        return reader.build_round(settings, params, services.chat)


def reader_parent(settings: Settings, sessions: sessionmaker[Session]) -> Named | None:
    """The reader adapter a round on knowledge answers continues from (``CHATLM_READER``), if any."""
    from chatlm.adapters import reader_for

    with db.transaction(sessions) as s:
        return reader_for(settings, s)


def _train_and_evaluate(settings: Settings, round_data: Any, params: dict[str, Any], parent: Named | None,
                        active: Named | None, tmp: Path,
                        report: Reporter) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Train on the base model (or from the parent adapter), save the adapter into ``tmp``, and
    measure it against its baseline and, when another one serves now, the active adapter: the
    figures a promotion decision needs. Returns (base model id, hyperparameters, metrics)."""
    import time

    from chatlm.adapters.scope import NEAR, Scope, asked, near_each, rows
    from chatlm.engine import loader
    from chatlm.engine.adapters import check_files
    from chatlm.evaluation import everyday, heldout
    from chatlm.evaluation.verdict import judge
    from chatlm.knowledge.embed import get_embedder
    from chatlm.training import trainer

    hp = trainer.hyperparams(round_data, params)
    report({"epochs": hp["epochs"]})  # passes over the data: what a later estimate scales by
    loaded = loader.load(settings.model, Path(settings.data_dir), settings.device)
    model = trainer.peft_model(loaded.model, parent[1] if parent else None)
    lora = model.peft_config["default"]
    hp["lora"] = {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                  "target_modules": sorted(lora.target_modules)}
    hp["parent"] = parent[0] if parent else None
    work = tmp / "_trainer"
    tr = trainer.make_trainer(model, loaded.tokenizer, round_data, hp, output_dir=str(work),
                              device=loaded.device, report=report)
    started = time.perf_counter()
    result = tr.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    model = tr.accelerator.unwrap_model(tr.model)
    model.save_pretrained(str(tmp), selected_adapters=["default"], safe_serialization=True)
    check_files(tmp)  # saved completely, or the round fails and nothing is registered
    report({"phase": "evaluating"})
    asked_with = everyday.asked_with(round_data)
    held, answers, scope = round_data.heldout, None, None  # judged on every question, unless it has a scope
    if trainer.corrections_round(round_data):  # served only to what it was taught: judged as served
        scope = Scope.of([r["prompt"] for r in round_data.train if r.get("prompt")], parent[0] if parent else None)
        scope.save(tmp)
        embed = get_embedder().embed
        taught = rows(embed, scope.questions)
        if asked_with is not None:
            answers = [i for i, yes in enumerate(near_each(embed, [q for q, _ in everyday.QUESTIONS], taught))
                       if yes]
        questions = sorted({asked(r["prompt"]) for r in [*held.pairs, *held.rated, *held.liked]})
        answered = {q for q, yes in zip(questions, near_each(embed, questions, taught), strict=True) if yes}
        held = held.within(lambda prompt: asked(prompt) in answered)
    if parent:
        model.load_adapter(parent[1], adapter_name="parent")
    metrics = heldout.compare(model, loaded.tokenizer, held, method=round_data.method,
                               baseline="parent" if parent else None,
                               baseline_name=parent[0] if parent else "base",
                               corrections=round_data.corrections, liked=round_data.liked,
                               everyday=asked_with, answers=answers)
    if scope is not None:
        metrics["scope"] = {"taught": len(scope.questions), "near": NEAR,
                            "heldout_prompts": round_data.heldout.prompts, "heldout_answered": held.prompts,
                            "everyday_answered": len(answers) if answers is not None else None}
    other = active if active and active != parent else None
    if other:
        model.load_adapter(other[1], adapter_name="active")
        with heldout.using(model, "active"):
            metrics["active"] = heldout.score(model, loaded.tokenizer, round_data.heldout)
        metrics["active_name"] = other[0]
    tokens = tr.state.num_input_tokens_seen
    metrics["train"] = {"loss": round(float(result.training_loss), 5), "steps": tr.state.global_step,
                        "seconds": round(seconds, 1), "tokens": tokens,
                        "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds else None,
                        "device": loaded.device}
    metrics["dataset"] = round_data.summary()
    if params.get("squad"):
        del tr, model
        qa = qa_figures(settings, Path(params["squad"]), tmp, {"baseline": parent, "active": other},
                        limit=int(params.get("squad_limit") or QA_LIMIT))
        for key in ("adapter", "baseline", "active"):
            if key in qa:
                metrics[key].update(qa.pop(key))
        metrics["qa"] = qa
    verdict = judge(metrics)  # the one definition of "better", stored with the adapter
    metrics["verdict"] = {"label": verdict.label, "summary": verdict.sentences()}
    return loaded.model_id, hp, metrics


def qa_figures(settings: Settings, squad: Path, adapter_path: Path, others: dict[str, Named | None],
               *, limit: int) -> dict[str, Any]:
    """SQuAD F1 of the new adapter, the baseline (``others["baseline"]``: the parent, None for the
    base model) and any other adapter in ``others``, through the app's own QA benchmark (oracle
    mode: the gold paragraph is the passage, so it measures the reader, not retrieval)."""
    from chatlm import compose
    from chatlm.engine import loader
    from chatlm.engine.local import LocalBackend
    from chatlm.evaluation import qa
    from chatlm.knowledge.embed import get_embedder
    from chatlm.knowledge.squad import load_squad

    articles = load_squad(squad)
    backend = LocalBackend(loader.load(settings.model, Path(settings.data_dir), settings.device))
    with compose.scratch(settings, backend, prefix="chatlm-round-qa-",
                         embedder=qa.QueryCache(get_embedder())) as services:
        service = services.chat
        service.adapters.load("candidate", str(adapter_path))
        runs: list[tuple[str, str | None]] = [("adapter", "candidate"), ("baseline", None)]
        for key, named in others.items():
            if named:
                service.adapters.load(named[0], named[1])
                runs = [r for r in runs if r[0] != key] + [(key, named[0])]
        out: dict[str, Any] = {"squad": str(squad), "limit_per_article": limit, "mode": "oracle"}
        for key, adapter in runs:
            rep = qa.evaluate(service, articles, qa.Options(squad=squad, mode="oracle", limit=limit,
                                                            adapter=adapter, progress=False))
            out[key] = {"qa_f1": rep["f1"], "qa_exact": rep["exact_match"]}
            out["questions"] = rep["n_questions"]
    return out


USAGE = """usage: python -m chatlm.training.worker RUN_ID | --next | --serve [SECONDS]
  RUN_ID   train this round (how a front end with CHATLM_TRAINER=local starts each one)
  --next   claim the oldest queued round and train it (exit 3 when none is queued)
  --serve  keep claiming queued rounds, polling every SECONDS (default 5): a training host"""


def claim(sessions: sessionmaker[Session]) -> int | None:
    """The id of the oldest queued round, or None."""
    with db.transaction(sessions) as s:
        run = registry.claim_next(s, pid=os.getpid())
        return run.id if run is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    serving = args[:1] == ["--serve"] and len(args) <= 2 and (len(args) == 1 or args[1].replace(".", "").isdigit())
    if not (serving or args == ["--next"] or (len(args) == 1 and args[0].isdigit())):
        print(USAGE, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    settings = Settings.from_env()
    if args[0].isdigit():
        return run_round(settings, int(args[0]))
    import time

    from chatlm import compose

    sessions = compose.sessions_for(settings)  # migrated and opened once, not at every poll
    if not serving:
        run_id = claim(sessions)
        return 3 if run_id is None else run_round(settings, run_id)
    poll = float(args[1]) if len(args) == 2 else 5.0
    log.info("training worker on %s: waiting for queued rounds", registry.HOST)
    while True:  # each round in a process of its own, as a front end would start it
        try:
            run_id = claim(sessions)
        except ChatLMError as exc:  # a busy or unreachable database: try again at the next poll
            log.warning("could not claim a round: %s", exc.message)
            run_id = None
        if run_id is None:
            time.sleep(poll)
            continue
        code = subprocess.run([sys.executable, "-m", "chatlm.training.worker", str(run_id)]).returncode
        log.info("round %d ended with exit code %d", run_id, code)
        with db.transaction(sessions) as s:  # it died before saying so itself
            if registry.get_run(s, run_id=run_id).status in registry.RUNNING:
                registry.fail_run(s, run_id=run_id, error=f"The training process exited with code {code}.")


if __name__ == "__main__":
    raise SystemExit(main())
