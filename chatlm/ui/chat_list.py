"""The chat list's handlers: open, new, rename, search, delete and undo, the page load, the model
picker kept in step with what the server serves, and who is signed in."""

from __future__ import annotations

from typing import Any

import gradio as gr

from chatlm.errors import ChatLMError, PermissionDeniedError
from chatlm.identity.accounts import Actor
from chatlm.ui import sidebar
from chatlm.ui.chat_defaults import plain
from chatlm.ui.chat_view import UNDONE, VIEW, ChatView, Outputs, _chat_id


class ChatList(ChatView):
    """Handlers of the conversation list and the page around it (not the turns: ``ChatUI``)."""

    def load(self, stored_id: int | None, request: gr.Request) -> Outputs:
        """Page load: reopen the conversation this browser had open, else the latest one."""
        return self._open(self._latest(self._actor(request), stored_id), request)

    def _latest(self, actor: Actor, stored_id: int | None = None) -> int | None:
        """``stored_id`` if it is one of the user's chats, else their latest one (None: no chat)."""
        convs = self.service.conversations(actor)
        return stored_id if stored_id in {c.id for c in convs} else (convs[0].id if convs else None)

    def zoned(self, tz: str, request: gr.Request) -> Any:
        """After the page load: the browser's time zone, kept for this page; the list of the chat it
        shows is redrawn by that calendar (a name this machine does not know is UTC: ``sidebar.zone``)."""
        if not request.session_hash:
            return gr.update()
        page = self.answers.page(request.session_hash)
        page.tz = tz[:64] if isinstance(tz, str) else ""
        return self._sidebar(self._actor(request), page.conv_id, request)

    def open(self, conv_id: float | None, request: gr.Request) -> Outputs:
        return self._open(_chat_id(conv_id), request)

    def new(self, request: gr.Request) -> Outputs:
        return self._open(None, request)

    def rename(self, target: int | None, title: str, shown: int | None, request: gr.Request) -> Any:
        """Rename one of the caller's chats (the list's menu, or ``/rename``); the list is redrawn."""
        actor, target = self._actor(request), _chat_id(target)
        if target is None:
            gr.Warning("Open a conversation first.")
            return self._sidebar(actor, shown, request)
        try:
            self.service.rename(actor, target, title)
        except ChatLMError as exc:
            gr.Warning(exc.message)
        return self._sidebar(actor, shown, request)

    def renamed(self, shown: int | None, event: gr.EventData, request: gr.Request) -> Any:
        target, title = sidebar.clicked(event)
        return self.rename(target, title, shown, request)

    def picked(self, event: gr.EventData, request: gr.Request) -> Outputs:
        """A chat clicked in the list: open it (someone else's id is refused like a missing one)."""
        target, _ = sidebar.clicked(event)
        if target is None:
            return VIEW()
        try:
            return self._open(target, request)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return VIEW()

    def search(self, query: str, shown: int | None, request: gr.Request) -> Any:
        """Keep the list to chats whose title or messages have ``query`` (this page only)."""
        if request is not None and request.session_hash:
            self.answers.page(request.session_hash).query = (query or "")[:200]
        return self._sidebar(self._actor(request), shown, request)

    def whoami(self, request: gr.Request) -> tuple[str, Any, Any, Any]:
        """Who is signed in, the sign-out (or sign-in) link, and the admin's tabs shown to admins
        only (Training; Admin only when there are accounts to manage). The link is a button: Gradio
        opens every Markdown link in a new tab, and signing out there left this page as it was.
        Sign out is a POST (``SIGN_OUT``): the server ends no session on a GET another site can send."""
        if self.service.settings.auth == "none":
            return "", gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)
        actor = self.who.actor(request)
        if actor.is_guest:
            line = "You are a **guest**: your chats stay in this browser."
            link = gr.update(value="Sign in", visible=True)
        else:
            role = " (admin)" if actor.is_admin else ""
            line = f"Signed in as **{actor.name}**{role}."
            link = gr.update(value="Sign out", visible=True)
        return line, gr.update(visible=actor.is_admin), gr.update(visible=actor.is_admin), link

    def models(self, choice: str | None, drawn: Any, request: gr.Request) -> tuple[Any, Any]:
        """A page's model picker and what it last drew, every ``MODELS_S`` and after Promote or Roll
        back: redrawn when the default or the adapters served changed since this page last drew it
        (a promotion or rollback on any page, for every user), the user's choice kept while it is
        still offered; otherwise nothing changes (no flicker). Cheap: the service's memory only."""
        try:
            self.who.actor(request)  # a page whose session ended learns nothing, and hears nothing
        except PermissionDeniedError:
            return gr.update(), gr.update()
        served = self._served()
        if served == drawn:
            return gr.update(), gr.update()
        return self._models(choice, served, keep=True), served

    def sidebar(self, conv_id: int | None, request: gr.Request) -> Any:
        return self._sidebar(self._actor(request), conv_id, request)

    def delete(self, target: int | None, shown: int | None, request: gr.Request) -> Outputs:
        """Delete one of the caller's chats at once and offer Undo; a page that showed it opens
        the latest chat left. (The view's outputs, then the Undo bar, its words and the id.)"""
        actor, target = self._actor(request), _chat_id(target)
        if target is None:
            gr.Warning("There is no conversation to delete.")
            return UNDONE()
        try:
            title = self.service.delete(actor, target)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return UNDONE()
        view = (self._opened(self._latest(actor), request) if target == shown or shown is None
                else dict(list=self._sidebar(actor, shown, request)))
        return UNDONE(**view, undo_box=gr.update(visible=True), undo_text=f"Deleted “{plain(title)}”.",
                      undo_id=target)

    def undoable(self, request: gr.Request) -> tuple[Any, str, int | None]:
        """At page load: the Undo bar for the user's latest delete still in its window (a reload
        used to lose it), else none."""
        last = self.service.last_deleted(self._actor(request))
        if last is None:
            return gr.update(visible=False), "", None
        return gr.update(visible=True), f"Deleted “{plain(last[1])}”.", last[0]

    def deleted(self, shown: int | None, event: gr.EventData, request: gr.Request) -> Outputs:
        target, _ = sidebar.clicked(event)
        return self.delete(target, shown, request)

    def undo(self, target: int | None, request: gr.Request) -> Outputs:
        """Bring a deleted chat back (within ``repo.UNDO_WINDOW``) and open it."""
        hidden, target = dict(undo_box=gr.update(visible=False), undo_text="", undo_id=None), _chat_id(target)
        if target is None:
            return UNDONE(**hidden)
        try:
            self.service.restore(self._actor(request), target)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return UNDONE(**hidden)
        return UNDONE(**self._opened(target, request), **hidden)

    def exclude(self, conv_id: int | None, excluded: bool, request: gr.Request) -> None:
        if conv_id is not None:
            self.service.set_excluded(self._actor(request), conv_id, excluded)
