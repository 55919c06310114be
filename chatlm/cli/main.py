"""`python -m chatlm serve | ask | chats | export | db upgrade | eval qa | eval perplexity | train | adapters |
users`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from datetime import datetime

from chatlm.config import Settings
from chatlm.errors import ChatLMError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chatlm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the web UI and the /v1 API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    ask = sub.add_parser("ask", help="ask one question; streams the answer and stores it")
    ask.add_argument("question")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--system", help="system prompt (default: CHATLM_SYSTEM_PROMPT)")
    from chatlm.cli import chats

    chats.add_arguments(sub.add_parser("chats", help="a user's chats: list, export, delete, undo"))
    exp = sub.add_parser("export", help="write training records from stored ratings as JSONL")
    exp.add_argument("--format", required=True, choices=["messages", "sft", "kto", "dpo"])
    exp.add_argument("--since", type=_date, help="only answers from this date on (YYYY-MM-DD)")
    exp.add_argument("--adapter", help="only answers of this adapter ('base' for the base model)")
    exp.add_argument("--user", help="only ratings by this user")
    exp.add_argument("--out", required=True, help="output .jsonl path ('-' for stdout)")
    dbp = sub.add_parser("db", help="database maintenance")
    dbp.add_argument("action", choices=["upgrade"])
    ev = sub.add_parser("eval", help="benchmarks through the app's own code paths")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    from chatlm.cli import qa

    qa.add_arguments(ev_sub.add_parser(
        "qa", help="SQuAD v2 question answering over knowledge texts (temporary database)"))
    from chatlm.cli import train as training_cli

    training_cli.add_perplexity_arguments(ev_sub.add_parser(
        "perplexity", help="perplexity of a text under the base model or a registered adapter"))
    training_cli.add_train_arguments(sub.add_parser(
        "train", help="train a LoRA adapter from stored ratings or one text (a round in its own process)"))
    training_cli.add_adapters_arguments(sub.add_parser("adapters", help="list, activate or roll back adapters"))
    from chatlm.cli import users

    users.add_arguments(sub.add_parser("users", help="accounts: add, list, passwd, role, remove, key"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            from chatlm.server import serve

            serve(Settings.from_env(host=args.host, port=args.port))
        elif args.command == "ask":
            return _ask(args)
        elif args.command == "export":
            return _export(args)
        elif args.command == "chats":
            from chatlm.cli.chats import main as chats_main

            return chats_main(args)
        elif args.command == "db":
            from chatlm.store import db

            settings = Settings.from_env()
            db.upgrade(settings.db_url)
            print(f"database at {settings.db_url} is at the latest revision")
        elif args.command == "eval" and args.eval_command == "perplexity":
            from chatlm.cli.train import run_perplexity

            return run_perplexity(args)
        elif args.command == "eval":
            from chatlm.cli.qa import run_cli

            return run_cli(args)
        elif args.command == "users":
            from chatlm.cli.users import main as users_main

            return users_main(args)
        elif args.command in ("train", "adapters"):
            from chatlm.cli.train import main as training_main

            return training_main(args)
    except ChatLMError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _ask(args: argparse.Namespace) -> int:
    from chatlm import torch_threads
    from chatlm.compose import build
    from chatlm.engine.params import SamplingParams

    torch_threads.one_thread_here()  # this thread loads; decoding gets the cores (chatlm.torch_threads)
    # a new chat has no text attached, so the reader adapter would never answer: not loading it
    # (and peft) takes about 0.6 s off the start
    settings = Settings.from_env()
    if settings.quantize == "auto":  # one answer: packing fp16 weights (1.8 s) costs more than it saves
        settings = dataclasses.replace(settings, quantize="none")
    service = build(settings, reader=False).chat
    try:
        actor = service.actor()
        conv = service.new_conversation(actor, system_prompt=args.system)
        reply = service.send(actor, conv.id, args.question, SamplingParams(
            temperature=args.temperature, max_new_tokens=args.max_new_tokens))
        for delta in reply:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if reply.generation.finish_reason == "error":
            print(f"error: {reply.generation.error}", file=sys.stderr)
            return 1
        print(f"(stored as conversation {conv.id})", file=sys.stderr)
    finally:
        service.backend.close()
    return 0


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from chatlm.compose import sessions_for
    from chatlm.feedback import load, records
    from chatlm.store import db

    sessions = sessions_for(Settings.from_env())
    with db.transaction(sessions) as s:
        answers = load.rated_answers(s, since=args.since, adapter=args.adapter, user=args.user)
        convs = (load.conversations(s, since=args.since, user=args.user)
                 if args.format == "messages" else [])
    recs, counts = records.build(args.format, answers, convs)
    text = records.to_jsonl(recs)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print(f"export {args.format}: {counts.summary()} -> {args.out}", file=sys.stderr)
    return 0
