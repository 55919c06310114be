"""Feedback: the rating-details panel under the chat (reason, comment, a better answer, withdraw)
and the Feedback tab (counts by label, adapter and day; a filterable table; dataset downloads)."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from chatlm.chat.turns import ChatService
from chatlm.errors import ChatLMError
from chatlm.feedback import records, stats
from chatlm.feedback.reports import FeedbackService
from chatlm.identity.accounts import Actor
from chatlm.identity.requests import Who
from chatlm.store.repo import RATING_REASONS, reason_for

VALUES = {"Like": 1, "Dislike": -1}
"""The rating's choices in words (👍 and 👎 were empty boxes where no emoji font is installed)."""
COLUMNS = ["day", "adapter", "label", "question", "answer", "reason", "comment", "better_answer", "user"]


class FeedbackPanel:
    """Details of one answer's rating; it follows the answer last clicked 👍/👎 (else the last one)."""

    def __init__(self, service: ChatService, who: Who) -> None:
        self.service = service
        self.who = who

    def show(self, message_id: int | None, request: gr.Request) -> tuple[Any, ...]:
        return self._show(self.who.actor(request), message_id)[1:]

    def follow_last(self, conv_id: int | None, ids: list[int], request: gr.Request) -> tuple[Any, ...]:
        actor = self.who.actor(request)
        if conv_id is None or not ids:
            return self._show(actor, None)
        answers = [m.id for m, _ in self.service.history(actor, conv_id) if m.role == "assistant"]
        return self._show(actor, answers[-1] if answers else None)

    def _show(self, actor: Actor, message_id: int | None) -> tuple[Any, ...]:
        if message_id is None:
            return None, "Rate an answer with the thumbs up or down under it to add details.", None, None, "", ""
        detail = self.service.rating_detail(actor, message_id)
        label = next((k for k, v in VALUES.items() if v == detail["value"]), None) if detail else None
        pos, count = self.service.siblings(actor, message_id)
        title = f"Rating details of the selected answer (alternative {pos} of {count})."
        return (message_id, title, label, (detail or {}).get("reason"), (detail or {}).get("comment") or "",
                (detail or {}).get("better_answer") or "")

    def open_on_dislike(self, message_id: int | None, request: gr.Request) -> Any:
        """A 👎 in the chat opens this panel: why, and a better answer, are what a 👎 teaches."""
        detail = self.service.rating_detail(self.who.actor(request), message_id) if message_id else None
        return gr.update(open=True) if detail and detail["value"] == -1 else gr.update()

    def save(self, message_id: int | None, label: str | None, reason: str | None, comment: str,
             better: str, request: gr.Request) -> str:
        if message_id is None:
            return "Select an answer first (click the thumbs up or down under it)."
        if label is None:
            return "Choose Like or Dislike first."
        reason = reason_for(VALUES[label], reason)  # hidden for 👍: a value left in it is not one
        try:
            self.service.rate(self.who.actor(request), message_id, VALUES[label], reason=reason or None,
                              comment=comment.strip() or None, better_answer=better.strip() or None)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return f"Not saved: {exc.message}"
        return "Saved."

    def withdraw(self, message_id: int | None, request: gr.Request) -> tuple[Any, ...]:
        actor = self.who.actor(request)
        if message_id is not None:
            self.service.rate(actor, message_id, None)
        return (*self._show(actor, message_id)[2:], "Rating withdrawn.")

    def render(self, conv_id: gr.State, ids: gr.State, selected: gr.State) -> None:
        """``selected`` holds the answer last clicked 👍/👎 (set by the chat's like handler, which
        then calls ``show`` into ``self.details``: a click on the answer already selected, or a
        second click on one, changes no state, so a ``selected.change`` would miss it).
        ``self.rated`` are the events that change a rating here, for the chat to redraw its 👍/👎."""
        with gr.Accordion("Rate in detail", open=False, elem_id="rate-details") as self.box:
            title = gr.Markdown(elem_id="rate-title")
            label = gr.Radio(list(VALUES), label="Rating", elem_id="rate-value")
            reason = gr.Radio([(words, key) for key, words in RATING_REASONS.items()],
                              label="What was wrong?", elem_id="rate-reason", visible=False)
            comment = gr.Textbox(label="Comment", lines=2, elem_id="rate-comment")
            better = gr.Textbox(label="Suggest a better answer", lines=3, elem_id="rate-better")
            with gr.Row():
                save_btn = gr.Button("Save rating", variant="primary", elem_id="rate-save")
                withdraw_btn = gr.Button("Withdraw rating", elem_id="rate-withdraw")
            result = gr.Markdown(elem_id="rate-result")
        fields = [selected, title, label, reason, comment, better]
        label.change(_reasons_for, [label], [reason], api_visibility="private")
        self.details = fields[1:]
        ids.change(self.follow_last, [conv_id, ids], fields, api_visibility="private")
        self.rated = [
            save_btn.click(self.save, [selected, label, reason, comment, better], [result],
                           api_name="rate_detail"),
            withdraw_btn.click(self.withdraw, [selected], [label, reason, comment, better, result],
                               api_name="withdraw_rating"),
        ]


