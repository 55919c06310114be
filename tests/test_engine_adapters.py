"""Our adapters on a remote engine: one chatlm process is the engine (vLLM's runtime LoRA endpoints,
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``), another the front end with
``CHATLM_BACKEND=openai``. Promoting an adapter makes the engine load it from the storage both see
and the next answer use it; rolling back unloads it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chatlm.config import Settings
from chatlm.engine.params import SamplingParams
from chatlm.store import registry
from chatlm.store.db import transaction
from tests.conftest import REPO, free_port
from tests.test_adapters import make_adapter
from tests.wiring import make_service

pytestmark = pytest.mark.slow
KEY = "engine key"
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


@pytest.fixture
def engine(tmp_path: Path, tiny_dir: Path) -> Iterator[str]:
    """A chatlm serving the tiny model, its adapter storage at ``tmp_path/shared/adapters``."""
    port = free_port()
    env = {**os.environ, "CHATLM_DATA_DIR": str(tmp_path / "shared"), "CHATLM_PORT": str(port),
           "CHATLM_API_KEYS": KEY, "CHATLM_MODEL": str(tiny_dir), "CHATLM_DEVICE": "cpu"}
    log = tmp_path / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chatlm", "serve"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(30)


def engine_models(url: str) -> list[str]:
    listed = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    return [m["id"] for m in listed["data"]]


def test_a_promoted_adapter_is_loaded_into_the_engine_and_a_rollback_unloads_it(engine, tmp_path, tiny) -> None:
    folder = make_adapter(tiny.model, tmp_path / "shared" / "adapters" / "chatlm-v1", 1)
    settings = Settings.from_env({}, data_dir=tmp_path / "front", backend="openai", remote_url=engine,
                                 remote_api_key=KEY)
    service = make_service(settings)
    try:
        me = service.actor()

        def answer(text: str) -> tuple[str, str | None]:
            conv = service.new_conversation(me)
            "".join(service.send(me, conv.id, text, GREEDY))
            stored = service.history(me, conv.id)[-1][0]
            return stored.content, stored.adapter

        base_text, base_adapter = answer("Say something")
        assert base_adapter is None and engine_models(engine) == [service.backend.model_id]
        with transaction(service.sessions) as s:
            registry.register(s, name="chatlm-v1", base_model="tiny", parent=None, path=str(folder),
                              method="sft", dataset_hash="0" * 64, hyperparams={}, metrics={})
            registry.activate(s, name="chatlm-v1")  # promoted (here as `adapters activate` does it)

        tuned_text, tuned_adapter = answer("Say something")
        assert tuned_adapter == "chatlm-v1" and "chatlm-v1" in engine_models(engine)
        direct = httpx.post(f"{engine}/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                            json={"model": "chatlm-v1", "temperature": 0, "max_tokens": 8,
                                  "messages": service.history(me, service.conversations(me)[0].id)[-1][0]
                                  .prompt_messages}).json()
        assert direct["choices"][0]["message"]["content"] == tuned_text != base_text  # the engine's adapter

        with transaction(service.sessions) as s:
            registry.activate(s, name=None)  # rolled back to the base model
        back_text, back_adapter = answer("Say something")
        assert back_adapter is None and back_text == base_text
        assert "chatlm-v1" not in engine_models(engine)  # unloaded from the engine
    finally:
        service.backend.close()


def test_the_engine_loads_only_adapters_on_its_storage_and_only_for_an_admin(engine, tmp_path, tiny) -> None:
    outside = make_adapter(tiny.model, tmp_path / "elsewhere" / "x", 1)
    admin = {"Authorization": f"Bearer {KEY}"}
    refused = httpx.post(f"{engine}/load_lora_adapter", headers=admin, timeout=30,
                         json={"lora_name": "x", "lora_path": str(outside)})
    assert refused.status_code == 400 and "Only adapter directories under" in refused.json()["error"]["message"]
    anonymous = httpx.post(f"{engine}/load_lora_adapter", timeout=30,
                           json={"lora_name": "x", "lora_path": str(outside)})
    assert anonymous.status_code == 401
    missing = httpx.post(f"{engine}/unload_lora_adapter", headers=admin, timeout=30, json={"lora_name": "nope"})
    assert missing.status_code == 404
    assert engine_models(engine) == engine_models(engine)[:1]  # nothing was loaded
