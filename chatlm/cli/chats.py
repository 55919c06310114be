"""`python -m chatlm chats list | export | delete | undo`: a user's conversations from the shell,
through the same service (and the same ownership checks) as the sidebar. The operator names the
user (``--user``; the local user when accounts are off)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatlm.config import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="chats_command", required=True)
    ls = sub.add_parser("list", help="the user's chats, newest first, in the sidebar's date groups")
    ls.add_argument("--search", default="", help="only chats whose title or messages have this text")
    ex = sub.add_parser("export", help="one chat as Markdown, as the sidebar's Export gives it")
    ex.add_argument("id", type=int)
    ex.add_argument("--out", default="-", help="output .md path ('-' for stdout)")
    rm = sub.add_parser("delete", help="delete a chat (undo within 10 minutes with 'chats undo')")
    rm.add_argument("id", type=int)
    un = sub.add_parser("undo", help="bring back a chat deleted less than 10 minutes ago")
    un.add_argument("id", type=int)
    for command in (ls, ex, rm, un):
        command.add_argument("--user", help="the account whose chats these are (default: the local user)")


def main(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from chatlm import compose
    from chatlm.store.models import utcnow
    from chatlm.ui.sidebar import group_of

    services = compose.build(Settings.from_env(), load_model=False)
    try:
        chat = services.chat
        actor = services.accounts.actor(args.user) if args.user else chat.actor()
        if args.chats_command == "list":
            now, here = utcnow(), datetime.now().astimezone().tzinfo or UTC  # this machine's calendar
            for conv in chat.conversations(actor, args.search):
                print(f"{conv.id}\t{group_of(conv.updated_at, now, here)}\t{conv.title}")
        elif args.chats_command == "export":
            _, text = chat.transcript(actor, args.id)
            if args.out == "-":
                sys.stdout.write(text)
            else:
                Path(args.out).write_text(text, encoding="utf-8")
                print(f"chat {args.id} -> {args.out}", file=sys.stderr)
        elif args.chats_command == "delete":
            title = chat.delete(actor, args.id)
            print(f"deleted chat {args.id} ({title!r}); 'python -m chatlm chats undo {args.id}' brings it "
                  "back within 10 minutes")
        else:
            conv = chat.restore(actor, args.id)
            print(f"chat {args.id} ({conv.title!r}) is back")
    finally:
        services.close()
    return 0