def _reasons_for(label: str | None) -> Any:
    """Reasons are offered with 👎 only (a 👍 "not grounded" said two opposite things)."""
    if label is not None and VALUES.get(label) == -1:
        return gr.update(visible=True)
    return gr.update(visible=False, value=None)


EXPORT_KEEP_S = 60.0
"""A built dataset's file outlives its request this long (then only Gradio's cached copy remains)."""


DATASET_WORDS = {
    "messages": "every rated conversation, as it was",
    "sft": "the answers you liked, and the ones you wrote",
    "kto": "each rated answer, marked good or bad",
    "dpo": "pairs: a preferred and a rejected answer to one question",
}
"""The dataset formats (``records.FORMATS``) in words a user reads; the files are what TRL's SFT, KTO
and DPO trainers read."""


class FeedbackTab:
    """Everyone sees and exports their own ratings; an admin sees and exports everyone's."""

    def __init__(self, service: ChatService, who: Who, feedback: FeedbackService) -> None:
        self.service = service
        self.feedback = feedback
        self.who = who
        self._exports: tempfile.TemporaryDirectory[str] | None = None
        """One folder per process for built datasets, removed when the process ends; Gradio copies
        each file into its own cache on return, so older ones are removed as new ones are built."""

    def refresh(self, label: str, adapter: str, text: str, request: gr.Request) -> tuple[Any, ...]:
        everything, rows = self.feedback.rows(self.who.actor(request), label=None if label == "all" else label,
                                              adapter=None if adapter == "all" else adapter, text=text or None)
        counts = pd.DataFrame(stats.counts(everything), columns=["day", "adapter", "label", "count"])
        counts["series"] = counts["label"] + " / " + counts["adapter"]
        table = pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in rows], columns=COLUMNS)
        adapters = ["all", *sorted({r.adapter for r in everything})]
        plural = "s" if len(everything) != 1 else ""
        summary = (f"{len(everything)} rating{plural}: {sum(r.label == 'like' for r in everything)} liked, "
                   f"{sum(r.label == 'dislike' for r in everything)} disliked; {len(rows)} shown.\n\n"
                   f"{self.feedback.contribution(self.who.actor(request)).sentence()} Ratings in "
                   "conversations marked *Don't use this conversation for training* give none.")
        return counts, table, gr.update(choices=adapters), summary

    def export(self, fmt: str, request: gr.Request = None) -> tuple[str | None, str]:  # type: ignore[assignment]
        recs, counts = self.feedback.dataset(self.who.actor(request), fmt)
        if self._exports is None:
            self._exports = tempfile.TemporaryDirectory(prefix="chatlm-export-")
        root = Path(self._exports.name)
        for old in root.iterdir():  # Gradio copied each into its cache when its export returned
            if time.time() - old.stat().st_mtime > EXPORT_KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = root / uuid.uuid4().hex
        folder.mkdir()
        path = folder / f"chatlm-{fmt}.jsonl"
        path.write_text(records.to_jsonl(recs), encoding="utf-8")
        return str(path), f"{path.name}: {counts.summary()}"

    def render(self, tab: gr.Tab) -> None:
        """Lay the tab out; it refreshes whenever it is opened."""
        gr.Markdown("Your ratings teach the next version of the model: an admin trains it from them. "
                    "Conversations marked *Don't use this conversation for training* never do.")
        with gr.Row():
            label = gr.Dropdown(["all", "like", "dislike"], value="all", label="Label", elem_id="fb-label")
            adapter = gr.Dropdown(["all"], value="all", label="Adapter", elem_id="fb-adapter")
            text = gr.Textbox(label="Search question, answer or comment", elem_id="fb-search")
            refresh = gr.Button("Refresh", elem_id="fb-refresh")
        summary = gr.Markdown(elem_id="fb-summary")
        plot = gr.BarPlot(x="day", y="count", color="series", title="Ratings by day, label and adapter",
                          elem_id="fb-plot")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="fb-table")
        with gr.Accordion("Download your ratings", open=False, elem_id="fb-download"):
            with gr.Row():
                fmt = gr.Radio([(words, key) for key, words in DATASET_WORDS.items()], value="sft",
                               label="What to download", elem_id="fb-format")
                build = gr.Button("Build the file", elem_id="fb-build")
            file = gr.File(label="Download (JSON Lines: one record a line)", elem_id="fb-file")
            built = gr.Markdown(elem_id="fb-built")
        inputs, outputs = [label, adapter, text], [plot, table, adapter, summary]
        for trigger in (tab.select, refresh.click, label.change, text.submit):
            trigger(self.refresh, inputs, outputs, api_visibility="private")
        adapter.input(self.refresh, inputs, outputs, api_visibility="private")
        build.click(self.export, [fmt], [file, built], api_name="export_dataset")
