"""One definition of "better" for a trained adapter, in figures and in plain words.

The Training tab, ``chatlm adapters list`` and the registry (``metrics["verdict"]``, written when a
round registers its adapter) all read a round through :func:`judge`, so they never disagree. A round
is judged on the figures that matter for what it was trained on: question-answering figures for
answers about loaded texts; held-out preference and likelihood figures, and everyday questions with
known answers (``chatlm.evaluation.everyday``), for chat; the held-out text's perplexity for a
document. It is

- **worse** when any of those figures got worse than its baseline's by more than the noise margin
  (whatever else improved: a user must not promote a regression unknowingly);
- **better** when none got worse and at least one improved;
- **unchanged** otherwise.

The round's own data, the user's corrections and liked answers, are reported beside it ("answers 3
of your 4 corrections as you wrote them (before: 0)"); they are training data, so they describe what
was learnt, never whether the round generalises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FIGURES: dict[str, tuple[str, bool]] = {
    # key: (plain words, higher is better)
    "qa_f1": ("F1 on the SQuAD questions", True),
    "qa_exact": ("exact answers on the SQuAD questions", True),
    "knowledge_f1": ("F1 on held-out questions about your texts", True),
    "knowledge_exact": ("exact answers to held-out questions about your texts", True),
    "pair_accuracy": ("held-out pairs where it prefers the better answer", True),
    "pair_margin": ("how much more likely it finds the better answer of a pair", True),
    "rated_accuracy": ("held-out liked answers it ranks above disliked ones", True),
    "rated_margin": ("how much more likely it finds liked than disliked answers", True),
    "liked_perplexity": ("surprise at held-out liked answers (lower is better)", False),
    "everyday_right": ("everyday questions answered right", True),
    "text_perplexity": ("surprise at the held-out part of the text (lower is better)", False),
}
QA = ("qa_f1", "qa_exact", "knowledge_f1", "knowledge_exact")
CHAT = ("pair_accuracy", "pair_margin", "rated_accuracy", "rated_margin", "liked_perplexity", "everyday_right")
RELATIVE_NOISE = 0.01
"""A change smaller than this share of the baseline's figure (or than ``ABSOLUTE_NOISE``) is none."""
ABSOLUTE_NOISE = 0.005


@dataclass(frozen=True)
class Change:
    key: str
    before: float
    after: float

    @property
    def words(self) -> str:
        return FIGURES[self.key][0]

    def line(self) -> str:
        return f"{self.words}: {self.before:.3g} → {self.after:.3g}"


@dataclass(frozen=True)
class Verdict:
    """``label`` is "better", "worse", "unchanged" or "not measured"."""

    label: str
    baseline: str
    better: list[Change] = field(default_factory=list)
    worse: list[Change] = field(default_factory=list)
    same: list[Change] = field(default_factory=list)
    learnt: dict[str, int] = field(default_factory=dict)
    taught: int | None = None
    """A corrections round is served only to the questions it was trained on and ones close to
    them (``chatlm.adapters.scope``): how many it was trained on; None: served to every question."""

    @property
    def is_worse(self) -> bool:
        return self.label == "worse"

    def headline(self) -> str:
        """One line, e.g. "Worse than base model: F1 on the SQuAD questions 0.92 → 0.67"."""
        if self.label == "not measured":
            return "Not measured: the round held out nothing to compare on."
        if self.label == "worse":
            return f"Worse than {self.baseline}: " + "; ".join(c.line() for c in self.worse)
        if self.label == "better":
            return f"Better than {self.baseline}: " + "; ".join(c.line() for c in self.better)
        return f"No clear change from {self.baseline} on held-out questions."

    def sentences(self) -> list[str]:
        """What the round changed, in plain words: its own data first, then held-out figures."""
        out: list[str] = []
        n = self.learnt.get("corrections", 0)
        if n:
            out.append(f"Answers {self.learnt.get('adapter', 0)} of your {n} corrections as you wrote them "
                       f"(before: {self.learnt.get('baseline', 0)}).")
        liked = self.learnt.get("liked", 0)
        if liked:
            kept = self.learnt.get("liked_kept", 0)
            out.append(f"Your liked answers: {'unchanged' if kept == liked else f'{kept} of {liked} unchanged'}.")
        if self.taught is not None:
            out.append(f"It answers the {self.taught} questions it was trained on and ones worded "
                       f"almost the same; {self.baseline} answers every other question, as before.")
        out.append(self.headline())
        if self.label != "worse" and self.same:
            out.append("Unchanged: " + "; ".join(c.line() for c in self.same) + ".")
        return out

    def confirm_text(self, name: str) -> str:
        """What Promote says before it promotes a worse round."""
        return (f"{name} is worse than {self.baseline} on held-out questions: "
                + "; ".join(c.line() for c in self.worse)
                + ". Press Promote again to serve it anyway.")


def _changed(key: str, before: float, after: float) -> int:
    """+1 better, -1 worse, 0 within the noise margin."""
    if abs(after - before) <= max(ABSOLUTE_NOISE, RELATIVE_NOISE * abs(before)):
        return 0
    higher = FIGURES[key][1]
    return 1 if (after > before) == higher else -1


def matters(metrics: dict[str, Any]) -> tuple[str, ...]:
    """The figures a round is judged on: QA figures when it has them (answers about texts; a
    likelihood figure says little of a copied span), else chat figures, else the text's."""
    new, old = metrics.get("adapter") or {}, metrics.get("baseline") or {}
    present = [k for k in FIGURES if new.get(k) is not None and old.get(k) is not None]
    qa = [k for k in present if k in QA]
    if qa:
        return tuple(qa)
    chat = [k for k in present if k in CHAT]
    return tuple(chat or present)


def judge(metrics: dict[str, Any] | None) -> Verdict:
    """The verdict on a round's stored metrics (``evaluate.compare``'s output, with ``learnt``)."""
    metrics = metrics or {}
    baseline = str(metrics.get("baseline_name") or "base model")
    baseline = "base model" if baseline == "base" else baseline
    new, old = metrics.get("adapter") or {}, metrics.get("baseline") or {}
    better: list[Change] = []
    worse: list[Change] = []
    same: list[Change] = []
    for key in matters(metrics):
        change = Change(key, float(old[key]), float(new[key]))
        {1: better, -1: worse, 0: same}[_changed(key, change.before, change.after)].append(change)
    learnt = {k: int(v) for k, v in (metrics.get("learnt") or {}).items() if isinstance(v, int | float)}
    taught = (metrics.get("scope") or {}).get("taught")
    # a corrections adapter with nothing of its own to judge answers every held-out question as before
    label = ("worse" if worse else "better" if better else
             "unchanged" if same or taught is not None else "not measured")
    return Verdict(label=label, baseline=baseline, better=better, worse=worse, same=same, learnt=learnt,
                   taught=int(taught) if taught is not None else None)
