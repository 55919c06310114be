"""Two chatlm processes: the front one stores chats, the back one generates over its /v1 API."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from chatlm.config import Settings
from chatlm.engine.params import SamplingParams
from tests.conftest import MODEL_CACHE, REPO, free_port
from tests.wiring import make_service

pytestmark = pytest.mark.slow


@pytest.fixture
def backend_process(tmp_path, bundled):
    """A second chatlm process serving the bundled model (reusing the test model cache)."""
    data = tmp_path / "back"
    (data / "models").mkdir(parents=True)
    for entry in (MODEL_CACHE / "models").iterdir():
        (data / "models" / entry.name).symlink_to(entry)
    port = free_port()
    env = {**os.environ, "CHATLM_DATA_DIR": str(data), "CHATLM_PORT": str(port),
           "CHATLM_API_KEYS": "backkey"}
    proc = subprocess.Popen([sys.executable, "-m", "chatlm", "serve"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/models", headers={"authorization": "Bearer backkey"}).is_success:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"backend process failed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(30)


def test_front_stores_while_back_generates(backend_process, tmp_path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "front", backend="openai",
                                 remote_url=backend_process, remote_api_key="backkey")
    service = make_service(settings)
    try:
        assert service.backend.model_id == "SmolLM2-135M-Instruct"
        me = service.actor()
        conv = service.new_conversation(me)
        reply = service.send(me, conv.id, "What is the capital of France?",
                             SamplingParams(temperature=0, max_new_tokens=20))
        deltas = list(reply)
        assert len(deltas) > 2 and "Paris" in "".join(deltas)
        answer = service.history(me, conv.id)[-1][0]
        assert answer.status == "complete" and "Paris" in answer.content
        assert answer.completion_tokens and answer.prompt_tokens  # usage from the back process
        assert (tmp_path / "front" / "chatlm.db").is_file()
        assert not (tmp_path / "front" / "models").exists()  # no model loaded in front

        stream = iter(service.send(me, conv.id, "Write a long story.",
                                   SamplingParams(temperature=0, max_new_tokens=500)))
        next(stream)
        service.stop(me, conv.id)
        list(stream)
        assert service.history(me, conv.id)[-1][0].status == "stopped"
    finally:
        service.backend.close()


def test_unreachable_remote_is_a_clear_error(tmp_path) -> None:
    from chatlm.errors import ModelLoadError

    settings = Settings.from_env({}, data_dir=tmp_path, backend="openai",
                                 remote_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ModelLoadError, match="did not answer"):
        make_service(settings)
