"""The Training tab's time estimate: a first guess, then this server's own rounds."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

from chatlm.training import eta


def run(status: str, seconds: float, examples: int | None) -> SimpleNamespace:
    start = datetime(2026, 12, 3, 12, 0)
    data = {"data": {"train": examples}} if examples is not None else {}
    return SimpleNamespace(status=status, started_at=start, finished_at=start + timedelta(seconds=seconds),
                           progress=data)


def test_a_first_round_gets_a_first_guess_that_grows_with_the_data() -> None:
    assert eta.estimate(20, []) == "roughly 1 minute (a first guess for a 2-core CPU; the first round here corrects it)"
    assert eta.estimate(400, []).startswith("roughly 11 minutes")  # 30 s + 400 × 1.5 s


def test_finished_rounds_here_set_the_rate_and_failed_or_unsized_ones_do_not() -> None:
    runs = [run("succeeded", 30 + 100 * 6.0, 100), run("succeeded", 30 + 50 * 2.0, 50),
            run("succeeded", 30 + 10 * 4.0, 10), run("failed", 5, 100), run("succeeded", 999, None)]
    assert eta.seconds_per_example(runs) == 4.0  # the median of 6, 2 and 4
    assert eta.estimate(60, runs) == "about 5 minutes (from the rounds before on this server)"  # 30 + 240 s


def test_the_rate_is_per_pass_over_a_record() -> None:
    """A round of 10 records in 20 passes took as long as one of 200 records in one: the same rate."""
    many = run("succeeded", 30 + 200 * 2.0, 200)
    small = run("succeeded", 30 + 200 * 2.0, 10)
    small.progress["epochs"] = 20.0
    assert eta.seconds_per_example([many, small]) == 2.0


def test_sft_on_a_handful_of_corrections_makes_enough_steps() -> None:
    from chatlm.training.trainer import BATCH_SIZE, MIN_STEPS, default_epochs

    assert default_epochs("sft", 8) * 8 >= MIN_STEPS * BATCH_SIZE  # 20 passes: 40 steps of 4
    assert default_epochs("sft", 2) == 20 and default_epochs("sft", 400) == 1
    assert default_epochs("dpo", 12) == 3 and default_epochs("dpo", 80) == 1 and default_epochs("reader", 10) == 3
