"""Knowledge panel of the chat screen: load a text (upload or paste) into the conversation, see and
remove its documents and reuse one loaded earlier; and the sources block under each answer."""

from __future__ import annotations

import html
import re
from typing import Any

import gradio as gr

from chatlm.chat.turns import ChatService
from chatlm.errors import ChatLMError
from chatlm.identity.accounts import Actor
from chatlm.identity.requests import Who
from chatlm.ui import sidebar
from chatlm.ui.uploads import received_file, upload_button, uploaded_file

FILE_TYPES = [".txt", ".md", ".markdown", ".html", ".htm", ".pdf"]
SNIPPET = 110
"""Characters of a passage shown on each side of its supporting sentence (or in all, twice this)."""
CITED = re.compile(r"\[(\d+)\]")
CHIPS = """
{{#each value.docs}}
<span class="doc-chip"><span class="doc-chip-name" title="{{this.name}}">📄 {{this.name}}</span><button
 type="button" class="doc-chip-remove" data-id="{{this.id}}" aria-label="Remove {{this.name}} from this chat"
 title="Remove from this chat">✕</button></span>
{{/each}}
"""
"""The texts loaded into the open chat, a chip each over the message box (names escaped by the
template); a chip's ✕ takes its text out of the chat."""
CHIPS_CSS = """
:host, & { display: flex; flex-wrap: wrap; gap: .35rem; }
.doc-chip { display: inline-flex; align-items: center; max-width: 18rem; border-radius: 999px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary);
  font-size: .85rem; padding: .1rem .2rem .1rem .6rem; }
.doc-chip-name { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.doc-chip-remove { background: none; border: 0; cursor: pointer; color: inherit; font: inherit;
  padding: .1rem .4rem; border-radius: 999px; }
.doc-chip-remove:hover { background: var(--background-fill-primary); }
"""
CHIPS_JS = """
element.addEventListener('click', (e) => {
  const remove = e.target.closest('.doc-chip-remove');
  if (remove) trigger('select', {id: Number(remove.dataset.id)});
});
"""


def sources_block(answer: str, sources: list[dict[str, Any]], texts: dict[int, str]) -> str:
    """The collapsible sources under an answer: the passages it cites by their [n] (all it was
    given when it cites none), each a short snippet with its document's name and, for a copied
    answer, the sentence that supports it in bold. Text and names are escaped: a document's own
    markup is shown, never run."""
    cited = {int(n) for n in CITED.findall(answer)}
    shown = [s for s in sources if s.get("n") in cited] or sources
    lines = []
    for src in shown:
        raw = texts.get(src["chunk_id"], "")
        if src.get("sentence"):
            start, end = src["sentence"]
            before, sentence, after = (" ".join(part.split()) for part in
                                       (raw[:start], raw[start:end], raw[end:]))
            lead = ("…" if len(before) > SNIPPET else "") + before[-SNIPPET:]
            tail = after[:SNIPPET] + ("…" if len(after) > SNIPPET else "")
            body = f"{_esc(lead)} **{_esc(sentence)}** {_esc(tail)}".strip()
        else:
            text = " ".join(raw.split())
            body = _esc(text[:2 * SNIPPET]) + ("…" if len(text) > 2 * SNIPPET else "")
        lines.append(f"[{src['n']}] *{_esc(str(src['document']))}*: {body}")
    plural = "s" if len(lines) != 1 else ""
    return (f'\n\n<details class="sources"><summary>Source{plural} ({len(lines)})</summary>\n\n'
            + "\n\n".join(lines) + "\n\n</details>")


def _esc(text: str) -> str:
    """``text`` as itself in Markdown: no tag, link or emphasis of its own (a document's name is
    whatever its uploader chose)."""
    return (html.escape(text, quote=False).replace("*", "\\*").replace("_", "\\_")
            .replace("[", "\\[").replace("]", "\\]").replace("`", "\\`"))


