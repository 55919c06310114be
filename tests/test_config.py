"""Settings: every variable is parsed and checked (documented: tests/test_docs.py)."""

from __future__ import annotations

import pytest

from chatlm.config import Settings
from chatlm.errors import ConfigError


def test_flags_and_modes_are_parsed_and_checked() -> None:
    assert Settings.from_env({"CHATLM_ALLOW_OPEN": "yes", "CHATLM_AUTH": "password"}).allow_open
    assert not Settings.from_env({"CHATLM_ALLOW_OPEN": "0"}).allow_open
    with pytest.raises(ConfigError, match="1 or 0"):
        Settings.from_env({"CHATLM_ALLOW_OPEN": "maybe"})
    assert Settings.from_env({"CHATLM_AUTH": "hf", "CHATLM_ADMINS": "ann,bob"}).admins == ("ann", "bob")
    with pytest.raises(ConfigError, match="none, password or hf"):
        Settings.from_env({"CHATLM_AUTH": "ldap"})
    assert Settings.from_env({"SPACE_ID": "me/chatlm"}).auth == "password"  # a Space is public
    assert Settings.from_env({"SPACE_ID": "me/chatlm", "CHATLM_AUTH": "none"}).auth == "none"
    assert Settings.from_env({"CHATLM_AUTH": "password"}).guests_allowed
    assert not Settings.from_env({"CHATLM_AUTH": "password", "CHATLM_GUESTS": "off"}).guests_allowed
    assert not Settings.from_env({}).guests_allowed


def test_a_space_defaults_to_the_hubs_model_for_its_hardware(monkeypatch) -> None:
    from chatlm.engine import loader

    space = Settings.from_env({"SPACE_ID": "me/chatlm"})
    assert space.model == "space" and Settings.from_env({}).model == "bundled"
    assert Settings.from_env({"SPACE_ID": "me/chatlm", "CHATLM_MODEL": "org/other"}).model == "org/other"
    cpu = loader.resolve("space", "cpu")
    assert (cpu.kind, cpu.location) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.setattr(loader, "pick_device", lambda preference: ("cuda", None))
    assert loader.resolve("space").location == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    monkeypatch.setenv("SPACE_ID", "me/chatlm")
    assert Settings.from_env({"SPACE_ID": "me/chatlm"}, data_dir="data").ephemeral_space
    monkeypatch.delenv("SPACE_ID")
    assert not Settings.from_env({}).ephemeral_space
