"""``python -m chatlm eval qa``: the QA harness's command line and its wiring.

The harness itself (``chatlm.evaluation.qa``) takes a service and articles; this entry point builds
the service over a throwaway database through ``chatlm.compose``, as the server and the CLI do, so
nothing the training code imports from the harness reaches the composition root.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatlm import compose
from chatlm.config import Settings
from chatlm.errors import InputError
from chatlm.evaluation.qa import MAX_NEW_TOKENS, SPLITS, Options, QueryCache, _registered_adapter, evaluate
from chatlm.evaluation.scoring import CHECKS, DEFAULT_CHECK, DEFAULT_MIN_DENSE, AbstainRule
from chatlm.knowledge.squad import load_squad


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m chatlm eval qa``."""
    p.add_argument("--squad", required=True, type=Path, help="a SQuAD v1.1/v2.0 JSON file")
    p.add_argument("--json", required=True, dest="json_out", help="where to write the report ('-' for stdout)")
    p.add_argument("--adapter", help="answer with this registered LoRA adapter (see `chatlm adapters list`), "
                                     "or 'base' for the bare model (default: what a fresh install answers "
                                     "with, the shipped reader for questions about the text)")
    p.add_argument("--k", type=int, default=3, help="passages retrieved per question (default 3)")
    p.add_argument("--limit", type=int, help="only the first N questions of each article")
    p.add_argument("--together", action="store_true", help="all articles of the file in one knowledge base")
    p.add_argument("--conversation", action="store_true", help="each article's questions in one chat, in order")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="calibration: tune thresholds here; report: quote figures from here (see bench/README.md)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--retrieval-only", action="store_true", help="no generation: recall@k and timing")
    how.add_argument("--oracle", action="store_true", help="answer from the gold paragraph alone (reference)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--batch", type=int, help="questions in flight at once (default CHATLM_MAX_BATCH)")
    p.add_argument("--check", choices=CHECKS, default=DEFAULT_CHECK,
                   help="answer check that turns an answer into an abstention: echo (adds nothing to the "
                        "question), grounded (or adds words not in the passages), verbatim (or is not "
                        f"copied from them), none (default {DEFAULT_CHECK})")
    p.add_argument("--min-dense", type=float, default=DEFAULT_MIN_DENSE,
                   help="abstain when no chunk reaches this cosine similarity to the question; "
                        f"0 turns it off (default {DEFAULT_MIN_DENSE})")
    p.add_argument("--details", action="store_true", help="include every question's record in the report")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_cli(args: argparse.Namespace, *, backend_factory: Callable[[Any], Any] | None = None) -> int:
    """``python -m chatlm eval qa``: evaluate, write the JSON report, print a summary on stderr."""
    squad = Path(args.squad)
    if not squad.is_file():
        raise InputError(f"No SQuAD file at {squad}")
    mode = "retrieval-only" if args.retrieval_only else "oracle" if args.oracle else "rag"
    options = Options(squad=squad, mode=mode, k=args.k, limit=args.limit, adapter=args.adapter,
                      max_new_tokens=args.max_new_tokens, batch=args.batch,
                      rule=AbstainRule(check=args.check, min_dense=args.min_dense or None),
                      details=args.details, progress=args.progress, split=args.split,
                      together=args.together, conversation=args.conversation)
    articles = load_squad(squad)
    user_settings = Settings.from_env()
    named = args.adapter if args.adapter and args.adapter != "base" else None
    adapter_path, reads = _registered_adapter(user_settings, named) if mode != "retrieval-only" else (None, False)
    from chatlm.knowledge.embed import get_embedder

    load_model = mode != "retrieval-only"
    backend = backend_factory(user_settings) if load_model and backend_factory is not None else None
    # a throwaway database; the model, its cache and the registry's adapters are the user's
    with compose.scratch(user_settings, backend, prefix="chatlm-eval-", load_model=load_model,
                         embedder=QueryCache(get_embedder())) as services:
        service = services.chat
        service.adapters.ensure_reader()  # what a fresh install answers: the shipped reader reads (CHATLM_READER)
        if adapter_path is not None:
            service.adapters.load(args.adapter, adapter_path)
            service.adapters.mark_reader(args.adapter, reads)
        report = evaluate(service, articles, options)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if args.json_out == "-":
        sys.stdout.write(text)
    else:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text, encoding="utf-8")
    print(summary(report), file=sys.stderr)
    return 0


def summary(report: dict[str, Any]) -> str:
    """One line per figure, for the terminal."""
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    keys = ("n_questions", "exact_match", "f1", "has_ans_f1", "no_ans_accuracy", "retrieval_recall_at_k",
            "seconds")
    head = f"eval qa {report['mode']} ({report['model']}, k={report['k']}"
    head += f", adapter={report['adapter']})" if report["adapter"] else ")"
    return head + ": " + ", ".join(f"{k}={fmt(report.get(k))}" for k in keys)
