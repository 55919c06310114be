"""The simulated Space's virtualenv (``pip install -r requirements.txt`` in a fresh venv, about a
minute and a half, mostly waiting on files), started in the background as soon as the test session
knows it will run tests/test_space.py, so the rest of the suite runs meanwhile. It runs at the
lowest CPU priority (``nice``): the tests beside it keep the machine's two cores.

Under pytest-xdist (``make test`` runs two workers) the controller process builds it once, and
names its folder in ``CHATLM_TEST_SPACE_BUILD`` before the workers start; the worker that runs the
test waits for the build's ``pip.json`` there."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

SHARED = "CHATLM_TEST_SPACE_BUILD"
BUILD_S = 1800.0
_started: dict[str, Any] = {}


def front_matter() -> dict[str, Any]:
    """The README's front matter: what Hugging Face Spaces reads to build the Space."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "the README must open with the Space's front matter"
    return dict(yaml.safe_load(text.split("---\n", 2)[1]))


def start(*, share: bool = False) -> None:
    """Begin building once (later calls do nothing); without the front matter's Python, nothing
    starts (the test says so). ``share``: name the folder for worker processes started later."""
    if _started or os.environ.get(SHARED):
        return
    fm = front_matter()
    python = shutil.which(f"python{fm['python_version']}")
    if python is None:
        return
    requirements, gradio_pin = REPO / "requirements.txt", f"gradio=={fm['sdk_version']}"
    root = Path(tempfile.mkdtemp(prefix="chatlm-space-venv-"))
    atexit.register(shutil.rmtree, root, True)
    venv = root / "venv"

    def build() -> None:
        made = subprocess.run(["nice", "-n", "19", python, "-m", "venv", str(venv)], capture_output=True,
                              text=True)
        pip = made if made.returncode else subprocess.run(
            ["nice", "-n", "19", str(venv / "bin/pip"), "install", "--quiet", "-r", str(requirements),
             gradio_pin], capture_output=True, text=True)
        _started["pip"] = pip
        done = {"args": [str(a) for a in pip.args], "returncode": pip.returncode, "stdout": pip.stdout,
                "stderr": pip.stderr}
        (root / "pip.json.tmp").write_text(json.dumps(done))
        (root / "pip.json.tmp").replace(root / "pip.json")

    thread = threading.Thread(target=build, daemon=True, name="space-venv")
    _started.update(thread=thread, venv=venv)
    if share:
        os.environ[SHARED] = str(root)
    thread.start()


def result() -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The built virtualenv and its pip run (built now if nothing started it)."""
    if shared := os.environ.get(SHARED):  # built by the controller process
        done, deadline = Path(shared) / "pip.json", time.monotonic() + BUILD_S
        while not done.is_file():
            if time.monotonic() > deadline:
                raise AssertionError(f"the Space's virtualenv was not built in {BUILD_S:.0f} s")
            time.sleep(1)
        pip = json.loads(done.read_text())
        return Path(shared) / "venv", subprocess.CompletedProcess(pip["args"], pip["returncode"],
                                                                 pip["stdout"], pip["stderr"])
    start()
    if not _started:
        fm = front_matter()
        raise AssertionError(f"python{fm['python_version']} (the front matter's) is not installed")
    _started["thread"].join()
    return _started["venv"], _started["pip"]
