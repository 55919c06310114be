"""The chat page's layout: the sidebar, the tabs and the chat with its controls, each wired to its
``ChatUI`` handler (the handlers hold the behaviour; this holds what is on the screen and which
event calls which handler)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from chatlm.adapters.serving import DEFAULT_MODEL
from chatlm.chat.turns import ChatService
from chatlm.feedback.reports import FeedbackService
from chatlm.identity.requests import Who
from chatlm.training.manage import TrainingService
from chatlm.ui import branches, refusals, sidebar
from chatlm.ui.chat import WATCH_S, ChatUI
from chatlm.ui.chat_defaults import DEFAULT_MAX_NEW, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, defaults
from chatlm.ui.chat_view import API, FOLLOWED, MODELS_S, STARTED, UNDONE, VIEW

CHAT_HEIGHT = "calc(100dvh - 380px - max(0px, 768px - 100vw) / 5)"
"""The conversation fills the window's height, leaving the tab bar, the model picker, the notice
and the message box in view; a window narrower than 768 px (a phone: the notice wraps to more
lines, the buttons to another row) leaves a little more (76 px at 390 px).
tests/test_browser_layout.py measures it at 1400×900 and 390×844."""
WELCOME = (
    "### Welcome to chatlm\n"
    "Ask anything, or press **Attach** beside the message box (or drop a file here) to load a text, "
    "and ask about it: answers about a text quote it and show their sources.\n\n"
    "Rate answers with the thumbs under them, up or down (and, if you like, write a better one): "
    "your ratings teach the next version of this model in the **Training** tab.")
EXAMPLES = (
    "Explain how a rainbow forms, in three sentences.",
    "Write a short, friendly note declining a meeting invitation.",
    "Give me five ideas for a rainy Sunday at home.",
)
"""Prompts offered on an empty chat; clicking one sends it."""
NO_STORAGE = ("⚠️ **This Space has no persistent storage**: conversations, ratings, loaded texts and "
              "trained adapters are lost when it restarts. Its owner can add storage in the Space's "
              "settings (Persistent storage), which keeps them in `/data`.")
SIGN_OUT = """() => {
  if (document.querySelector('#sign-link')?.innerText.trim() !== 'Sign out') { location.href = '/login'; return; }
  const form = document.createElement('form');
  form.method = 'post'; form.action = '/logout'; document.body.append(form); form.submit();
}"""
"""The sidebar's Sign in goes to the sign-in page; its Sign out posts the sign-out form."""
BROWSER_ZONE = "(zone) => [Intl.DateTimeFormat().resolvedOptions().timeZone || '']"
"""``zoned``'s inputs, with the browser's time zone in place of the hidden box's value."""


