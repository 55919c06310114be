"""Knowledge panel of the chat screen: load a text (upload or paste) into the conversation, see and
remove its documents, reuse one loaded earlier, and see the passages the last answer cited."""

from __future__ import annotations

from typing import Any

import gradio as gr

from chatlm.errors import ChatLMError
from chatlm.service import ChatService
from chatlm.ui.uploads import received_file, uploaded_file
from chatlm.ui.who import Who

FILE_TYPES = [".txt", ".md", ".markdown", ".html", ".htm", ".pdf"]


class KnowledgePanel:
    def __init__(self, service: ChatService, who: Who | None = None) -> None:
        self.service = service
        self.who = Who.of(service, who)

    def _uid(self, request: gr.Request | None) -> int:
        return self.who.uid(request)

    def documents(self, conv_id: int | None, request: gr.Request) -> tuple[Any, Any]:
        """The conversation's documents (to remove) and the user's others (to reuse)."""
        return self._documents(self._uid(request), conv_id)

    def _documents(self, uid: int, conv_id: int | None) -> tuple[Any, Any]:
        mine = self.service.library.user_documents(uid)
        if conv_id:
            self.service.conversation(uid, conv_id)  # someone else's chat: refused
        used = self.service.library.documents(conv_id) if conv_id else []
        used_ids = {d.id for d in used}
        return (gr.update(choices=[(d.name, d.id) for d in used], value=[]),
                gr.update(choices=[(d.name, d.id) for d in mine if d.id not in used_ids], value=None))

    def load(self, conv_id: int | None, upload: str | None, pasted: str, name: str, request: gr.Request,
             progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's way
        """Parse, chunk, store and index; BM25 is ready at once, embeddings follow in the background."""
        uid = self._uid(request)
        created = False
        try:
            if conv_id is None:
                conv_id, created = self.service.new_conversation(uid).id, True
            report = lambda frac, msg: progress(frac, desc=msg)  # noqa: E731
            path = received_file(upload)
            if path is not None:
                doc = self.service.library.load(user_id=uid, conversation_id=conv_id, name=path.name,
                                                data=path.read_bytes(), progress=report)
            else:
                doc = self.service.library.load(user_id=uid, conversation_id=conv_id,
                                                name=name.strip() or "pasted text", text=pasted,
                                                progress=report)
            status = f"Loaded **{doc.name}**: ask questions about it; answers cite its passages."
        except ChatLMError as exc:
            gr.Warning(exc.message)
            status = f"Not loaded: {exc.message}"
            if created:  # a refused text leaves no empty conversation behind
                self.service.delete(uid, conv_id)
                conv_id = None
        return (conv_id, *self._documents(uid, conv_id), status, None, "")

    def remove(self, conv_id: int | None, doc_ids: list[int], request: gr.Request) -> tuple[Any, ...]:
        uid = self._uid(request)
        for doc_id in doc_ids or []:
            self.service.library.detach(user_id=uid, conversation_id=conv_id, document_id=doc_id)
        return self._documents(uid, conv_id)

    def reuse(self, conv_id: int | None, doc_id: int | None, request: gr.Request) -> tuple[Any, ...]:
        uid = self._uid(request)
        if doc_id is None:
            return (conv_id, *self._documents(uid, conv_id))
        if conv_id is None:
            conv_id = self.service.new_conversation(uid).id
        self.service.library.attach(user_id=uid, conversation_id=conv_id, document_id=doc_id)
        self.service.library.index_for(conv_id)
        return (conv_id, *self._documents(uid, conv_id))

    def sources(self, conv_id: int | None, ids: list[int], request: gr.Request) -> str:
        """Markdown of the passages the last answer was given, with their document names."""
        if conv_id is None or not ids:
            return ""
        rows = self.service.history(self._uid(request), conv_id)
        answers = [m for m, _ in rows if m.role == "assistant" and m.id in set(ids)]
        if not answers or not answers[-1].sources:
            return ""
        texts = self.service.library.chunk_texts([s["chunk_id"] for s in answers[-1].sources])
        lines = ["**Sources of the last answer**"]
        for src in answers[-1].sources:
            text = texts.get(src["chunk_id"], "")
            if src.get("sentence"):  # the sentence that proves the answer, highlighted
                start, end = src["sentence"]
                text = f"{text[:start]}**{text[start:end]}**{text[end:]}"
            body = text.strip().replace("\n", " ")
            lines.append(f"[{src['n']}] *{src['document']}*: {body}")
        return "\n\n".join(lines)

    def render(self, conv_id: gr.State, ids: gr.State) -> gr.Markdown:
        """Lay the panel out inside the current Blocks; returns the sources Markdown."""
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
        sources = gr.Markdown(elem_id="sources")
        load_btn.click(self.load, [conv_id, upload, pasted, name],
                       [conv_id, used, others, status, upload, pasted], api_name="load_document")
        remove_btn.click(self.remove, [conv_id, used], [used, others], api_name="remove_documents")
        reuse_btn.click(self.reuse, [conv_id, others], [conv_id, used, others], api_name="reuse_document")
        conv_id.change(self.documents, [conv_id], [used, others], api_visibility="private")
        ids.change(self.sources, [conv_id, ids], [sources], api_visibility="private")
        return sources
