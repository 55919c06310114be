"""The Training tab: start a LoRA round from the stored ratings, follow it (step, loss, tokens/s,
time left, a live loss plot), read its held-out figures next to the baseline's and the active
adapter's, compare two adapters on one question, promote one, or roll back.

The round runs in its own process; this tab learns of it only through the database (a timer polls
the run row while a round is under way), so a page reload or a second browser sees the same state.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import gradio as gr
import pandas as pd

from chatlm.chat.turns import ChatService
from chatlm.engine.params import SamplingParams
from chatlm.errors import ChatLMError, PermissionDeniedError
from chatlm.evaluation import verdict
from chatlm.feedback.reports import FeedbackService
from chatlm.identity.accounts import Actor, require_admin
from chatlm.identity.requests import Who
from chatlm.store import registry
from chatlm.store.models import AdapterVersion, TrainingRun
from chatlm.training import METHODS, data, eta, trainer
from chatlm.training.manage import TrainingService
from chatlm.training.options import RoundOptions
from chatlm.ui.chat_defaults import new_chat_settings, sampling_params
from chatlm.ui.outputs import Named
from chatlm.ui.training_view import (
    BASE,
    answered_by,
    asked_with,
    chosen_adapter,
    describe_run,
    evaluation_frame,
    loss_plot,
    model_name,
    verdict_text,
    when,
)
from chatlm.ui.uploads import received_file, uploaded_file

POLL_S = 1.0
"""How often the tab reads the run row while a round is under way."""
ADAPTER_COLUMNS = ["active", "name", "method", "parent", "created", "verdict", "judged on"]
RUN_COLUMNS = ["run", "status", "method", "adapter", "started", "finished", "error"]
VIEW = Named("status", "loss", "runs", "timer", "start", "adapters", "shown", "evaluation", "target", "left",
             "right", "active_line", "summary", "promote", "rollback", "judged")
"""The components ``refresh`` fills (the whole tab), by name."""
PROMOTED = VIEW + Named("changed", "confirmed")
"""Promote: the tab, what happened, and the adapter a second press confirms."""
ROLLED_BACK = VIEW + Named("changed")


ABOUT = (
    "**What a round does.** It teaches the model from the ratings people gave: the answers they "
    "liked, and the better answers they wrote when they disliked one. What it learns is kept as a "
    "small add-on to the model (a LoRA adapter, a few MB): you can read what it changed, try it "
    "below, serve it, or leave it; the model itself never changes.\n\n"
    "**What it costs.** Minutes of this machine's processor (the estimate below comes from earlier "
    "rounds). Chatting goes on meanwhile, a little slower.\n\n"
    "**Then.** The tab says what the round changed: how many of your corrections it now answers as "
    "you wrote them (every correction is learnt from), and whether answers to questions it never "
    "saw got better or worse: a fifth of the other ratings, set aside, and a few everyday questions "
    "with known answers, which a round on corrections can get wrong. A round on corrections is "
    "then used only for the questions it was taught and ones worded almost the same (a question "
    "about a text is read again from the passages where your correction was found); every other "
    "question is answered as before it. Promote serves it in new chats; Roll back returns to the "
    "previous one at any time.")
METHOD_WORDS = {
    "sft": "learn to give the liked answers and your corrections (SFT)",
    "dpo": "learn to prefer the better answer of each pair (DPO)",
    "kto": "learn to give answers like the liked ones and unlike the disliked ones (KTO)",
}


class TrainingTab:
    """Admins only: the tab is hidden from others, and behind it ``TrainingService`` refuses anyone
    else (hiding is not access control); handlers pass the request's actor, never an input."""

    def __init__(self, service: ChatService, who: Who, training: TrainingService,
                 feedback: FeedbackService) -> None:
        self.service = service
        self.training = training
        self.feedback = feedback
        self.who = who
        self.promotions: tuple[Any, ...] = ()
        """The Promote and Roll back events, once rendered: the chat's model picker follows them."""

    # ---- reading the registry ----------------------------------------------------------------
    def data_summary(self, actor: Actor, runs: list[TrainingRun]) -> tuple[str, bool]:
        """What the stored ratings allow, in plain words, before anyone presses Start, and how long a
        round takes (from the recent ``runs``); and whether a round can start (Start is disabled
        until it can)."""
        given = self.feedback.contribution(actor).sentence()
        try:
            rd = self.training.plan(actor)
        except data.NotEnoughDataError as exc:
            return f"{given}\n\n{exc.message}", False
        took = eta.estimate(len(rd.train) * trainer.default_epochs(rd.method, len(rd.train)), runs)
        held = f"{rd.heldout.prompts} question{'s' if rd.heldout.prompts != 1 else ''}"
        what = METHOD_WORDS.get(rd.method, rd.method.upper())
        return (f"{given} A round would {what} from {len(rd.train)} of them, keeping {held} aside to "
                f"check the result on. It takes {took}. Chatting goes on while it trains.", True)

    def adapters_frame(self, adapters: list[AdapterVersion]) -> pd.DataFrame:
        rows = []
        for a in reversed(adapters):
            judged = verdict.judge(a.metrics)
            rows.append(["✓" if a.is_active else "", a.name, a.method, a.parent or BASE, when(a.created_at),
                         f"{judged.label} than {judged.baseline}" if judged.label in ("better", "worse")
                         else judged.label, ", ".join(verdict.FIGURES[k][0] for k in verdict.matters(a.metrics or {}))])
        return pd.DataFrame(rows, columns=ADAPTER_COLUMNS)

    @staticmethod
    def runs_frame(runs: list[TrainingRun]) -> pd.DataFrame:
        rows = [[r.id, r.status, r.method, r.adapter_name or "", when(r.started_at), when(r.finished_at),
                 (r.error or "")[:200]] for r in runs]
        return pd.DataFrame(rows, columns=RUN_COLUMNS)

    # ---- handlers ----------------------------------------------------------------------------
    def refresh(self, shown: str | None = None, request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """Everything on the tab, as stored now: ``shown`` (else the newest adapter) is evaluated and
        offered on the right of the comparison, the active one on the left and under Serve."""
        return VIEW(**self._drawn(shown, request))

    def _drawn(self, shown: str | None, request: gr.Request | None) -> dict[str, Any]:
        """``refresh``'s outputs by name."""
        actor = self.who.actor(request)
        runs = self.training.runs(actor)
        run = runs[0] if runs else None
        adapters = self.training.adapters(actor)
        names = [a.name for a in adapters]
        active = next((a.name for a in adapters if a.is_active), BASE)
        shown = shown if shown in names else (names[-1] if names else None)
        picked = next((a for a in adapters if a.name == shown), None)
        running = run is not None and run.status in registry.RUNNING
        choices = [BASE, *reversed(names)]
        serving = self.training.serving(actor)
        summary, ready = self.data_summary(actor, runs)
        return dict(
            status=describe_run(run), loss=loss_plot(run), runs=self.runs_frame(runs), timer=gr.Timer(active=running),
            start=gr.update(interactive=ready and not running), adapters=self.adapters_frame(adapters),
            shown=gr.update(choices=names, value=shown), evaluation=evaluation_frame(picked),
            target=gr.update(choices=choices, value=active), left=gr.update(choices=choices, value=active),
            right=gr.update(choices=choices, value=shown or BASE),
            active_line=f"New chats use: **{serving or BASE}**.", summary=summary,
            promote=gr.update(interactive=bool(adapters)), rollback=gr.update(interactive=serving is not None),
            judged=verdict_text(picked))

    def poll(self, shown: str | None, request: gr.Request) -> tuple[Any, ...]:
        """A timer tick while a round is under way: its progress only (what the user picked stays);
        once it has ended, the whole tab, with the new adapter's evaluation shown."""
        runs = self.training.runs(self.who.actor(request))
        run = runs[0] if runs else None
        if run is None or run.status not in registry.RUNNING:
            return self.refresh(run.adapter_name if run and run.adapter_name else shown, request)
        return VIEW(status=describe_run(run), loss=loss_plot(run), runs=self.runs_frame(runs),
                    timer=gr.Timer(active=True), start=gr.update(interactive=False))

    def start(self, method: str, epochs: float | None, max_steps: float | None, lr: float | None,
              from_active: bool, squad: str | None, guests: bool, request: gr.Request) -> tuple[str, Any]:
        """Start a round in its own process; a refusal (too little data, a round under way) is said."""
        actor = self.who.actor(request)
        received = received_file(squad)  # refused before anything starts when not uploaded here
        try:
            options = RoundOptions(method, epochs=epochs or None, lr=lr or None, from_active=bool(from_active),
                                   max_steps=int(max_steps) if max_steps else None,
                                   squad=str(received) if received else None, guests=bool(guests))
            run_id = self.training.start(actor, options)
        except PermissionDeniedError:
            raise
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return f"Not started: {exc.message}", gr.Timer(active=False)
        where = ("queued for a training worker (CHATLM_TRAINER=queue)" if self.service.settings.trainer == "queue"
                 else "started in its own process")
        return f"Round {run_id} {where}; chatting goes on meanwhile.", gr.Timer(active=True)

    def promote(self, name: str | None, shown: str | None, confirmed: str | None = None,
                request: gr.Request = None) -> tuple[Any, ...]:  # type: ignore[assignment]
        """Serve ``name`` for new chats. A round whose held-out figures are worse is promoted only at
        a second press for the same adapter (``confirmed`` holds the name the first press warned of),
        after the tab has said what gets worse."""
        actor = self.who.actor(request)
        pending = None
        try:
            worse = self.training.worse(actor, chosen_adapter(name))
            if worse is not None and confirmed != name:
                pending = name
                gr.Warning(worse.confirm_text(str(name)))
                message = f"Not promoted yet: {html.escape(worse.confirm_text(str(name)), quote=False)}"
            else:
                now = self.training.promote(actor, chosen_adapter(name))
                message = f"Promoted: new chats use **{html.escape(now or BASE, quote=False)}**."
        except PermissionDeniedError:
            raise
        except ChatLMError as exc:
            gr.Warning(exc.message)
            message = f"Not promoted: {html.escape(exc.message, quote=False)}"
        drawn = self._drawn(shown, request)
        if pending is not None:  # the Serve box keeps the adapter the second press confirms
            drawn["target"] = gr.update(value=pending)
        return PROMOTED(**drawn, changed=message, confirmed=pending)

    def rollback(self, shown: str | None, request: gr.Request) -> tuple[Any, ...]:
        try:
            now = self.training.rollback(self.who.actor(request))
            message = f"Rolled back: new chats use **{now or BASE}**."
        except PermissionDeniedError:
            raise
        except ChatLMError as exc:
            gr.Warning(exc.message)
            message = f"Not rolled back: {exc.message}"
        return ROLLED_BACK(**self._drawn(shown, request), changed=message)

    def asking(self, actor: Actor) -> tuple[str, SamplingParams]:
        """What Compare asks with: the system prompt and settings a new chat of this admin starts
        with (the chat's own code), decoded greedily, so a difference comes from the models alone."""
        system_prompt, settings = new_chat_settings(self.service, actor)
        params = replace(sampling_params(settings), temperature=0.0)
        return system_prompt, params.clamped(self.service.settings.max_new_tokens)

    def compare_heading(self, question: str, left: str | None, right: str | None,
                        request: gr.Request = None) -> tuple[Any, Any, Any]:  # type: ignore[assignment]
        """Before Compare's answers: the line saying what they are asked with, and each answer box
        named after the model that gives it (the default, new chats' model, says so)."""
        actor = self.who.actor(request)
        require_admin(actor)
        if not question or not question.strip():
            return gr.update(), gr.update(), gr.update()
        system_prompt, params = self.asking(actor)
        serving = self.training.serving(actor)
        return (asked_with(system_prompt, params),
                gr.update(value="", label=f"Left answer, from {model_name(left, serving)}"),
                gr.update(value="", label=f"Right answer, from {model_name(right, serving)}"))

    def compare(self, question: str, left: str | None, right: str | None,
                request: gr.Request = None) -> Iterator[tuple[str, str]]:  # type: ignore[assignment]
        """Both answers stream side by side; they are generated in the same batch, greedily, with
        the system prompt and token limit of this admin's new chats (``asking``)."""
        actor = self.who.actor(request)
        require_admin(actor)  # before the empty-question notice: a non-admin learns nothing here
        if not question or not question.strip():
            gr.Warning("Type a question to compare the two on.")
            return
        gens = []
        try:
            system_prompt, params = self.asking(actor)
            # the prompt as a chat's first turn builds it (no system message for an empty prompt)
            messages = self.service._plan(system_prompt, [{"role": "user", "content": question.strip()}],
                                          params).messages
            gens = self.training.compare(actor, messages, (chosen_adapter(left), chosen_adapter(right)), params)
            while not all(g.done for g in gens):
                yield gens[0].text, gens[1].text
                time.sleep(0.2)
        except PermissionDeniedError:
            raise
        except ChatLMError as exc:
            gr.Warning(exc.message)
            yield (f"⚠ {exc.message}",) * 2
            return
        finally:
            for g in gens:
                g.cancel()
        asked = (chosen_adapter(left), chosen_adapter(right))
        yield tuple(g.text + (f"\n\n⚠ {g.error}" if g.error else "") + answered_by(g.adapter, name)  # type: ignore[misc]
                    for g, name in zip(gens, asked, strict=True))

    # ---- layout ------------------------------------------------------------------------------
    def render(self, tab: gr.Tab) -> None:
        gr.Markdown(ABOUT, elem_id="tr-about")
        active_line = gr.Markdown(elem_id="tr-active")
        summary = gr.Markdown(elem_id="tr-data")
        start_btn = gr.Button("Start a round", variant="primary", elem_id="tr-start", interactive=False)
        with gr.Accordion("Advanced options", open=False, elem_id="tr-advanced"):
            with gr.Row():
                method = gr.Dropdown([m for m in METHODS if m != "document"], value="auto", label="Method",
                                     elem_id="tr-method",
                                     info="auto: DPO with enough pairs, else KTO for thumbs up/down, else SFT")
                epochs = gr.Number(value=0, label="Passes over the data (0: the round's own choice)", minimum=0,
                                   elem_id="tr-epochs")
                max_steps = gr.Number(value=0, label="Max steps (0: no limit)", minimum=0, precision=0,
                                      elem_id="tr-max-steps")
                lr = gr.Number(value=0, label="Learning rate (0: 2e-4 SFT, 1e-4 KTO/DPO)", minimum=0,
                               elem_id="tr-lr")
            with gr.Row():
                from_active = gr.Checkbox(label="Continue from the active adapter", elem_id="tr-from-active")
                guests = gr.Checkbox(label="Also learn from guests' ratings", value=False, elem_id="tr-guests",
                                     info="Guests never signed in: anyone can rate as one.")
                squad = uploaded_file(label="SQuAD-format file for QA F1 (optional, slow on CPU)",
                                      file_types=[".json"], type="filepath", elem_id="tr-squad")
        started = gr.Markdown(elem_id="tr-started")
        status = gr.Markdown(elem_id="tr-status")
        loss = gr.LinePlot(x="step", y="loss", title="Training loss", elem_id="tr-loss", visible=False,
                           x_axis_format="d")  # whole steps (ticks were 0.2 steps apart on a short round)
        runs = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, label="Recent rounds", elem_id="tr-runs")

        # Adapter names are free text to the API (a script names adapters this page has not listed);
        # the service checks them against the registry.
        gr.Markdown("## Adapters")
        adapters = gr.Dataframe(headers=ADAPTER_COLUMNS, interactive=False, wrap=True, elem_id="tr-adapters")
        shown = gr.Dropdown([], label="Held-out evaluation of", allow_custom_value=True, elem_id="tr-shown")
        judged = gr.Markdown(elem_id="tr-verdict")
        evaluation = gr.Dataframe(interactive=False, wrap=True, label="Held-out figures", elem_id="tr-eval")
        gr.Markdown("Scroll the tables sideways (→) to see each model's column.", elem_classes=["phone-only"],
                    elem_id="tr-scroll-hint")
        with gr.Row():
            target = gr.Dropdown([BASE], value=BASE, label="Serve", allow_custom_value=True, elem_id="tr-target")
            promote_btn = gr.Button("Promote (new chats use it now)", variant="primary", elem_id="tr-promote")
            rollback_btn = gr.Button("Roll back to the previous one", elem_id="tr-rollback")
        changed = gr.Markdown(elem_id="tr-changed")

        gr.Markdown("## Compare two on the same question")
        with gr.Row():
            left = gr.Dropdown([BASE], value=BASE, label="Left", allow_custom_value=True, elem_id="tr-left")
            right = gr.Dropdown([BASE], value=BASE, label="Right", allow_custom_value=True, elem_id="tr-right")
        question = gr.Textbox(label="Question", elem_id="tr-question")
        compare_btn = gr.Button("Compare", elem_id="tr-compare")
        asked = gr.Markdown(elem_id="tr-asked")
        with gr.Row():
            left_out = gr.Textbox(label="Left answer", lines=6, interactive=False, elem_id="tr-left-answer")
            right_out = gr.Textbox(label="Right answer", lines=6, interactive=False, elem_id="tr-right-answer")

        timer = gr.Timer(POLL_S, active=False)
        confirmed = gr.State(None)
        named = dict(status=status, loss=loss, runs=runs, timer=timer, start=start_btn, adapters=adapters,
                     shown=shown, evaluation=evaluation, target=target, left=left, right=right,
                     active_line=active_line, summary=summary, promote=promote_btn, rollback=rollback_btn,
                     judged=judged, changed=changed, confirmed=confirmed)
        view = VIEW.of(named)
        tab.select(self.refresh, [shown], view, api_visibility="private")
        timer.tick(self.poll, [shown], view, api_visibility="private", show_progress="hidden")
        shown.input(self.refresh, [shown], view, api_visibility="private")
        start_btn.click(self.start, [method, epochs, max_steps, lr, from_active, squad, guests], [started, timer],
                        api_name="start_round").then(self.refresh, [shown], view, api_visibility="private")
        promoted = promote_btn.click(self.promote, [target, shown, confirmed], PROMOTED.of(named),
                                     api_name="promote_adapter")
        rolled_back = rollback_btn.click(self.rollback, [shown], ROLLED_BACK.of(named), api_name="rollback_adapter")
        self.promotions = (promoted, rolled_back)  # the chat's model picker follows them (ChatUI.models)
        compare_btn.click(self.compare_heading, [question, left, right], [asked, left_out, right_out],
                          api_visibility="private", show_progress="hidden").then(
            self.compare, [question, left, right], [left_out, right_out], api_name="compare")
