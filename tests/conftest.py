"""Shared fixtures: the real bundled model (loaded once), a tiny random model, a real SQLite file,
and a running server on a free port."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatlm.config import Settings

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO / ".pytest_cache" / "chatlm-data"
"""The safetensors copy of the bundled GGUF is kept between test runs (first build ~25 s)."""


@pytest.fixture(scope="session")
def bundled():
    """The real bundled SmolLM2-135M-Instruct, loaded once per session."""
    from chatlm.engine import loader

    return loader.load("bundled", MODEL_CACHE, "cpu")


@pytest.fixture(scope="session")
def tiny():
    """A tiny random Llama with the bundled tokenizer: fast engine logic, nonsense text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatlm.engine import loader

    source = loader.resolve("bundled")
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(
        loader.local_path(source, MODEL_CACHE))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    return loader.LoadedModel(model=model, tokenizer=tokenizer, model_id="tiny-random", path="",
                              device="cpu")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data", reader="off")  # see start_server


@pytest.fixture
def uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Gradio's upload folder (also its cache) for this test alone, set before any server starts."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def postgres() -> Iterator:
    """One real PostgreSQL server for the session (``tests/postgres.py``)."""
    from tests.postgres import running

    with running() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the app runs on: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'chatlm.db'}"
    return request.getfixturevalue("postgres").new_database()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, settings: Settings, backend) -> None:
        import uvicorn

        from chatlm.server import build_app

        self.settings = settings
        self.app = build_app(settings, backend)
        self.url = f"http://{settings.host}:{settings.port}"
        config = uvicorn.Config(self.app.asgi, host=settings.host, port=settings.port,
                                log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def start_server(tmp_path: Path):
    """Start the app (UI + API) on a free port with a given backend; stopped after the test."""
    started: list[RunningServer] = []

    def start(backend, data_dir: Path | None = None, **overrides) -> RunningServer:
        # the shipped reader only where a test asks for it (reader="auto"): loading it wraps the
        # model in LoRA layers, and most servers share the session's one bundled model
        overrides.setdefault("reader", "off")
        s = Settings.from_env({}, data_dir=data_dir or tmp_path / "data", port=free_port(),
                              **overrides)
        server = RunningServer(s, backend)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def bundled_backend(bundled) -> Iterator:
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(bundled)
    yield backend
    backend.close()


@pytest.fixture
def tiny_backend(tiny) -> Iterator:
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(tiny, max_batch=4, queue_size=4)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model as a model directory, so a worker process can load it fast."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_dir: Path, database_url: str) -> Settings:
    """The tiny model's training rounds, on a SQLite file and on a PostgreSQL server (the training
    tests; a module that needs SQLite only defines its own)."""
    return Settings.from_env({}, data_dir=tmp_path / "data", model=str(tiny_dir), device="cpu",
                             database_url=database_url)


# ---- the real-browser tests (the modules skip themselves without chromium or playwright) ----------
@pytest.fixture
def server(start_server, bundled_backend):
    """The app (UI + API) over the real bundled model; a module that needs another app defines its own."""
    return start_server(bundled_backend)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Debian chromium, one per test module."""
    from tests.browser import launch

    with launch() as br:
        yield br


@pytest.fixture
def page(browser, server) -> Iterator:
    """A fresh browser context (empty local storage, downloads allowed) per test. It depends on
    ``server`` so that it is closed first: a page left open keeps connections that make the
    server's shutdown wait."""
    from tests.browser import new_page

    with new_page(browser, downloads=True) as pg:
        yield pg


SLOW_FIXTURES = {"bundled", "bundled_backend", "browser", "page", "server"}


LONGEST_FIRST = ("test_browser_corrections.py", "test_reliability.py", "test_training_loop.py",
                 "test_training_rounds.py")
"""The files that take longest (a round from the Training tab alone takes minutes): run first, so
that under two workers (``make test``, files handed out in order) none of them starts last."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that loads the real model, a browser or a PostgreSQL server is slow wherever it
    lives, so that `make test-fast` (``-m "not slow"``) never waits for any of them."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: files keep their order
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SLOW_FIXTURES & names or "postgres" in names or params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``: two workers on two cores) each worker runs torch on one
    core, and so do the servers and rounds it starts: two teams of two OpenMP threads on two cores
    made every kernel wait (``chatlm/torch_threads.py``), and model tests ran three times slower.
    The controller starts the simulated Space's build before the workers exist (they find it
    through the environment): one build, not one per worker."""
    if hasattr(config, "workerinput"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    elif getattr(config.option, "numprocesses", None) and "slow" not in (config.option.markexpr or ""):
        from tests import space_build

        space_build.start(share=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the simulated Space's virtualenv now, when its test will run (tests/space_build.py)."""
    if any(item.path.name == "test_space.py" and "boots" in item.name for item in session.items):
        from tests import space_build

        space_build.start()


ANN, BOB = ("ann", "ann's password"), ("bob", "bob's password")
"""The two accounts of the accounts tests: ann, made first, is the admin; bob is a user."""


@pytest.fixture
def accounts_server(start_server, tiny_backend):
    """A server with accounts on (guests allowed), ann and bob signed up."""
    from chatlm.identity.accounts import AccountService

    running = start_server(tiny_backend, auth="password")
    accounts = AccountService(running.app.service.sessions)
    accounts.add_user(None, *ANN)
    accounts.add_user(None, *BOB)
    yield running
    running.server.config.timeout_graceful_shutdown = 1  # a client's heartbeat must not hold the stop