class KnowledgePanel:
    def __init__(self, service: ChatService, who: Who) -> None:
        self.service = service
        self.who = who

    def _actor(self, request: gr.Request | None) -> Actor:
        return self.who.actor(request)

    def documents(self, conv_id: int | None, request: gr.Request) -> tuple[Any, ...]:
        """The conversation's documents (to remove), the user's others (to reuse), the chips over
        the message box, and the load's line cleared in a chat with no text (a new chat showed the
        last chat's "Loaded page.html")."""
        used, others, chips = self._documents(self._actor(request), conv_id)  # someone else's: refused
        return used, others, chips, gr.update() if used["choices"] else ""

    def _documents(self, actor: Actor, conv_id: int | None) -> tuple[Any, Any, Any]:
        mine = self.service.library.user_documents(actor)
        if conv_id:
            self.service.conversation(actor, conv_id)  # someone else's chat: refused
        used = self.service.library.documents(conv_id) if conv_id else []
        used_ids = {d.id for d in used}
        return (gr.update(choices=[(d.name, d.id) for d in used], value=[]),
                gr.update(choices=[(d.name, d.id) for d in mine if d.id not in used_ids], value=None),
                gr.update(value={"docs": [{"id": d.id, "name": d.name} for d in used]}, visible=bool(used)))

    def load(self, conv_id: int | None, upload: str | None, pasted: str, name: str, request: gr.Request,
             progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's way
        """Parse, chunk, store and index; BM25 is ready at once, embeddings follow in the background."""
        conv_id, _loaded, status, lists = self._load(conv_id, upload, pasted, name, request, progress)
        return (conv_id, *lists, status, None, "")

    def attach(self, conv_id: int | None, upload: str | None, request: gr.Request,
               progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's way
        """The message box's Attach (or a file dropped on the chat): load it into this chat, said in a
        toast (the Knowledge panel's line is out of sight)."""
        conv_id, loaded, status, lists = self._load(conv_id, upload, "", "", request, progress)
        if loaded is not None:  # the name is the uploader's: shown, never run
            gr.Info(html.escape(f"Loaded {loaded}: ask questions about it.", quote=False))
        return (conv_id, *lists, status)

    def _load(self, conv_id: int | None, upload: str | None, pasted: str, name: str,
              request: gr.Request | None, progress: Any) -> tuple[int | None, str | None, str, tuple[Any, Any, Any]]:
        """(the chat, now made if there was none; the loaded text's name, None when refused; the
        line that says what happened; its lists)."""
        actor = self._actor(request)
        created, loaded = False, None
        try:
            if conv_id is None:
                conv_id, created = self.service.new_conversation(actor).id, True
            report = lambda frac, msg: progress(frac, desc=msg)  # noqa: E731
            path = received_file(upload)
            if path is not None:
                doc = self.service.library.load(actor=actor, conversation_id=conv_id, name=path.name,
                                                data=path.read_bytes(), progress=report)
            else:
                doc = self.service.library.load(actor=actor, conversation_id=conv_id,
                                                name=name.strip() or "pasted text", text=pasted,
                                                progress=report)
            loaded = doc.name
            status = f"Loaded **{_esc(loaded)}**: ask questions about it; answers cite its passages."
        except ChatLMError as exc:  # the message may quote the file's name: shown, never run
            gr.Warning(html.escape(exc.message, quote=False))
            status = f"Not loaded: {_esc(exc.message)}"
            if created:  # a refused text leaves no empty conversation behind
                self.service.discard(actor, conv_id)
                conv_id = None
        return conv_id, loaded, status, self._documents(actor, conv_id)

    def unchip(self, conv_id: int | None, event: gr.EventData, request: gr.Request) -> tuple[Any, ...]:
        """A chip's ✕: that text out of this chat (it stays in the user's texts, to reuse)."""
        doc_id, _ = sidebar.clicked(event)
        return self.remove(conv_id, [doc_id] if doc_id is not None else [], request)

    def remove(self, conv_id: int | None, doc_ids: list[int], request: gr.Request) -> tuple[Any, ...]:
        actor = self._actor(request)
        for doc_id in doc_ids or []:
            self.service.library.detach(actor=actor, conversation_id=conv_id, document_id=doc_id)
        return self._documents(actor, conv_id)

    def reuse(self, conv_id: int | None, doc_id: int | None, request: gr.Request) -> tuple[Any, ...]:
        actor = self._actor(request)
        if doc_id is None:
            return (conv_id, *self._documents(actor, conv_id))
        if conv_id is None:
            conv_id = self.service.new_conversation(actor).id
        self.service.library.attach(actor=actor, conversation_id=conv_id, document_id=doc_id)
        self.service.library.index_for(conv_id)
        return (conv_id, *self._documents(actor, conv_id))

    def chips(self) -> Any:
        """The chips of the chat's texts, made where the chat lays them out (over the message
        box); ``render`` wires them."""
        self._chips = gr.HTML({"docs": []}, html_template=CHIPS, css_template=CHIPS_CSS, js_on_load=CHIPS_JS,
                              elem_id="doc-chips", apply_default_css=False, visible=False)
        return self._chips

    def attach_button(self) -> Any:
        """The message box's Attach, made in the message row; ``render`` wires it. (Words, not 📎:
        a browser without an emoji font drew an empty box.)"""
        self._attach = upload_button(label="Attach", file_types=FILE_TYPES, type="filepath", size="sm",
                                     scale=0, min_width=80, elem_id="attach", variant="secondary")
        return self._attach

    def render(self, conv_id: gr.State) -> None:
        """Lay the panel out inside the current Blocks (each answer shows its own sources); the
        chips and Attach must have been made."""
        with gr.Accordion("Knowledge texts", open=False, elem_id="knowledge"):
            with gr.Row():
                upload = uploaded_file(label="Upload .txt, .md, .html or .pdf (up to 20 MB)",
                                 file_types=FILE_TYPES, type="filepath", elem_id="upload")
                with gr.Column():
                    pasted = gr.Textbox(label="…or paste a text", lines=4, elem_id="paste")
                    name = gr.Textbox(label="Name of the pasted text", elem_id="paste-name")
            load_btn = gr.Button("Load into this chat", elem_id="load-doc")
            status = gr.Markdown(elem_id="doc-status")
            with gr.Row():
                used = gr.CheckboxGroup(label="Documents in this chat", choices=[], elem_id="docs")
                remove_btn = gr.Button("Remove selected", size="sm", elem_id="remove-doc")
            with gr.Row():
                others = gr.Dropdown(label="Reuse a document you loaded before", choices=[],
                                     elem_id="other-docs")
                reuse_btn = gr.Button("Use in this chat", size="sm", elem_id="reuse-doc")
        chips = self._chips
        load_btn.click(self.load, [conv_id, upload, pasted, name],
                       [conv_id, used, others, chips, status, upload, pasted], api_name="load_document")
        self._attach.upload(self.attach, [conv_id, self._attach], [conv_id, used, others, chips, status],
                            api_visibility="private", show_progress_on=[chips])
        chips.select(self.unchip, [conv_id], [used, others, chips], api_visibility="private")
        remove_btn.click(self.remove, [conv_id, used], [used, others, chips], api_name="remove_documents")
        reuse_btn.click(self.reuse, [conv_id, others], [conv_id, used, others, chips], api_name="reuse_document")
        conv_id.change(self.documents, [conv_id], [used, others, chips, status], api_visibility="private")
