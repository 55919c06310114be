"""Strict checks of sampling values for API callers: fast, no model."""

from __future__ import annotations

import pytest

from chatlm.engine.params import SamplingParams
from chatlm.engine.sampling import make_generator
from chatlm.errors import InputError


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"top_k": -1}, "top_k must be 0"),
    ({"stop": ("",)}, "stop strings must not be empty"),
    ({"stop": ("ok", "")}, "stop strings must not be empty"),
    ({"seed": 2**80}, "seed must be between"),
    ({"seed": 2**63}, "seed must be between"),
    ({"seed": -(2**63) - 1}, "seed must be between"),
])
def test_out_of_range_values_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(InputError, match=words):
        SamplingParams(**kwargs).validate()


@pytest.mark.parametrize("seed", [0, 7, 2**63 - 1, -(2**63)])
def test_every_accepted_seed_seeds_a_generator(seed: int) -> None:
    params = SamplingParams(seed=seed, top_k=0, stop=("x",)).validate()
    assert make_generator(params) is not None  # 2**80 used to fail here, inside a batch step


def test_the_ui_path_still_drops_empty_stop_strings() -> None:
    assert SamplingParams(stop=("", "a")).clamped(10).stop == ("a",)