class ChatPage(ChatUI):
    """The chat's handlers laid out as a page (``build``), with the tabs beside the chat."""

    def __init__(self, service: ChatService, who: Who, *, training: TrainingService,
                 feedback: FeedbackService) -> None:
        super().__init__(service, who)
        self.training, self.feedback = training, feedback

    # ---- layout --------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        from chatlm.ui.account import AccountTab
        from chatlm.ui.admin import AdminTab
        from chatlm.ui.feedback import FeedbackPanel, FeedbackTab
        from chatlm.ui.knowledge import KnowledgePanel
        from chatlm.ui.training import TrainingTab

        if self.service.settings.auth == "none":  # made before simultaneous first visitors race to
            self.who.identity.local()
        with gr.Blocks(title="chatlm") as demo:
            if self.service.settings.ephemeral_space:
                gr.Markdown(NO_STORAGE, elem_id="no-storage")
            ids = gr.State([])
            selected = gr.State(None)
            conv_id = gr.State(None)
            stored = gr.BrowserState(None, storage_key="chatlm-conversation")
            zone = gr.Textbox(visible=False, label="time zone")  # the browser's, read by BROWSER_ZONE
            with gr.Sidebar(open=True):
                gr.Markdown("# chatlm", elem_id="app-title")  # the page's one heading, for screen readers
                account = gr.Markdown(elem_id="account")
                sign_link = gr.Button(size="sm", visible=False, elem_id="sign-link")
                gr.Markdown("## Conversations")
                new_btn = gr.Button("New chat", variant="secondary", elem_id="new-chat")
                search = gr.Textbox(label="Search chats", placeholder="Search titles and messages",
                                    elem_id="chat-search", max_lines=1)
                with gr.Group(visible=False, elem_id="undo-box") as undo_box:
                    undo_text = gr.Markdown(elem_id="undo-text")
                    undo_btn = gr.Button("Undo", size="sm", elem_id="undo")
                undo_id = gr.State(None)
                conv_list = sidebar.component()
                excluded = gr.Checkbox(label="Don't use this conversation for training",
                                       elem_id="exclude")
            # a phone wraps the tabs to a second line (a "⋯" menu hid Admin and Account)
            with gr.Tabs(overflow_behavior="wrap", elem_id="tabs"):
                with gr.Tab("Chat", elem_id="chat-tab"):
                    model = gr.Dropdown(label="Model of this chat", choices=[("Default", DEFAULT_MODEL)],
                                        value=DEFAULT_MODEL, elem_id="model")
                    # what differs from the defaults
                    with gr.Row(elem_id="settings-row", visible=False) as settings_row:
                        changed_line = gr.Markdown(elem_id="settings-changed")
                        reset = gr.Button("Reset", size="sm", scale=0, min_width=70, elem_id="settings-reset")
                    drawn = gr.State(None)  # what this page's picker last named (``models``)
                    models_timer = gr.Timer(MODELS_S)
                    # no "chatlm" badge over the chat: it covered the first lines and the 👎 form's title
                    chatbot = gr.Chatbot(height=CHAT_HEIGHT, min_height=240, label="chatlm", show_label=False,
                                         elem_id="chatbot", editable="user",
                                         feedback_options=("Like", "Dislike"), buttons=["copy"],
                                         placeholder=WELCOME, examples=[{"text": t} for t in EXAMPLES])
                    marks = branches.component()
                    notice = gr.Markdown(elem_id="notice")
                    panel = FeedbackPanel(self.service, self.who)  # drawn under the answer it rates (branches)
                    panel.render(conv_id, ids, selected)
                    knowledge = KnowledgePanel(self.service, self.who)
                    knowledge.chips()  # a chip per text loaded into this chat, over the message box
                    with gr.Row(equal_height=True, elem_id="message-row"):  # the box spans the row; small buttons
                        knowledge.attach_button()
                        box = gr.Textbox(placeholder="Ask anything…", show_label=False, scale=12, lines=1,
                                         max_lines=8, elem_id="message", autofocus=True)
                        send_btn = gr.Button("Send", variant="primary", scale=0, min_width=80, elem_id="send")
                        stop_btn = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id="stop",
                                             visible=False)
                        retry_btn = gr.Button("Retry", size="sm", scale=0, min_width=80, elem_id="retry")
                        continue_btn = gr.Button("Continue", size="sm", scale=0, min_width=80, elem_id="continue")
                        watchdog = gr.Timer(WATCH_S, active=False)
                        api = gr.Button("API", visible=False)  # carries /send and /retry (ChatInterface's way)
                        target = gr.Number(visible=False, precision=0, label="conversation")  # the API's chat id
                        new_title = gr.Textbox(visible=False, label="title")
                    with gr.Accordion("Generation settings", open=False):
                        sys_prompt = gr.Textbox(label="System prompt", lines=2,
                                                value=self.service.settings.system_prompt,
                                                info="Instructions the model reads before every message of this chat.")
                        temperature = gr.Slider(0, 2, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature",
                                                info="Higher: more varied answers; 0: the same answer every time.")
                        top_p = gr.Slider(
                            0.05, 1, value=DEFAULT_TOP_P, step=0.05, label="Top-p",
                            info="Only the likeliest next words, together this probability, are drawn from.")
                        max_new = gr.Slider(1, self._max_new(), value=min(DEFAULT_MAX_NEW, self._max_new()),
                                            step=1, label="Maximum new tokens",
                                            info="The longest answer, in tokens (a token is about ¾ of a word).")
                    knowledge.render(conv_id)
                with gr.Tab("Feedback", elem_id="feedback-tab") as feedback_tab:
                    FeedbackTab(self.service, self.who, self.feedback).render(feedback_tab)
                with gr.Tab("Training", elem_id="training-tab",
                            visible=self.service.settings.auth == "none") as training_tab:
                    training = TrainingTab(self.service, self.who, self.training, self.feedback)
                    training.render(training_tab)
                accounts_on = self.service.settings.auth != "none"
                with gr.Tab("Admin", elem_id="admin-tab", visible=False) as admin_tab:
                    if accounts_on:  # local mode: hidden and empty (``python -m chatlm users`` there)
                        AdminTab(self.service, self.who).render(admin_tab)
                if accounts_on:
                    with gr.Tab("Account", elem_id="account-tab") as account_tab:
                        AccountTab(self.service, self.who).render(account_tab)

            # the components the handlers name in their outputs (chat_view: VIEW, STARTED, ...)
            named = dict(chat=chatbot, ids=ids, conv_id=conv_id, list=conv_list, system_prompt=sys_prompt,
                         temperature=temperature, top_p=top_p, max_new=max_new, model=model, notice=notice,
                         excluded=excluded, box=box, send_btn=send_btn, stop_btn=stop_btn, watchdog=watchdog,
                         retry_btn=retry_btn, continue_btn=continue_btn, undo_box=undo_box,
                         undo_text=undo_text, undo_id=undo_id)
            view, undone, api_out = VIEW.of(named), UNDONE.of(named), API.of(named)
            started, followed = STARTED.of(named), FOLLOWED.of(named)
            asked = [box, conv_id, sys_prompt, temperature, top_p, max_new, model]
            tuning = [conv_id, temperature, top_p, max_new, model]
            # Answers are followed, not run, by events: none waits in Gradio's queue for a slot
            # (the backend's own bounded queue says "busy" at once instead).
            quick: dict[str, Any] = dict(concurrency_limit=None, api_visibility="private")
            # Gradio's "processing | 0.1s" and "queue: 1/1" go on the chat, never into the notice
            starts: dict[str, Any] = dict(**quick, show_progress_on=[chatbot])
            follow: dict[str, Any] = dict(fn=self.follow, inputs=[conv_id], outputs=followed,
                                          trigger_mode="multiple", show_progress_on=[chatbot], **quick)
            # The public endpoints first, so that they get the names "/send" and "/retry".
            api.click(self.send, asked, api_out, api_name="send", concurrency_limit=None)
            api.click(self.retry, tuning, api_out, api_name="retry", concurrency_limit=None)
            api.click(self.continue_answer, tuning, api_out, api_name="continue", concurrency_limit=None)
            # A page that opens another chat stops drawing the answer it followed (``_shows``), which
            # goes on. (Gradio's ``cancels`` would also undo the new chat's view in the page.)
            for started_by in (
                loading := demo.load(self.load, [stored], view, api_name="load"),
                new_btn.click(self.new, None, view, api_name="new"),
                api.click(self.open, [target], view, api_name="open"),
                conv_list.select(self.picked, None, view, api_visibility="private"),
                conv_list.delete(self.deleted, [conv_id], undone, api_visibility="private"),
                api.click(self.delete, [target, conv_id], undone, api_name="delete"),
                api.click(self.undo, [target], undone, api_name="undo"),
                undo_btn.click(self.undo, [undo_id], undone, api_visibility="private"),
                gr.on([send_btn.click, box.submit], self.submit, asked, started, **starts),
                chatbot.example_select(_example_text, None, [box], **quick).then(self.submit, asked, started,
                                                                                   **starts),
                gr.on([retry_btn.click, chatbot.retry], self.retry_start, tuning, started, **starts),
                continue_btn.click(self.continue_start, tuning, started, **starts),
                chatbot.edit(self.edit, [conv_id, ids, temperature, top_p, max_new, model], started, **starts),
            ):
                started_by.then(**follow)
            # the browser's time zone for the list's dates, once the load has drawn the chat
            loading.then(self.zoned, [zone], [conv_list], js=BROWSER_ZONE, api_visibility="private").then(
                self.undoable, None, [undo_box, undo_text, undo_id], api_visibility="private")
            demo.load(self.whoami, None, [account, training_tab, admin_tab, sign_link],
                      api_visibility="private")
            sign_link.click(None, None, None, js=SIGN_OUT)
            conv_id.change(lambda c: c, [conv_id], [stored], api_visibility="private")
            # a chat created outside send (loading a text into a new chat) shows in the sidebar at once
            conv_id.change(self.sidebar, [conv_id], [conv_list], api_visibility="private")
            conv_list.edit(self.renamed, [conv_id], [conv_list], api_visibility="private")
            api.click(self.rename, [target, new_title, conv_id], [conv_list], api_name="rename")
            search.change(self.search, [search, conv_id], [conv_list], trigger_mode="always_last",
                         api_visibility="private")
            watchdog.tick(self.watch, [conv_id], followed, show_progress="hidden", **quick)
            # the picker follows a promotion or rollback: every page within MODELS_S, the promoting one at once;
            # the tick skips the queue (no queue slot, and a page's "an event ended" signals stay its user's)
            models_timer.tick(self.models, [model, drawn], [model, drawn], show_progress="hidden", queue=False,
                              api_visibility="private")
            for changed in (event.then for event in training.promotions):
                changed(self.models, [model, drawn], [model, drawn], show_progress="hidden", **quick)
            knobs = [sys_prompt, temperature, top_p, max_new]
            gr.on([k.change for k in knobs], self.changed, knobs, [settings_row, changed_line], queue=False,
                  show_progress="hidden", api_visibility="private")
            reset.click(lambda: defaults(self.service), None, knobs, queue=False, api_visibility="private")
            stop_btn.click(self.stop, [conv_id], [notice], concurrency_limit=None, api_name="stop")
            chatbot.like(self.like, [ids, conv_id], [selected], concurrency_limit=None, api_name="rate").then(
                panel.show, [selected], panel.details, concurrency_limit=None, api_visibility="private").then(
                panel.open_on_dislike, [selected], [panel.box], concurrency_limit=None, api_visibility="private")
            for rated in panel.rated:
                rated.then(self.thumbs, [conv_id], [chatbot], api_visibility="private")
            # ‹ n/m › on each message with alternatives, and the rating form under its answer
            marks.select(self.paged, [conv_id, ids], [chatbot, ids], api_visibility="private")
            gr.on([ids.change, selected.change], self.marks, [conv_id, ids, selected], [marks],
                  api_visibility="private")
            excluded.input(self.exclude, [conv_id, excluded], None, api_name="exclude")
        return refusals.quiet(demo)  # a refused call: one log line, no traceback


def _example_text(event: gr.SelectData) -> str:
    """The text of the example prompt a visitor clicked on an empty chat (sent next)."""
    value = event.value if isinstance(event.value, dict) else {}
    return str(value.get("text", ""))
