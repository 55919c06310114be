"""The Admin tab: every account on the server (role, guest, password, lockout, conversations), and
adding a user, changing a role, setting a new password (which also lifts a lockout) and removing a
user with all their data.

Admins only: each handler asks ``Who.admin`` with the event's request before anything else (the tab
is also hidden from others, but hiding is not access control), then calls AccountService with that
actor, which checks again. The tab exists only when accounts are on (``CHATLM_AUTH`` not ``none``);
the shell's ``python -m chatlm users`` does the same work in local mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from chatlm.chat.turns import ChatService
from chatlm.errors import ChatLMError, InputError
from chatlm.identity.accounts import GUEST_PREFIX, AccountService, Actor, UserInfo
from chatlm.identity.requests import Who

USER_COLUMNS = ["name", "role", "guest", "password", "locked", "conversations"]
ROLES = ["user", "admin"]
CONFIRM_REMOVE = "Tick “Yes, remove this user and all their data” first."


def users_frame(users: list[UserInfo], *, guests: bool = True) -> pd.DataFrame:
    """The users table: signed-up accounts first, then guests (there may be many of those), or
    without guests."""
    ordered = [u for u in sorted(users, key=lambda u: u.is_guest) if guests or not u.is_guest]
    rows = [[u.name, "admin" if u.is_admin else "user", "yes" if u.is_guest else "",
             "set" if u.has_password else "none", "locked" if u.locked else "", u.conversations]
            for u in ordered]
    return pd.DataFrame(rows, columns=USER_COLUMNS)


class AdminTab:
    """Account management for admins; a refusal (not an admin) raises before anything changes, a
    refusal of the service (a taken name, the last admin) is warned about and said in the status."""

    def __init__(self, service: ChatService, who: Who) -> None:
        self.service = service
        self.who = who

    @property
    def accounts(self) -> AccountService:
        return self.who.identity.accounts

    def _view(self, request: gr.Request | None, guests: bool = False) -> tuple[pd.DataFrame, Any]:
        """The table and the name picker as they are now, for whoever calls now: an admin who just
        demoted or removed themselves (or reset their own password, which signs them out) sees
        an empty table rather than an error. Guests (one per browser that visited) are listed
        only when asked for: they buried the accounts."""
        try:
            actor = self.who.admin(request)
        except ChatLMError:
            return pd.DataFrame(columns=USER_COLUMNS), gr.update(choices=[], value=None)
        table = users_frame(self.accounts.list_users(actor), guests=guests)
        return table, gr.update(choices=list(table["name"]))  # the picker offers whom the table lists

    def guests_label(self, request: gr.Request) -> Any:
        """The Show guests box names how many there are."""
        try:
            actor = self.who.admin(request)
        except ChatLMError:
            return gr.update()
        count = sum(u.is_guest for u in self.accounts.list_users(actor))
        return gr.update(label=f"Show guests ({count}: visitors who have not signed up)")

    def listed(self, guests: bool, request: gr.Request) -> tuple[pd.DataFrame, Any, bool]:
        """The table with or without guests, as the box says (and the page's state that its
        actions redraw the table by)."""
        self.who.admin(request)
        return (*self._view(request, bool(guests)), bool(guests))

    def _act(self, request: gr.Request | None, failed: str, change: Callable[[Actor], str],
             guests: bool) -> tuple[str, pd.DataFrame, Any, bool]:
        """Run ``change`` as the calling admin: (status, table, names, done); the table as the
        page last asked for it (with guests or not)."""
        actor = self.who.admin(request)
        try:
            status, done = change(actor), True
        except ChatLMError as exc:
            gr.Warning(exc.message)
            status, done = f"{failed}: {exc.message}", False
        return (status, *self._view(request, bool(guests)), done)

    # ---- handlers ----------------------------------------------------------------------------
    def refresh(self, guests: bool, request: gr.Request) -> tuple[pd.DataFrame, Any]:
        """The users table (the ``/list_users`` endpoint): admins only; guests as the page last
        asked (an API client: without)."""
        self.who.admin(request)
        return self._view(request, bool(guests))

    def add(self, name: str, password: str, admin: bool, guests: bool, request: gr.Request) -> tuple[Any, ...]:
        """A new account; an empty password makes one that cannot sign in until a password is set."""
        name = (name or "").strip()

        def change(actor: Actor) -> str:
            made = self.accounts.add_user(actor, name, password or None, admin=bool(admin))
            role = "an admin" if made.is_admin else "a user"
            how = "" if password else " It has no password yet: set one so that they can sign in."
            return f"Added **{made.name}** as {role}.{how}"

        status, users, names, done = self._act(request, "Not added", change, guests)
        cleared = ("", "", False) if done else (gr.update(),) * 3
        return status, users, names, *cleared

    def set_role(self, name: str | None, role: str | None, guests: bool, request: gr.Request) -> tuple[Any, ...]:
        """A guest is never made admin: whoever holds that browser's cookie would be one."""
        def change(actor: Actor) -> str:
            if role == "admin" and _named(name).startswith(GUEST_PREFIX):
                raise InputError("A guest cannot be an admin: anyone with that browser's cookie would be.")
            self.accounts.set_role(actor, _named(name), role or "")
            return f"**{name}** is now {'an admin' if role == 'admin' else 'a user'}."

        return self._act(request, "Role not changed", change, guests)[:3]

    def set_password(self, name: str | None, password: str, guests: bool, request: gr.Request) -> tuple[Any, ...]:
        """A new password for anyone (a forgotten one, or a locked account: it lifts the lockout);
        it signs that user out of every browser."""
        def change(actor: Actor) -> str:
            self.accounts.set_password(actor, _named(name), password or "")
            own = " You are signed out: sign in again with it." if name == actor.name else ""
            return f"New password set for **{name}**; any lockout is lifted.{own}"

        status, users, names, done = self._act(request, "Password not set", change, guests)
        return status, users, names, "" if done else gr.update()

    def remove(self, name: str | None, confirmed: bool, guests: bool, request: gr.Request) -> tuple[Any, ...]:
        """Delete the account and everything it owns; only with the confirmation ticked."""
        def change(actor: Actor) -> str:
            if not confirmed:
                raise InputError(CONFIRM_REMOVE)
            self.accounts.remove_user(actor, _named(name))
            return f"Removed **{name}** and all their data."

        status, users, names, done = self._act(request, "Not removed", change, guests)
        return status, users, {**names, "value": None} if done else names, False

    # ---- layout ------------------------------------------------------------------------------
    def render(self, tab: gr.Tab) -> None:
        gr.Markdown("Accounts on this server. Removing a user deletes their conversations, ratings, "
                    "texts and API keys; a new password signs them out everywhere and lifts a lockout.")
        status = gr.Markdown(elem_id="ad-status")
        users = gr.Dataframe(headers=USER_COLUMNS, interactive=False, wrap=True, label="Users",
                             elem_id="ad-users")
        guests = gr.Checkbox(label="Show guests", value=False, elem_id="ad-guests")
        listing = gr.State(False)  # whether this page lists guests (not a parameter of the API)
        with gr.Accordion("Add a user", open=True):
            with gr.Row():
                new_name = gr.Textbox(label="User name", elem_id="ad-new-name")
                new_password = gr.Textbox(label="Password (8 characters or more)", type="password",
                                          elem_id="ad-new-password")
                new_admin = gr.Checkbox(label="Admin", elem_id="ad-new-admin")
            add_btn = gr.Button("Add user", variant="primary", elem_id="ad-add")
        gr.Markdown("### Change a user")
        # Free text to the API (a script names users this page has not listed): the service checks.
        target = gr.Dropdown([], label="User", allow_custom_value=True, elem_id="ad-target")
        with gr.Row():
            role = gr.Radio(ROLES, value="user", label="Role", elem_id="ad-role")
            role_btn = gr.Button("Set role", elem_id="ad-set-role")
        with gr.Row():
            password = gr.Textbox(label="New password", type="password", elem_id="ad-password")
            password_btn = gr.Button("Set password", elem_id="ad-set-password")
        with gr.Row():
            confirm = gr.Checkbox(label="Yes, remove this user and all their data", elem_id="ad-confirm")
            remove_btn = gr.Button("Remove user", variant="stop", elem_id="ad-remove")

        view = [users, target]
        tab.select(self.refresh, [listing], view, api_name="list_users").then(
            self.guests_label, None, [guests], api_visibility="private")
        guests.input(self.listed, [guests], [*view, listing], api_visibility="private")
        add_btn.click(self.add, [new_name, new_password, new_admin, listing],
                      [status, *view, new_name, new_password, new_admin], api_name="add_user")
        role_btn.click(self.set_role, [target, role, listing], [status, *view], api_name="set_role")
        password_btn.click(self.set_password, [target, password, listing], [status, *view, password],
                           api_name="set_user_password")
        remove_btn.click(self.remove, [target, confirm, listing], [status, *view, confirm],
                         api_name="remove_user")


def _named(name: str | None) -> str:
    if not name or not str(name).strip():
        raise InputError("Choose a user first.")
    return str(name).strip()
