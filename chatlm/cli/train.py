"""`python -m chatlm train`, `python -m chatlm adapters list | activate NAME | rollback` and
`python -m chatlm eval perplexity`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chatlm.config import Settings
from chatlm.errors import ChatLMError
from chatlm.training import METHODS, document, options


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="auto: DPO with enough pairs, else KTO with likes and dislikes, else SFT; "
                        "document: learn one text (--document or --text imply it)")
    p.add_argument("--document", type=int, metavar="ID", help="learn this stored (loaded) text")
    p.add_argument("--text", metavar="FILE", help="learn this file's text (.txt, .md, .html, .pdf)")
    p.add_argument("--window", type=int, metavar="N",
                   help=f"tokens per window of a learnt text (default {options.WINDOW})")
    p.add_argument("--epochs", type=float,
                   help="passes over the data (default SFT: enough for 40 steps, at most 20, 1 from 160 "
                        "records; else 3 below 50 records, 1 from 50)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--lr", type=float, help="learning rate (default: 2e-4 SFT, 1e-4 KTO/DPO)")
    p.add_argument("--from-active", action="store_true", help="continue from the active adapter")
    p.add_argument("--guests", action="store_true",
                   help="also learn from guests' ratings (visitors who never signed in; left out by default)")
    p.add_argument("--squad", help="also measure SQuAD F1 on this file (slow: generates answers)")
    p.add_argument("--reader-data", metavar="FILE",
                   help="with --method reader: the SQuAD training file its records come from")
    p.add_argument("--reader-limit", type=int, metavar="N", help="with --method reader: at most N questions an article")
    p.add_argument("--reader-skip", type=int, metavar="N",
                   help="with --method reader: skip an article's first N questions (those an earlier round used)")
    p.add_argument("--squad-limit", type=int, metavar="N", help="questions an article for --squad (default 10)")
    p.add_argument("--wait", action="store_true", help="follow the round with a progress bar until it ends")


def add_adapters_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="adapters_command", required=True)
    sub.add_parser("list", help="registered adapters with their held-out figures")
    act = sub.add_parser("activate", help="make an adapter the default for new chats")
    act.add_argument("name", help="adapter name, or 'base' for the base model")
    act.add_argument("--yes", action="store_true", help="serve it even when its held-out figures are worse")
    sub.add_parser("rollback", help="activate the adapter that was active before the current one")


def run_train(args: argparse.Namespace) -> int:
    from chatlm.compose import sessions_for
    from chatlm.training import rounds
    from chatlm.training.options import RoundOptions

    settings = Settings.from_env()
    sessions = sessions_for(settings)
    method = "document" if args.method == "auto" and (args.document is not None or args.text) else args.method
    asked = RoundOptions(method, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps, squad=args.squad,
                          from_active=args.from_active, guests=bool(args.guests), reader_data=args.reader_data,
                          reader_limit=args.reader_limit, reader_skip=args.reader_skip or 0,
                          squad_limit=args.squad_limit, document=args.document, text=args.text, window=args.window)
    run_id = rounds.start_round(settings, asked, sessions=sessions)
    log = rounds.log_path(settings, run_id)
    if settings.trainer == "queue":
        print(f"training round {run_id} queued for a training worker (python -m chatlm.training.worker "
              "--serve on the training host)", file=sys.stderr)
    else:
        print(f"training round {run_id} started in its own process (log: {log})", file=sys.stderr)
    if not args.wait:
        print("it goes on in the background; `python -m chatlm adapters list` shows the result", file=sys.stderr)
        return 0
    follow = _ProgressBar(run_id)
    try:
        run = rounds.wait(settings, run_id, on_progress=follow, sessions=sessions)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; round {run_id} goes on in the background (log: {log})", file=sys.stderr)
        return 130
    finally:
        follow.close()
    if run.status != "succeeded":
        print(f"error: training round {run_id} failed: {run.error}", file=sys.stderr)
        return 1
    from chatlm.store import db, registry

    with db.transaction(sessions) as s:
        adapter = registry.get_adapter(s, name=str(run.adapter_name))
    from chatlm.evaluation.verdict import judge

    verdict = judge(adapter.metrics)
    print(f"{adapter.name}: {adapter.method} adapter, {_figures(adapter.metrics)}")
    for line in verdict.sentences():
        print(f"  {line}")
    print(f"make it the default with: python -m chatlm adapters activate {adapter.name}"
          + (" --yes (it is worse)" if verdict.is_worse else ""))
    return 0


class _ProgressBar:
    """A tqdm bar that follows the run's progress row."""

    def __init__(self, run_id: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=f"round {run_id}", unit="step", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, run: Any) -> None:
        p = run.progress or {}
        if p.get("total_steps") and self.bar.total != p["total_steps"]:
            self.bar.total = p["total_steps"]
        self.bar.n = int(p.get("step") or 0)
        post: dict[str, Any] = {"phase": p.get("phase", run.status)}
        if p.get("loss"):
            post["loss"] = f"{p['loss'][-1][1]:.4f}"
        if p.get("tokens_per_s"):
            post["tok/s"] = p["tokens_per_s"]
        if p.get("seconds_left") is not None:
            post["left"] = f"{p['seconds_left']:.0f}s"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _figures(metrics: dict[str, Any]) -> str:
    """The verdict (``chatlm.evaluation.verdict``, as the Training tab says it), then the figures it
    rests on next to the baseline's, e.g. ``worse: qa_f1 0.667 (base 0.923)``."""
    from chatlm.evaluation.verdict import judge, matters

    verdict = judge(metrics)
    new, old = metrics.get("adapter", {}), metrics.get("baseline", {})
    keys = matters(metrics)
    if not keys:
        return "no held-out figures"
    base = metrics.get("baseline_name", "base")
    text = f"{verdict.label}: " + ", ".join(f"{k} {new[k]:g} ({base} {old[k]:g})" for k in keys)
    if verdict.learnt.get("corrections"):
        text += (f"; corrections answered as written {verdict.learnt.get('adapter', 0)}/"
                 f"{verdict.learnt['corrections']} (before {verdict.learnt.get('baseline', 0)})")
    return text


