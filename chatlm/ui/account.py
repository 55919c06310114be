"""The Account tab: one's own API keys (create, list, revoke), one's own password, and deleting
one's account with all its data.

A tab rather than an accordion in the sidebar: the keys table (name, prefix, dates, revoked) and a
new key's 50 characters need the width, and the sidebar stays the list of conversations. Every
handler acts on the caller taken from the request; no input names a user. Guests have no password
and no keys: the tab tells them to sign in. It exists only when accounts are on.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from chatlm.chat.turns import ChatService
from chatlm.errors import ChatLMError, InputError, NotFoundError, PermissionDeniedError
from chatlm.identity.accounts import AccountService, Actor
from chatlm.identity.lockout import SignInError
from chatlm.identity.requests import Who

KEY_COLUMNS = ["id", "name", "prefix", "created", "last used", "revoked"]
GUEST_LINE = ("You are a **guest**: API keys, a password and deleting an account are for signed-in "
              "users. Sign in to get an API key (Sign in, at the top of the sidebar).")
CONFIRM_DELETE = "Tick “Yes, delete my account and all my data” first."


def _go(label: str, path: str) -> Any:
    """The link shown after a change that ends this session (a button: Gradio opens Markdown links
    in a new tab, which would leave this page behind)."""
    return gr.update(value=label, link=path, visible=True)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""


def keys_frame(keys: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [[k["id"], k["name"], k["prefix"] + "…", _when(k["created_at"]), _when(k["last_used_at"]),
             "revoked" if k["revoked"] else ""] for k in keys]
    return pd.DataFrame(rows, columns=KEY_COLUMNS)


class AccountTab:
    """The signed-in user's own account; a guest's calls are refused with a warning."""

    def __init__(self, service: ChatService, who: Who) -> None:
        self.service = service
        self.who = who

    @property
    def accounts(self) -> AccountService:
        return self.who.identity.accounts

    def _member(self, request: gr.Request | None) -> Actor:
        actor = self.who.actor(request)
        if actor.is_guest:
            raise PermissionDeniedError("Guests have no account to manage: sign in first.")
        return actor

    def _keys(self, actor: Actor) -> tuple[pd.DataFrame, Any]:
        """The caller's keys, and the picker of those still usable (to revoke)."""
        keys = self.accounts.list_keys(actor)
        live = [(f"{k['name']} ({k['prefix']}…)", k["id"]) for k in keys if not k["revoked"]]
        return keys_frame(keys), gr.update(choices=live, value=None)

    def _check_password(self, actor: Actor, password: str) -> None:
        """The caller's current password, checked as signing in checks it (wrong ones count
        towards the lockout, so this is no way around it)."""
        try:
            self.accounts.sign_in(actor.name, password or "")
        except SignInError as exc:
            raise InputError("Your current password is wrong." if exc.message.startswith("Wrong")
                             else exc.message) from exc

    # ---- handlers ----------------------------------------------------------------------------
    def refresh(self, request: gr.Request) -> tuple[Any, ...]:
        """(guest line, member controls, keys table, key picker, new key box) for the caller."""
        actor = self.who.actor(request)
        if actor.is_guest:
            return (GUEST_LINE, gr.update(visible=False), pd.DataFrame(columns=KEY_COLUMNS),
                    gr.update(choices=[], value=None), gr.update(value="", visible=False))
        line = f"Signed in as **{actor.name}**{' (admin)' if actor.is_admin else ''}."
        return (line, gr.update(visible=True), *self._keys(actor), gr.update(value="", visible=False))

    def list_keys(self, request: gr.Request) -> tuple[pd.DataFrame, Any]:
        """The caller's keys (prefixes only); a guest has none to list and is refused."""
        return self._keys(self._member(request))

    def create_key(self, name: str, request: gr.Request) -> tuple[Any, ...]:
        """A new key for ``/v1``, shown this once (the list keeps only its prefix)."""
        try:
            actor = self._member(request)
            new = self.accounts.create_key(actor, name or "key")
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return f"No key made: {exc.message}", gr.update(), gr.update(), gr.update(value="", visible=False)
        status = (f"Key **{new.name}** made. Copy it now: it is shown this once and only its prefix "
                  f"`{new.prefix}…` is kept in the list.")
        return (status, *self._keys(actor), gr.update(value=new.key, visible=True))

    def revoke_key(self, key_id: int | str | None, request: gr.Request) -> tuple[Any, ...]:
        """Revoke one of one's own keys; another user's key id is not found (an admin's too: this
        tab is about one's own account)."""
        try:
            actor = self._member(request)
            wanted = _key_id(key_id)
            if wanted not in {k["id"] for k in self.accounts.list_keys(actor)}:
                raise NotFoundError(f"No API key {wanted} of yours.")
            self.accounts.revoke_key(actor, wanted)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return f"Not revoked: {exc.message}", gr.update(), gr.update()
        return (f"Key {wanted} is revoked: calls with it are refused from now on.", *self._keys(actor))

    def change_password(self, current: str, new: str, again: str, request: gr.Request) -> tuple[Any, ...]:
        """A new password, after the current one; it signs out every browser, this one too (a
        session is bound to the password it began with), so the page offers to sign in again."""
        try:
            actor = self._member(request)
            if (new or "") != (again or ""):
                raise InputError("The two new passwords differ.")
            if not self.accounts.has_password(actor):
                raise InputError("This account signs in with Hugging Face: it has no password here.")
            self._check_password(actor, current)
            self.accounts.set_password(actor, actor.name, new or "")
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return f"Password not changed: {exc.message}", "", gr.update(), gr.update(), gr.update()
        return ("Password changed. Every browser signed in as you is signed out, this one too: sign in "
                "again with the new password.", "", "", "", _go("Sign in again", "/login"))

    def delete_account(self, confirmed: bool, password: str, request: gr.Request) -> tuple[Any, ...]:
        """Delete the caller's account with their conversations, ratings, texts and keys; only with
        the box ticked and the password given (an account without one: the box alone)."""
        try:
            actor = self._member(request)
            if not confirmed:
                raise InputError(CONFIRM_DELETE)
            if self.accounts.has_password(actor):  # a Hugging Face account proved itself signing in
                self._check_password(actor, password)
            self.accounts.remove_user(actor, actor.name)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return f"Not deleted: {exc.message}", gr.update(), "", gr.update()
        return "Your account and all your data are deleted.", False, "", _go("Leave", "/login")

    # ---- layout ------------------------------------------------------------------------------
    def render(self, tab: gr.Tab) -> None:
        line = gr.Markdown(elem_id="ac-line")
        status = gr.Markdown(elem_id="ac-status")
        after = gr.Button(size="sm", link_target="_self", visible=False, elem_id="ac-after")
        with gr.Column(visible=False) as member:
            gr.Markdown("### API keys\nA key lets a program call the OpenAI-compatible API at `/v1` "
                        "as you (`Authorization: Bearer <key>`).")
            keys = gr.Dataframe(headers=KEY_COLUMNS, interactive=False, label="Your keys",
                                elem_id="ac-keys")
            with gr.Row():
                key_name = gr.Textbox(label="Name of a new key", value="key", elem_id="ac-key-name")
                create_btn = gr.Button("Create a key", variant="primary", elem_id="ac-create-key")
            new_key = gr.Textbox(label="Your new key: copy it now, it is not shown again",
                                 interactive=False, visible=False, buttons=["copy"], elem_id="ac-new-key")
            with gr.Row():
                # Free values to the API; the handler checks the id is one of the caller's keys.
                key_id = gr.Dropdown([], label="Key", allow_custom_value=True, elem_id="ac-key")
                revoke_btn = gr.Button("Revoke", variant="stop", elem_id="ac-revoke")
            gr.Markdown("### Password")
            with gr.Row():
                current = gr.Textbox(label="Current password", type="password", elem_id="ac-current")
                new = gr.Textbox(label="New password", type="password", elem_id="ac-new")
                again = gr.Textbox(label="New password again", type="password", elem_id="ac-again")
            password_btn = gr.Button("Change password", elem_id="ac-change-password")
            gr.Markdown("### Delete my account")
            with gr.Row():
                confirm = gr.Checkbox(label="Yes, delete my account and all my data", elem_id="ac-confirm")
                delete_password = gr.Textbox(label="Password", type="password", elem_id="ac-delete-password")
            delete_btn = gr.Button("Delete my account and all my data", variant="stop",
                                   elem_id="ac-delete")
            api = gr.Button("API", visible=False)  # carries /list_keys


        tab.select(self.refresh, None, [line, member, keys, key_id, new_key], api_visibility="private")
        api.click(self.list_keys, None, [keys, key_id], api_name="list_keys")
        create_btn.click(self.create_key, [key_name], [status, keys, key_id, new_key], api_name="create_key")
        revoke_btn.click(self.revoke_key, [key_id], [status, keys, key_id], api_name="revoke_key")
        password_btn.click(self.change_password, [current, new, again], [status, current, new, again, after],
                           api_name="change_password")
        delete_btn.click(self.delete_account, [confirm, delete_password],
                         [status, confirm, delete_password, after], api_name="delete_account")


def _key_id(value: int | str | float | None) -> int:
    """A key id from the picker or a script: a whole number."""
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    if number is None or not number.is_integer():
        raise InputError("Choose a key first.")
    return int(number)
