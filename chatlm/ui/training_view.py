"""A round and an adapter as the Training tab draws them: its progress line, loss plot, held-out
figures, verdict and Compare's headings. Pure formatting, apart from the tab's handlers."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import pandas as pd

from chatlm.engine.params import SamplingParams
from chatlm.evaluation import verdict
from chatlm.store.models import AdapterVersion, TrainingRun
from chatlm.ui.chat_defaults import plain

BASE = "base model"
COMPARE_PROMPT_CHARS = 80
"""How much of the system prompt the line over Compare's answers quotes."""


def chosen_adapter(choice: str | None) -> str | None:
    """A dropdown's choice as the service names it: None is the base model."""
    return None if choice in (None, BASE) else choice


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


RUNNING_FIGURES = (("total_steps", "step {step}/{total_steps}"), ("last_loss", "loss {last_loss:.4f}"),
                   ("tokens_per_s", "{tokens_per_s:.0f} tokens/s"), ("seconds_left", "about {seconds_left:.0f} s left"))
FINAL_FIGURES = (("step", "after {step} steps"), ("last_loss", "final loss {last_loss:.4f}"),
                 ("tokens_per_s", "{tokens_per_s:.0f} tokens/s"), ("elapsed_s", "{elapsed_s:.0f} s of training"))


def _figures(progress: dict[str, Any], wanted: tuple[tuple[str, str], ...]) -> list[str]:
    """The figures of a run's progress row that it has, formatted."""
    values = {"step": 0, **progress, "last_loss": progress["loss"][-1][1] if progress.get("loss") else None}
    return [fmt.format(**values) for key, fmt in wanted if values.get(key) is not None]


def describe_run(run: TrainingRun | None) -> str:
    """One line on a round: where it is, or how it ended."""
    if run is None:
        return "No training round yet."
    p = run.progress or {}
    if run.status == "failed":
        return f"**Round {run.id} failed:** {html.escape(run.error or '', quote=False)}"  # may quote a text's name
    if run.status == "succeeded":
        head = f"**Round {run.id} succeeded:** adapter `{run.adapter_name}` ({run.method}) is registered"
        return " ".join([head, ", ".join(_figures(p, FINAL_FIGURES))]).strip() + "."
    head = f"**Round {run.id} is {run.status}** ({run.method}), phase: {p.get('phase', run.status)}"
    return "; ".join([head, *_figures(p, RUNNING_FIGURES)]) + "."


def loss_frame(run: TrainingRun | None) -> pd.DataFrame:
    points = ((run.progress or {}).get("loss") or []) if run else []
    return pd.DataFrame(points, columns=["step", "loss"])


SHORT_SPAN = 4
"""A round whose logged steps span less than this draws one tick a step, by name: a number axis
put ticks half a step apart there (whole-number labels then read "1, 2, 2")."""


def loss_plot(run: TrainingRun | None) -> Any:
    """The loss plot, hidden until a round has logged a point (never an empty frame).

    Named steps are padded with spaces to one width so that the chart's own text order is step
    order (9 before 10): a sort list would change with each step, and the chart redraws itself
    from scratch on each new sort, where two redraws in flight kept the older one on screen."""
    frame = loss_frame(run)
    if frame.empty or frame["step"].max() - frame["step"].min() >= SHORT_SPAN:
        return gr.update(value=frame, visible=not frame.empty)
    width = len(str(frame["step"].max()))
    return gr.update(value=frame.assign(step=frame["step"].astype(str).str.rjust(width)), visible=True)


def evaluation_frame(adapter: AdapterVersion | None) -> pd.DataFrame:
    """The adapter's held-out figures in rows, with its baseline and the then-active adapter; the
    figures the verdict rests on are marked."""
    if adapter is None or not adapter.metrics:
        return pd.DataFrame(columns=["figure"])
    m = adapter.metrics
    columns = [(adapter.name, m.get("adapter") or {}), (m.get("baseline_name", BASE), m.get("baseline") or {})]
    if m.get("active"):
        columns.append((f"{m['active_name']} (active then)", m["active"]))
    judged = verdict.matters(m)
    keys = [k for k in verdict.FIGURES if any(k in figures for _, figures in columns)]
    rows = [[verdict.FIGURES[k][0] + (" ← judged on" if k in judged else ""),
             *(_fmt(figures.get(k)) for _, figures in columns)] for k in keys]
    return pd.DataFrame(rows, columns=["figure", *(name for name, _ in columns)])


def verdict_text(adapter: AdapterVersion | None) -> str:
    """What the round changed, in plain words (``chatlm.evaluation.verdict``, as the CLI says it)."""
    if adapter is None:
        return ""
    judged = verdict.judge(adapter.metrics)
    mark = {"better": "✅", "worse": "⚠️", "unchanged": "➖"}.get(judged.label, "")
    lines = judged.sentences()
    return f"**{mark} {html.escape(adapter.name)}:** " + " ".join(html.escape(line) for line in lines)


def model_name(choice: str | None, serving: str | None) -> str:
    """A model as Compare names it: an adapter's name or the base model, and whether new chats use it."""
    name = chosen_adapter(choice)
    return (name or BASE) + (" (the default: new chats use it)" if name == serving else "")


def answered_by(adapter: str | None, asked: str | None) -> str:
    """A line under a Compare answer that another model gave: a corrections round answers only the
    questions close to the ones it was trained on (``chatlm.adapters.scope``)."""
    if adapter == asked:
        return ""
    return (f"\n\n*Answered by {adapter or BASE}: {asked} answers only the questions it was trained on "
            "and ones worded almost the same.*")


def asked_with(system_prompt: str, params: SamplingParams) -> str:
    """One line over Compare's answers: what both models were asked with."""
    said = " ".join(system_prompt.split())
    if len(said) > COMPARE_PROMPT_CHARS:
        said = said[:COMPARE_PROMPT_CHARS - 1].rstrip() + "…"
    prompt = f"your chat's system prompt “{plain(said)}”" if said else "no system prompt (as your chat)"
    return (f"Asked with {prompt}, max {params.max_new_tokens} new tokens, greedy (temperature 0), "
            "so a difference between the answers comes from the models.")
