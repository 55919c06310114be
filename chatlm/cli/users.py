"""`python -m chatlm users add | list | passwd | role | signout | remove | key`: accounts from the shell.

Whoever runs these can read the database file anyway, so the shell acts as the operator (no actor).
A password is never an argument (it would sit in the shell history and in ``ps``): it is prompted
for twice on a terminal, or read as one line from standard input otherwise.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from chatlm.config import Settings
from chatlm.errors import InputError

if TYPE_CHECKING:
    from chatlm.identity.accounts import AccountService, Actor


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="users_command", required=True)
    add = sub.add_parser("add", help="create an account (the first one is admin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the account an admin")
    add.add_argument("--no-password", action="store_true",
                     help="no password (a Hugging Face sign-in or an API key only)")
    sub.add_parser("list", help="accounts with their role and number of conversations")
    pw = sub.add_parser("passwd", help="set a password (also lifts a lockout and ends its sessions)")
    pw.add_argument("name")
    role = sub.add_parser("role", help="make an account admin or user")
    role.add_argument("name")
    role.add_argument("role", choices=["admin", "user"])
    out = sub.add_parser("signout", help="end every session of an account (its browsers sign in again; "
                         "API keys stay)")
    out.add_argument("name")
    rm = sub.add_parser("remove", help="delete an account with all its conversations, ratings and texts")
    rm.add_argument("name")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    key = sub.add_parser("key", help="API keys for /v1: create (shown once), list, revoke")
    key.add_argument("action", choices=["create", "list", "revoke"])
    key.add_argument("name", help="the account")
    key.add_argument("--label", default="cli", help="a name for the new key")
    key.add_argument("--id", type=int, help="the key to revoke (from `users key list`)")


def read_password(prompt: str = "Password") -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass(f"{prompt} again: ") != first:
            raise InputError("The two passwords differ; nothing was changed.")
        return first
    line = sys.stdin.readline()
    if not line:
        raise InputError("No password on standard input; nothing was changed.")
    return line.rstrip("\r\n")


def main(args: argparse.Namespace) -> int:
    from chatlm.compose import sessions_for
    from chatlm.identity.accounts import AccountService

    accounts = AccountService(sessions_for(Settings.from_env()))
    cmd = args.users_command
    if cmd == "add":
        password = None if args.no_password else read_password()
        actor = accounts.add_user(None, args.name, password, admin=args.admin)
        print(f"user {actor.name} created ({'admin' if actor.is_admin else 'user'})")
    elif cmd == "list":
        rows = accounts.list_users(_operator())
        print(f"{'name':<40} {'role':<6} {'password':<8} {'locked':<6} chats")
        for u in rows:
            role = "guest" if u.is_guest else "admin" if u.is_admin else "user"
            print(f"{u.name:<40} {role:<6} {'yes' if u.has_password else 'no':<8} "
                  f"{'yes' if u.locked else 'no':<6} {u.conversations}")
    elif cmd == "passwd":
        accounts.actor(args.name)  # an unknown name fails before the prompt
        accounts.set_password(None, args.name, read_password("New password"))
        print(f"password of {args.name} changed")
    elif cmd == "role":
        accounts.set_role(None, args.name, args.role)
        print(f"{args.name} is now {args.role}")
    elif cmd == "signout":
        accounts.end_sessions(None, args.name)
        print(f"every session of {args.name} ended")
    elif cmd == "remove":
        accounts.actor(args.name)
        if not args.yes:
            if not sys.stdin.isatty():
                raise InputError("Removing an account deletes all its data: pass --yes to confirm.")
            if input(f"Delete {args.name} and all their conversations, ratings and texts? [y/N] ") != "y":
                print("nothing removed")
                return 1
        accounts.remove_user(None, args.name)
        print(f"user {args.name} removed with their data")
    else:
        return _key(accounts, args)
    return 0


def _key(accounts: AccountService, args: argparse.Namespace) -> int:
    actor = accounts.actor(args.name)
    if args.action == "create":
        new = accounts.create_key(actor, args.label)
        print(new.key)
        print(f"API key {new.id} ({new.prefix}…) for {actor.name}: shown once, store it now.", file=sys.stderr)
    elif args.action == "list":
        for k in accounts.list_keys(actor):
            state = "revoked" if k["revoked"] else f"last used {k['last_used_at'] or 'never'}"
            print(f"{k['id']:>4}  {k['prefix']}…  {k['name']:<20} {state}")
    else:
        if args.id is None:
            raise InputError("Name the key to revoke with --id (see `users key list NAME`).")
        accounts.revoke_key(_operator(), args.id)
        print(f"API key {args.id} revoked")
    return 0


def _operator() -> Actor:
    from chatlm.identity.accounts import Actor

    return Actor(user_id=0, name="(shell)", is_admin=True)
