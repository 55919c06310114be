"""One definition of "better" (chatlm.evaluation.verdict): the Training tab, the CLI and the stored
metrics say the same thing, and a round worse on the figures that matter is never called improved."""

from __future__ import annotations

from chatlm.evaluation.verdict import judge, matters

# The round the issue reports: liked answers' perplexity improved (the old target), everything a
# user would notice got worse, and the tab said "improved: yes".
ISSUE_ROUND = {
    "baseline_name": "base", "target": "liked_perplexity",
    "adapter": {"knowledge_f1": 0.667, "pair_margin": -2.155, "rated_margin": -0.9, "liked_perplexity": 3.1},
    "baseline": {"knowledge_f1": 0.923, "pair_margin": -1.335, "rated_margin": -0.4, "liked_perplexity": 5.2},
    "learnt": {"corrections": 4, "adapter": 0, "baseline": 0, "liked": 2, "liked_kept": 2},
}


def test_a_round_worse_on_held_out_questions_is_called_worse() -> None:
    verdict = judge(ISSUE_ROUND)
    assert verdict.label == "worse" and verdict.is_worse
    assert matters(ISSUE_ROUND) == ("knowledge_f1",)  # answers about texts: judged on QA figures
    words = " ".join(verdict.sentences())
    assert "Worse than base model" in words and "0.923 → 0.667" in words
    assert "Answers 0 of your 4 corrections as you wrote them (before: 0)." in words
    assert "Your liked answers: unchanged." in words
    assert "Press Promote again" in verdict.confirm_text("chatlm-v3")


def test_chat_rounds_are_judged_on_every_preference_figure() -> None:
    chat = {k: v for k, v in ISSUE_ROUND.items() if k != "learnt"}
    chat = {**chat, "adapter": dict(chat["adapter"]), "baseline": dict(chat["baseline"])}
    del chat["adapter"]["knowledge_f1"], chat["baseline"]["knowledge_f1"]
    verdict = judge(chat)
    assert set(matters(chat)) == {"pair_margin", "rated_margin", "liked_perplexity"}
    # perplexity improved, but the margins got worse: worse, and it says which
    assert verdict.label == "worse" and {c.key for c in verdict.worse} == {"pair_margin", "rated_margin"}
    assert [c.key for c in verdict.better] == ["liked_perplexity"]


def test_better_unchanged_and_unmeasured() -> None:
    better = judge({"adapter": {"qa_f1": 0.64, "qa_exact": 0.5}, "baseline": {"qa_f1": 0.61, "qa_exact": 0.5},
                    "baseline_name": "reader-v1", "learnt": {"corrections": 12, "adapter": 9, "baseline": 0}})
    assert better.label == "better" and better.baseline == "reader-v1"
    assert better.sentences()[0] == "Answers 9 of your 12 corrections as you wrote them (before: 0)."
    assert "F1 on the SQuAD questions: 0.61 → 0.64" in better.headline()
    # a change inside the noise margin is no change
    same = judge({"adapter": {"pair_margin": 1.001}, "baseline": {"pair_margin": 1.0}})
    assert same.label == "unchanged" and "No clear change" in same.headline()
    assert judge({}).label == "not measured" and judge(None).label == "not measured"
    down = judge({"adapter": {"text_perplexity": 9.0}, "baseline": {"text_perplexity": 7.0}})
    assert down.label == "worse"  # lower is better for perplexity


def test_the_cli_says_the_verdict() -> None:
    from chatlm.cli.train import _figures

    line = _figures(ISSUE_ROUND)
    assert line.startswith("worse: knowledge_f1 0.667 (base 0.923)"), line
    assert "corrections answered as written 0/4 (before 0)" in line


def test_a_corrections_round_that_forgets_everyday_answers_is_called_worse() -> None:
    """Every rating a correction (all train, nothing held out): the everyday questions judge it."""
    forgets = {"baseline_name": "base", "adapter": {"everyday_right": 0.125}, "baseline": {"everyday_right": 0.375},
               "learnt": {"corrections": 20, "adapter": 20, "baseline": 0}}
    verdict = judge(forgets)
    assert verdict.label == "worse" and matters(forgets) == ("everyday_right",)
    assert verdict.sentences() == ["Answers 20 of your 20 corrections as you wrote them (before: 0).",
                                   "Worse than base model: everyday questions answered right: 0.375 → 0.125"]
    assert "everyday questions answered right: 0.375 → 0.125" in verdict.confirm_text("chatlm-v2")


def test_a_corrections_round_served_to_what_it_was_taught_says_so() -> None:
    """A corrections round answers its own questions; every other one its baseline does, as before."""
    scoped = {"baseline_name": "chatlm-v1", "adapter": {"everyday_right": 0.375},
              "baseline": {"everyday_right": 0.375}, "learnt": {"corrections": 5, "adapter": 5, "baseline": 0},
              "scope": {"taught": 5, "near": 0.84, "everyday_answered": 0}}
    verdict = judge(scoped)
    assert verdict.label == "unchanged" and verdict.taught == 5
    assert verdict.sentences()[:2] == [
        "Answers 5 of your 5 corrections as you wrote them (before: 0).",
        "It answers the 5 questions it was trained on and ones worded almost the same; chatlm-v1 answers "
        "every other question, as before."]
    assert judge({**scoped, "scope": None}).taught is None


def test_compare_says_when_another_model_answered() -> None:
    from chatlm.ui.training_view import answered_by

    assert answered_by("chatlm-v2", "chatlm-v2") == ""
    assert "Answered by base model: chatlm-v2 answers only" in answered_by(None, "chatlm-v2")


def test_a_corrections_round_with_no_held_out_question_of_its_own_is_unchanged_not_unmeasured() -> None:
    """Every held-out question is answered by its baseline, as before: nothing it serves changed."""
    verdict = judge({"baseline_name": "reader", "adapter": {}, "baseline": {}, "scope": {"taught": 40}})
    assert verdict.label == "unchanged" and not verdict.is_worse
    assert judge({"baseline_name": "reader", "adapter": {}, "baseline": {}}).label == "not measured"