def run_adapters(args: argparse.Namespace) -> int:
    from chatlm.compose import sessions_for
    from chatlm.store import db, registry

    settings = Settings.from_env()
    sessions = sessions_for(settings)
    with db.transaction(sessions) as s:
        if args.adapters_command == "list":
            _table(registry.list_adapters(s))
        elif args.adapters_command == "activate":
            name = None if args.name == "base" else args.name
            _check_adapter_files(s, name)
            if name is not None and not args.yes:
                from chatlm.evaluation.verdict import judge

                verdict = judge(registry.get_adapter(s, name=name).metrics)
                if verdict.is_worse:
                    print(f"not activated: {verdict.confirm_text(name).replace('Press Promote again', 'Add --yes')}",
                          file=sys.stderr)
                    return 1
            registry.activate(s, name=name)
            print(f"{args.name} is active: new chats use it once the server syncs (no restart)")
        else:
            target = registry.rollback_target(s)
            _check_adapter_files(s, target.name if target else None)
            now = registry.activate(s, name=target.name if target else None)
            print(f"rolled back: {now.name if now else 'the base model'} is active")
    return 0


def _check_adapter_files(session: Any, name: str | None) -> None:
    """Refuse to make an adapter active whose files are gone or incomplete (the base model always serves)."""
    if name is None:
        return
    from pathlib import Path

    from chatlm.engine.adapters import check_files
    from chatlm.store import registry

    check_files(Path(registry.get_adapter(session, name=name).path))


def _table(adapters: list[Any]) -> None:
    if not adapters:
        print("no adapters yet: rate some answers, then run `python -m chatlm train`")
        return
    rows = [("", "NAME", "METHOD", "PARENT", "CREATED", "HELD-OUT (vs baseline)")]
    rows += [("*" if a.is_active else "", a.name, a.method, a.parent or "-",
              a.created_at.strftime("%Y-%m-%d %H:%M"), _figures(a.metrics or {})) for a in adapters]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def add_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m chatlm eval perplexity``."""
    p.add_argument("--text", required=True, metavar="FILE", help="the text (.txt, .md, .html, .pdf)")
    p.add_argument("--adapter", metavar="NAME",
                   help="score with this registered LoRA adapter (default: the base model)")
    p.add_argument("--window", type=int, default=options.WINDOW, metavar="N",
                   help=f"tokens per window (default {options.WINDOW}, as a document round cuts it)")
    p.add_argument("--heldout", action="store_true",
                   help="only the windows a document round on this text holds out (never trained on)")
    p.add_argument("--json", dest="json_out", help="also write the figures as JSON here ('-' for stdout)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_perplexity(args: argparse.Namespace) -> int:
    """Perplexity of a file's text under the base model or a registered adapter: the figure a
    document round reports, measured on any text (the adapter is found as `eval qa` finds it)."""
    import json
    from pathlib import Path

    from chatlm.engine import adapters, loader
    from chatlm.evaluation.qa import _registered_adapter

    options.check_window(args.window)
    settings = Settings.from_env()
    text = document.read_text_file(Path(args.text))
    adapter_path, _ = _registered_adapter(settings, args.adapter)
    loaded = loader.load(settings.model, Path(settings.data_dir), settings.device)
    model = loaded.model
    if adapter_path is not None:
        adapters.check_adapter(Path(adapter_path), model, args.adapter)
        model = adapters.attach(model, Path(adapter_path), args.adapter)
    pieces = document.windows(loaded.tokenizer, text, args.window)
    if args.heldout:
        pieces = document.split(pieces)[1]
    ppl, tokens = document.perplexity(model, loaded.tokenizer, pieces, progress=args.progress)
    report = {"text": str(args.text), "model": loaded.model_id, "adapter": args.adapter, "window": args.window,
              "heldout": args.heldout, "windows": len(pieces), "tokens": tokens, "perplexity": round(ppl, 4)}
    if args.json_out == "-":
        print(json.dumps(report))
    elif args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    line = (f"perplexity {ppl:.4f} over {tokens} tokens in {len(pieces)}{' held-out' if args.heldout else ''} "
            f"windows of {args.window} ({args.adapter or 'base model'}, {loaded.model_id})")
    print(line, file=sys.stderr if args.json_out == "-" else sys.stdout)
    return 0


def main(args: argparse.Namespace) -> int:
    """Dispatch from ``chatlm.cli.main`` (errors are ChatLMError, printed there)."""
    if args.command == "train":
        return run_train(args)
    if args.command == "adapters":
        return run_adapters(args)
    raise ChatLMError(f"unknown command {args.command}")
