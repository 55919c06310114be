"""How long a round will take, in words a non-expert reads before pressing Start.

From this server's own finished rounds (seconds per training example and pass, start to registered) when
there are some; else from the figure measured in ``bench/train.py`` on a 2-core CPU (a 200-example
round took 300 s, evaluation included): a first guess that the first round corrects.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

FIRST_GUESS_S_PER_EXAMPLE = 1.5
"""bench/train.json: 300.5 s for a 200-example round on the 2-core CPU (train and evaluate)."""
FIXED_S = 30.0
"""Loading the model and saving the adapter, whatever the data."""


def seconds_per_example(runs: Sequence[Any]) -> float | None:
    """The median rate of finished rounds (``TrainingRun`` rows) that say how much they trained on."""
    rates = []
    for run in runs:
        examples = ((run.progress or {}).get("data") or {}).get("train")
        examples = examples and examples * float((run.progress or {}).get("epochs") or 1)
        if run.status == "succeeded" and run.started_at and run.finished_at and examples:
            rates.append(max((run.finished_at - run.started_at).total_seconds() - FIXED_S, 0) / examples)
    return statistics.median(rates) if rates else None


def estimate(examples: float, runs: Sequence[Any]) -> str:
    """'about 5 minutes' (from earlier rounds here) or 'roughly 5 minutes (a first guess …)' for
    ``examples`` training records times the passes over them."""
    measured = seconds_per_example(runs)
    rate = FIRST_GUESS_S_PER_EXAMPLE if measured is None else measured
    minutes = max(1, int((FIXED_S + rate * examples) / 60 + 0.5))  # half up: 4.5 is "about 5"
    words = f"{minutes} minute{'s' if minutes != 1 else ''}"
    if measured is None:
        return f"roughly {words} (a first guess for a 2-core CPU; the first round here corrects it)"
    return f"about {words} (from the rounds before on this server)"
