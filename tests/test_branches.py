"""What the page is told to draw on its messages (chatlm.ui.branches), and what it may send back."""

from __future__ import annotations

from types import SimpleNamespace

from chatlm.ui import branches


def test_only_turns_with_alternatives_get_a_pager_in_words_a_user_reads() -> None:
    value = branches.marks([("user", 2, 2), ("assistant", 1, 1), ("user", 1, 1), ("assistant", 3, 3)], 3)
    assert value == {"pagers": [{"index": 0, "role": "question", "pos": 2, "count": 2},
                                {"index": 3, "role": "answer", "pos": 3, "count": 3}], "rated": 3}
    assert branches.marks([("user", 1, 1), ("assistant", 1, 1)], None) == {"pagers": [], "rated": None}


def test_a_click_is_an_index_and_a_step_of_one_and_anything_else_is_refused() -> None:
    def event(data):
        return SimpleNamespace(_data=data)

    assert branches.clicked(event({"index": 3, "step": -1})) == (3, -1)
    assert branches.clicked(event({"index": 0, "step": 1})) == (0, 1)
    for bad in ({"index": 3, "step": 5}, {"index": "3", "step": 1}, {"index": True, "step": 1},
                {"index": 3, "step": True}, {"step": 1}, "3", None):
        assert branches.clicked(event(bad)) is None
    assert branches.clicked(object()) is None
