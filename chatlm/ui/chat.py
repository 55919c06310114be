"""The chat screen: streaming chat, Stop, Retry, ratings, a conversation sidebar and settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from chatlm.engine.params import SamplingParams
from chatlm.errors import ChatLMError
from chatlm.service import ChatService, Reply

FEEDBACK = {1: "Like", -1: "Dislike"}
Outputs = tuple[Any, ...]


class ChatUI:
    """Builds the Blocks and holds the handlers; every handler is a plain function of its inputs."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    # ---- helpers -------------------------------------------------------------------------
    def _uid(self) -> int:
        return self.service.user_id()

    def _view(self, conv_id: int | None) -> tuple[list[dict[str, str]], list[int], list[str | None]]:
        """Chatbot messages, their database ids, and the ratings of the assistant ones."""
        if conv_id is None:
            return [], [], []
        rows = self.service.history(self._uid(), conv_id)
        shown = [(m, r) for m, r in rows if m.role in ("user", "assistant")]
        messages = [{"role": m.role, "content": _shown_text(m.content, m.status)} for m, _ in shown]
        feedback = [FEEDBACK.get(r) if r else None for m, r in shown if m.role == "assistant"]
        return messages, [m.id for m, _ in shown], feedback

    def _sidebar(self, conv_id: int | None) -> Any:
        convs = self.service.conversations(self._uid())
        return gr.update(choices=[(c.title, c.id) for c in convs], value=conv_id)

    def _open(self, conv_id: int | None) -> Outputs:
        messages, ids, feedback = self._view(conv_id)
        conv = self.service.conversation(self._uid(), conv_id) if conv_id else None
        settings = conv.settings if conv else {}
        return (
            gr.update(value=messages, feedback_value=feedback), ids, conv_id,
            self._sidebar(conv_id), conv.title if conv else "",
            conv.system_prompt if conv else self.service.settings.system_prompt,
            settings.get("temperature", 0.7), settings.get("top_p", 0.9),
            settings.get("max_new_tokens", 256), "",
            bool(conv.exclude_from_training) if conv else False,
        )

    # ---- handlers ------------------------------------------------------------------------
    def load(self, stored_id: int | None) -> Outputs:
        """Page load: reopen the conversation this browser had open, else the latest one."""
        uid = self._uid()
        convs = self.service.conversations(uid)
        ids = {c.id for c in convs}
        conv_id = stored_id if stored_id in ids else (convs[0].id if convs else None)
        return self._open(conv_id)

    def open(self, conv_id: int | None) -> Outputs:
        return self._open(conv_id)

    def new(self) -> Outputs:
        return self._open(None)

    def rename(self, conv_id: int | None, title: str) -> Any:
        if conv_id is None:
            gr.Warning("Open a conversation first.")
            return self._sidebar(conv_id)
        try:
            self.service.rename(self._uid(), conv_id, title)
        except ChatLMError as exc:
            gr.Warning(exc.message)
        return self._sidebar(conv_id)

    def delete(self, conv_id: int | None) -> Outputs:
        if conv_id is not None:
            self.service.delete(self._uid(), conv_id)
        return self.load(None)

    def send(self, text: str, conv_id: int | None, sys_prompt: str, temperature: float,
             top_p: float, max_new: int) -> Iterator[Outputs]:
        """Store the message, stream the answer, then show the stored state (ids, ratings)."""
        if not text or not text.strip():
            gr.Warning("Type a message first.")
            return
        uid = self._uid()
        settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": int(max_new)}
        try:
            if conv_id is None:
                conv_id = self.service.new_conversation(uid, system_prompt=sys_prompt,
                                                        settings=settings).id
            else:
                self.service.update_settings(uid, conv_id, system_prompt=sys_prompt,
                                             settings=settings)
            reply = self.service.send(uid, conv_id, text, _params(settings))
        except ChatLMError as exc:
            gr.Warning(exc.message)
            messages, ids, feedback = self._view(conv_id)
            yield (gr.update(value=messages, feedback_value=feedback), ids, conv_id,
                   self._sidebar(conv_id), exc.message, text)
            return
        yield from self._stream(reply, conv_id, clear_box=True)

    def retry(self, conv_id: int | None, ids: list[int], temperature: float, top_p: float,
              max_new: int) -> Iterator[Outputs]:
        if conv_id is None or not ids:
            gr.Warning("There is no answer to retry.")
            return
        messages, ids, _ = self._view(conv_id)
        if messages[-1]["role"] != "assistant":
            gr.Warning("There is no answer to retry.")
            return
        settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": int(max_new)}
        try:
            reply = self.service.retry(self._uid(), ids[-1], _params(settings))
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return
        yield from self._stream(reply, conv_id)

    def _stream(self, reply: Reply, conv_id: int, clear_box: bool = False) -> Iterator[Outputs]:
        messages, ids, feedback = self._view(conv_id)
        messages.append({"role": "assistant", "content": ""})
        sidebar = self._sidebar(conv_id)
        notice = reply.notice
        # Clear the sent message once; later updates leave the box alone so that a draft typed
        # while the answer streams is kept (Retry never touches it).
        box: Any = "" if clear_box else gr.update()
        for delta in reply:
            messages[-1]["content"] += delta
            yield gr.update(value=messages), ids, conv_id, sidebar, notice, box
            box = gr.update()
        gen = reply.generation
        if gen.finish_reason == "error":
            notice = f"The answer failed: {gen.error}"
        elif gen.finish_reason == "cancelled":
            notice = (notice + " " if notice else "") + "Stopped; the partial answer was kept."
        messages, ids, feedback = self._view(conv_id)
        yield (gr.update(value=messages, feedback_value=feedback), ids, conv_id,
               self._sidebar(conv_id), notice, box)

    def stop(self, conv_id: int | None) -> None:
        if conv_id is not None:
            self.service.stop(conv_id)

    def like(self, ids: list[int], data: gr.LikeData) -> int | None:
        """Save 👍/👎 and select the answer for the rating-details panel."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if not 0 <= index < len(ids):
            return None
        value = {True: 1, False: -1, "Like": 1, "Dislike": -1}.get(data.liked)  # type: ignore[arg-type]
        try:  # a thumb keeps the reason, comment and better answer written in the details panel
            detail = self.service.rating_detail(self._uid(), ids[index]) if value else None
            extra = {k: detail[k] for k in ("reason", "comment", "better_answer")} if detail else {}
            self.service.rate(self._uid(), ids[index], value, **extra)
        except ChatLMError as exc:
            gr.Warning(exc.message)
        return ids[index]

    def edit(self, conv_id: int | None, ids: list[int], temperature: float, top_p: float, max_new: int,
             data: gr.EditData) -> Iterator[Outputs]:
        """An edited user message starts a new branch; the old branch stays (page back to it)."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if conv_id is None or not 0 <= index < len(ids):
            return
        settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": int(max_new)}
        try:
            reply = self.service.edit(self._uid(), ids[index], str(data.value), _params(settings))
        except ChatLMError as exc:
            gr.Warning(exc.message)
            messages, ids, feedback = self._view(conv_id)
            yield (gr.update(value=messages, feedback_value=feedback), ids, conv_id,
                   self._sidebar(conv_id), exc.message, gr.update())
            return
        yield from self._stream(reply, conv_id)

    def page(self, conv_id: int | None, ids: list[int], step: int) -> tuple[Any, ...]:
        """Show the previous or next alternative answer of the last turn."""
        if conv_id is not None and ids:
            self.service.switch_sibling(self._uid(), ids[-1], step)
        messages, ids, feedback = self._view(conv_id)
        return gr.update(value=messages, feedback_value=feedback), ids

    def pager(self, conv_id: int | None, ids: list[int]) -> str:
        if conv_id is None or not ids:
            return ""
        pos, count = self.service.siblings(self._uid(), ids[-1])
        return f"answer {pos}/{count}" if count > 1 else ""

    def thumbs(self, conv_id: int | None) -> Any:
        """The chat's 👍/👎 as stored (after the rating-details panel changed one)."""
        messages, _, feedback = self._view(conv_id)
        return gr.update(value=messages, feedback_value=feedback)

    def exclude(self, conv_id: int | None, excluded: bool) -> None:
        if conv_id is not None:
            self.service.set_excluded(self._uid(), conv_id, excluded)

    # ---- layout --------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        from chatlm.ui.feedback import FeedbackPanel, FeedbackTab
        from chatlm.ui.knowledge import KnowledgePanel
        from chatlm.ui.training import TrainingTab

        with gr.Blocks(title="chatlm") as demo:
            ids = gr.State([])
            selected = gr.State(None)
            conv_id = gr.State(None)
            stored = gr.BrowserState(None, storage_key="chatlm-conversation")
            with gr.Sidebar(open=True):
                gr.Markdown("### Conversations")
                new_btn = gr.Button("New chat", variant="secondary", elem_id="new-chat")
                conv_list = gr.Radio(label="Open", choices=[], elem_id="conversations")
                title = gr.Textbox(label="Title", elem_id="title")
                with gr.Row():
                    rename_btn = gr.Button("Rename", size="sm", elem_id="rename")
                    delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="delete")
                excluded = gr.Checkbox(label="Don't use this conversation for training",
                                       elem_id="exclude")
            with gr.Tab("Chat", elem_id="chat-tab"):
                chatbot = gr.Chatbot(height=520, label="chatlm", elem_id="chatbot", editable="user",
                                     feedback_options=("Like", "Dislike"), buttons=["copy"])
                with gr.Row():
                    prev_btn = gr.Button("‹", size="sm", scale=0, min_width=40, elem_id="prev-answer")
                    pager = gr.Markdown(elem_id="pager")
                    next_btn = gr.Button("›", size="sm", scale=0, min_width=40, elem_id="next-answer")
                notice = gr.Markdown(elem_id="notice")
                with gr.Row():
                    box = gr.Textbox(placeholder="Ask anything…", show_label=False, scale=8,
                                     elem_id="message", autofocus=True)
                    send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    stop_btn = gr.Button("Stop", scale=1, elem_id="stop")
                    retry_btn = gr.Button("Retry", scale=1, elem_id="retry")
                with gr.Accordion("Generation settings", open=False):
                    sys_prompt = gr.Textbox(label="System prompt", lines=2,
                                            value=self.service.settings.system_prompt)
                    temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
                    max_new = gr.Slider(1, self.service.settings.max_new_tokens, value=256, step=1,
                                        label="Maximum new tokens")
                KnowledgePanel(self.service).render(conv_id, ids)
                panel = FeedbackPanel(self.service)
                panel.render(conv_id, ids, selected)
            with gr.Tab("Feedback", elem_id="feedback-tab") as feedback_tab:
                FeedbackTab(self.service).render(feedback_tab)
            with gr.Tab("Training", elem_id="training-tab") as training_tab:
                TrainingTab(self.service).render(training_tab)

            view = [chatbot, ids, conv_id, conv_list, title, sys_prompt, temperature, top_p,
                    max_new, notice, excluded]
            stream_out = [chatbot, ids, conv_id, conv_list, notice, box]
            limit = max(self.service.settings.max_batch, 1) * 2
            demo.load(self.load, [stored], view, api_name="load")
            conv_id.change(lambda c: c, [conv_id], [stored], api_visibility="private")
            # a chat created outside send (loading a text into a new chat) shows in the sidebar at once
            conv_id.change(self._sidebar, [conv_id], [conv_list], api_visibility="private")
            new_btn.click(self.new, None, view, api_name="new")
            conv_list.input(self.open, [conv_list], view, api_name="open")
            rename_btn.click(self.rename, [conv_id, title], [conv_list], api_name="rename")
            delete_btn.click(self.delete, [conv_id], view, api_name="delete")
            send_args = dict(fn=self.send, inputs=[box, conv_id, sys_prompt, temperature, top_p,
                                                   max_new],
                             outputs=stream_out, concurrency_limit=limit)
            # The public endpoint first: it must get the name "/send" (not "/send_1").
            send_btn.click(**send_args, api_name="send")  # type: ignore[arg-type]
            box.submit(**send_args, api_visibility="private")  # type: ignore[arg-type]
            retry_args = dict(fn=self.retry, inputs=[conv_id, ids, temperature, top_p, max_new],
                              outputs=stream_out, concurrency_limit=limit)
            retry_btn.click(**retry_args, api_name="retry")  # type: ignore[arg-type]
            chatbot.retry(**retry_args, api_visibility="private")  # type: ignore[arg-type]
            stop_btn.click(self.stop, [conv_id], None, concurrency_limit=None, api_name="stop")
            chatbot.like(self.like, [ids], [selected], concurrency_limit=None, api_name="rate").then(
                panel.show, [selected], panel.details, concurrency_limit=None, api_visibility="private")
            for rated in panel.rated:
                rated.then(self.thumbs, [conv_id], [chatbot], api_visibility="private")
            chatbot.edit(self.edit, [conv_id, ids, temperature, top_p, max_new], stream_out,
                         concurrency_limit=limit, api_visibility="private")
            prev_btn.click(lambda c, i: self.page(c, i, -1), [conv_id, ids], [chatbot, ids],
                           api_visibility="private")
            next_btn.click(lambda c, i: self.page(c, i, +1), [conv_id, ids], [chatbot, ids],
                           api_visibility="private")
            ids.change(self.pager, [conv_id, ids], [pager], api_visibility="private")
            excluded.input(self.exclude, [conv_id, excluded], None, api_name="exclude")
        return demo


def _params(settings: dict[str, Any]) -> SamplingParams:
    return SamplingParams(temperature=float(settings["temperature"]),
                          top_p=float(settings["top_p"]),
                          max_new_tokens=int(settings["max_new_tokens"]))


def _shown_text(content: str, status: str) -> str:
    if status == "stopped":
        return content + " ⏹"
    if status == "error":
        return content + " ⚠"
    if status == "interrupted":
        return content + " … (interrupted: the server stopped while answering)"
    return content
