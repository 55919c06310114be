"""Fine-tuning rounds on a tiny model: one round at a time, a worker that fails or is killed leaves
nothing behind, every method trains, evaluates and registers an adapter, the command line and a
training host that claims queued rounds, the CPU loss on completion tokens only; and only an admin
may use the training service, whose rounds the Training tab describes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatlm.compose import sessions_for
from chatlm.config import Settings
from chatlm.engine.params import SamplingParams
from chatlm.errors import InputError
from chatlm.store import db, registry, repo
from chatlm.store.registry import RoundInProgressError
from chatlm.training import paths, rounds, worker
from chatlm.training.options import RoundOptions
from tests.conftest import REPO
from tests.seeding import seed_pairs
from tests.wiring import make_service

SQUAD = Path(__file__).resolve().parent / "data" / "squad-mini.json"
"""A slice of the shared SQuAD sample kept with the tests, so a clean clone runs the whole loop."""
P = SamplingParams(temperature=0.0, max_new_tokens=4)


def adapter_dirs(settings: Settings) -> list[str]:
    folder = paths.adapters_dir(settings)
    return sorted(os.listdir(folder)) if folder.is_dir() else []


# ---- one round at a time; a failed worker leaves nothing behind ----------------------------------
@pytest.mark.slow
def test_refused_second_round_and_failed_workers_leave_nothing(tiny_settings) -> None:
    sessions = sessions_for(tiny_settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
        registry.register(s, name="keep-v1", base_model="tiny", path="/nowhere", method="sft", dataset_hash="0")
        registry.activate(s, name="keep-v1")
    seed_pairs(sessions, uid, 10)

    with pytest.raises(InputError, match="Batch size must be a whole number"):  # refused before it starts
        RoundOptions("dpo", max_steps=1, batch_size="many")  # type: ignore[arg-type]
    with db.transaction(sessions) as s:  # a run row the worker cannot use (an older version's, say)
        bad = registry.start_run(s, method="dpo", params={"max_steps": 1, "batch_size": "many"}).id
    rounds.spawn(tiny_settings, bad, sessions=sessions)
    run = rounds.wait(tiny_settings, bad, timeout=120, sessions=sessions)
    assert run.status == "failed" and "ValueError" in run.error and run.adapter_name is None

    for sig, error in ((signal.SIGTERM, "stopped (SIGTERM)"), (signal.SIGKILL, rounds.DIED)):
        long = rounds.start_round(tiny_settings, RoundOptions("dpo", max_steps=10_000), sessions=sessions)
        with pytest.raises(RoundInProgressError):
            rounds.start_round(tiny_settings, RoundOptions("dpo"), sessions=sessions)
        deadline = time.monotonic() + 180
        while True:  # stop it mid-training, when its temporary adapter directory exists
            with db.transaction(sessions) as s:
                run = registry.get_run(s, run_id=long)
            if run.progress.get("step") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert run.status == "running" and run.progress["step"] >= 1, run.progress
        assert [d for d in adapter_dirs(tiny_settings) if d.startswith(paths.TMP_PREFIX)]
        os.kill(run.pid, sig)
        run = rounds.wait(tiny_settings, long, timeout=60, sessions=sessions)
        assert run.status == "failed" and error in run.error, run.error
        assert adapter_dirs(tiny_settings) == []
    with db.transaction(sessions) as s:
        assert registry.active_adapter(s).name == "keep-v1"
        assert [a.name for a in registry.list_adapters(s)] == ["keep-v1"]


def test_directory_left_by_a_kill_before_registration_does_not_block_later_rounds(tiny_settings) -> None:
    """A worker SIGKILLed between renaming its adapter directory and committing the registration
    leaves ``chatlm-vN`` on disk with no row; the next round must neither fail on that name nor
    delete a registered adapter or a live worker's directory."""
    sessions = sessions_for(tiny_settings)
    folder = paths.adapters_dir(tiny_settings)
    kept = folder / "chatlm-v1"
    kept.mkdir(parents=True)
    (kept / "adapter_config.json").write_text("{}")
    with db.transaction(sessions) as s:
        registry.register(s, name="chatlm-v1", base_model="tiny", path=str(kept.resolve()), method="sft",
                          dataset_hash="0")
        orphan = folder / "chatlm-v2"
        orphan.mkdir()
        (orphan / "adapter_model.safetensors").write_bytes(b"half")
        # while the orphan is there, a worker registering now skips its name
        assert registry.next_name(s, prefix="chatlm", taken=lambda n: (folder / n).exists()) == "chatlm-v3"
        run_id = registry.start_run(s, method="sft", params={}).id
    rounds.reap(tiny_settings, sessions)  # a round is queued: its worker may be about to register
    assert orphan.is_dir()
    with db.transaction(sessions) as s:
        registry.fail_run(s, run_id=run_id, error="test")
    rounds.reap(tiny_settings, sessions)
    assert adapter_dirs(tiny_settings) == ["chatlm-v1"] and (kept / "adapter_config.json").is_file()
    with db.transaction(sessions) as s:
        assert registry.next_name(s, prefix="chatlm", taken=lambda n: (folder / n).exists()) == "chatlm-v2"


# ---- every method, in process, on the tiny model -------------------------------------------------
@pytest.mark.slow
def test_each_method_trains_evaluates_and_registers(tiny_settings, tiny, tmp_path) -> None:
    import copy
    import dataclasses

    from chatlm.chat.turns import ChatService
    from chatlm.engine.local import LocalBackend

    sessions = sessions_for(tiny_settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
    seed_pairs(sessions, uid, 10)
    squad = tmp_path / "mini-squad.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": [{"title": "Sums", "paragraphs": [{
        "context": "Two plus two is four. Three plus three is six.",
        "qas": [{"id": "a", "question": "What is two plus two?", "is_impossible": False,
                 "answers": [{"text": "four", "answer_start": 17}]}]}]}]}))
    names = []
    for method, from_active in (("sft", False), ("dpo", True), ("kto", False)):
        with db.transaction(sessions) as s:
            params = {"max_steps": 2, "from_active": from_active, "batch_size": 4,
                      "squad": str(squad) if method == "kto" else None}
            run_id = registry.start_run(s, method=method, params=params).id
        assert worker.run_round(tiny_settings, run_id) == 0
        with db.transaction(sessions) as s:
            run = registry.get_run(s, run_id=run_id)
            adapter = registry.get_adapter(s, name=run.adapter_name)
            if method == "sft":
                registry.activate(s, name=adapter.name)
        names.append(adapter.name)
        assert run.status == "succeeded" and run.finished_at and run.error is None
        assert run.progress["step"] == run.progress["total_steps"] == 2 and len(run.progress["loss"]) == 2
        assert run.progress["tokens_per_s"] > 0
        assert adapter.method == method and adapter.base_model == Path(tiny_settings.model).name
        assert adapter.hyperparams["lora"]["r"] == 16 and adapter.hyperparams["max_steps"] == 2
        m = adapter.metrics
        assert m["target"] in m["adapter"] and m["target"] in m["baseline"] and m["train"]["steps"] == 2
        files = set(os.listdir(adapter.path))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and not any(
            f.endswith((".bin", ".pt")) for f in files)
        assert len(adapter.dataset_hash) == 64
    assert names == ["chatlm-v1", "chatlm-v2", "chatlm-v3"]
    with db.transaction(sessions) as s:
        dpo = registry.get_adapter(s, name="chatlm-v2")
        assert dpo.parent == "chatlm-v1" and dpo.metrics["baseline_name"] == "chatlm-v1"
        kto = registry.get_adapter(s, name="chatlm-v3")
        assert kto.parent is None and kto.metrics["qa"]["questions"] == 1
        assert 0 <= kto.metrics["adapter"]["qa_f1"] <= 1 and "qa_f1" in kto.metrics["baseline"]
    assert [d for d in adapter_dirs(tiny_settings) if d.startswith(".")] == []

    # a server starting up serves the registry's active adapter; a broken one leaves the base model
    backend = LocalBackend(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)))
    try:
        service = ChatService(tiny_settings, backend, sessions)
        assert service.adapters.restore() == "chatlm-v1" == service.adapters.active
        with db.transaction(sessions) as s:
            registry.register(s, name="gone-v1", base_model="tiny", path="/nowhere", method="sft", dataset_hash="0")
            registry.activate(s, name="gone-v1")
        assert service.adapters.restore() is None and service.adapters.active is None
    finally:
        backend.close()


@pytest.mark.slow
def test_cli_train_wait_and_adapters(tiny_settings) -> None:
    sessions = sessions_for(tiny_settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
    seed_pairs(sessions, uid, 10)
    env = {**os.environ, "CHATLM_DATA_DIR": str(tiny_settings.data_dir), "CHATLM_MODEL": tiny_settings.model,
           "CHATLM_DEVICE": "cpu", "CHATLM_DATABASE_URL": tiny_settings.db_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatlm", *args], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=300)

    out = cli("train", "--max-steps", "2", "--wait")
    assert out.returncode == 0, out.stderr
    assert "chatlm-v1: dpo adapter, " in out.stdout and "pair_margin" in out.stdout and "round 1" in out.stderr
    assert re.search(r"chatlm-v1: dpo adapter, (better|worse|unchanged): pair_accuracy", out.stdout), out.stdout
    assert "adapters activate chatlm-v1" in out.stdout
    # the QA harness scores the trained adapter (it answers from a scratch database of its own)
    scored = cli("eval", "qa", "--squad", str(SQUAD), "--limit", "2", "--max-new-tokens", "4",
                 "--adapter", "chatlm-v1", "--no-progress", "--json", "-")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["adapter"] == "chatlm-v1" and "adapter=chatlm-v1" in scored.stderr
    assert cli("adapters", "activate", "chatlm-v1", "--yes").returncode == 0
    listing = cli("adapters", "list").stdout
    assert re.search(r"^\*\s+chatlm-v1\s+dpo\s+-\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+(better|worse|unchanged): "
                     r"pair_accuracy", listing, re.M), listing
    out = cli("adapters", "activate", "nope")
    assert out.returncode == 2 and "No adapter named 'nope'" in out.stderr
    assert "the base model is active" in cli("adapters", "rollback").stdout
    out = cli("adapters", "rollback")
    assert out.returncode == 2 and "Nothing to roll back" in out.stderr


@pytest.mark.slow  # runs the command line in a subprocess
def test_a_training_host_claims_queued_rounds(tiny_settings) -> None:
    """CHATLM_TRAINER=queue: the front end only queues the round; a worker given the database URL
    and the adapter storage (here in another process, as on a GPU host) claims and trains it."""
    import dataclasses
    from datetime import timedelta

    settings = dataclasses.replace(tiny_settings, trainer="queue")
    sessions = sessions_for(settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
    seed_pairs(sessions, uid, 10)
    run_id = rounds.start_round(settings, RoundOptions("sft", max_steps=1), sessions=sessions)
    with db.transaction(sessions) as s:
        queued = registry.get_run(s, run_id=run_id)
        assert (queued.status, queued.pid) == ("queued", None)  # nothing started here
    with pytest.raises(RoundInProgressError):  # still one round at a time
        rounds.start_round(settings, RoundOptions("sft"), sessions=sessions)
    env = {**os.environ, "CHATLM_DATA_DIR": str(settings.data_dir), "CHATLM_DATABASE_URL": settings.db_url,
           "CHATLM_MODEL": settings.model, "CHATLM_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "chatlm.training.worker", "--next"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with db.transaction(sessions) as s:
        run = registry.get_run(s, run_id=run_id)
        assert run.status == "succeeded" and run.host == registry.HOST
        assert registry.get_adapter(s, name=run.adapter_name).method == "sft"
    again = subprocess.run([sys.executable, "-m", "chatlm.training.worker", "--next"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 3  # nothing queued

    # a round running on another host: alive while it writes progress, dead once it stops
    with db.transaction(sessions) as s:
        remote = registry.start_run(s, method="sft", params={})
        remote.status, remote.pid, remote.host = "running", 999999, "gpu-host-1"
        remote.heartbeat_at = registry.utcnow()
    rounds.reap(settings, sessions)
    with db.transaction(sessions) as s:
        assert registry.get_run(s, run_id=remote.id).status == "running"  # its pid means nothing here
        registry.get_run(s, run_id=remote.id).heartbeat_at = registry.utcnow() - timedelta(minutes=20)
    rounds.reap(settings, sessions)
    with db.transaction(sessions) as s:
        gone = registry.get_run(s, run_id=remote.id)
        assert gone.status == "failed" and "gpu-host-1" in gone.error


def test_cpu_rounds_project_only_completion_tokens_with_the_same_loss(tiny, monkeypatch) -> None:
    """The patched TRL fused head on a CPU: the loss and the gradients are TRL's own, computed on
    the completion tokens only (the benchmark measures the time and memory this saves)."""
    import copy

    import torch
    import trl.trainer.utils as trl_utils

    from chatlm.training import trainer

    model = copy.deepcopy(tiny.model)
    trl_utils.add_fused_lm_head(model)
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 24))
    labels = ids.clone()
    labels[:, :18] = -100  # the prompt

    def loss_and_grads() -> tuple[float, torch.Tensor]:
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.item(), model.model.layers[0].mlp.down_proj.weight.grad.clone()

    stock = getattr(trl_utils._use_triton, "original", trl_utils._use_triton)
    monkeypatch.setattr(trl_utils, "_use_triton", stock)
    assert not trl_utils._use_triton(torch.device("cpu"))
    every_token = loss_and_grads()
    assert trainer.score_completions_only_on_cpu()
    assert trl_utils._use_triton(torch.device("cpu"))
    completions_only = loss_and_grads()
    assert completions_only[0] == pytest.approx(every_token[0], rel=1e-5)
    assert torch.allclose(completions_only[1], every_token[1], rtol=1e-4, atol=1e-6)


# ---- who may train, and what the Training tab shows of a round ----------------------------------
def test_only_an_admin_may_use_the_training_service(settings, tiny_backend) -> None:
    """The admins-only rule lives in TrainingService: every call with a non-admin actor is refused
    before anything is read, started or changed (the tab is only hidden; this is the check)."""
    from chatlm.errors import PermissionDeniedError
    from chatlm.identity.accounts import Actor
    from chatlm.training.manage import TrainingService

    service = make_service(settings, tiny_backend)
    uid = service.actor().user_id
    seed_pairs(service.sessions, uid, 10)
    training = TrainingService(service)
    user = Actor(user_id=uid, name="local", is_admin=False)
    calls = [lambda: training.runs(user), lambda: training.adapters(user), lambda: training.plan(user),
             lambda: training.serving(user), lambda: training.start(user, RoundOptions("dpo", max_steps=1)),
             lambda: training.promote(user, None), lambda: training.rollback(user),
             lambda: training.compare(user, [{"role": "user", "content": "hi"}], (None, None), P)]
    for call in calls:
        with pytest.raises(PermissionDeniedError, match="Only an admin"):
            call()
    admin = Actor(user_id=uid, name="local", is_admin=True)
    assert training.runs(admin) == [] and training.plan(admin).method == "dpo"
    left, right = training.compare(admin, [{"role": "user", "content": "hi"}], (None, None), P)
    assert left.wait() == right.wait()  # the same greedy answer from the same model


def test_training_tab_shows_a_round_in_progress_and_how_it_ended() -> None:
    """What the Training tab's timer draws from the run row: step, loss, tokens/s, time left, the
    loss curve; then the outcome with its figures, or the error."""
    from chatlm.store.models import TrainingRun
    from chatlm.ui.training_view import describe_run, loss_frame

    progress = {"phase": "training", "step": 5, "total_steps": 21, "loss": [[4, 0.7], [5, 0.65]],
                "tokens_per_s": 80.4, "seconds_left": 312.2, "elapsed_s": 40.0}
    run = TrainingRun(id=3, status="running", method="dpo", progress=progress)
    assert describe_run(run) == ("**Round 3 is running** (dpo), phase: training; step 5/21; loss 0.6500; "
                                 "80 tokens/s; about 312 s left.")
    assert loss_frame(run).to_dict("list") == {"step": [4, 5], "loss": [0.7, 0.65]}
    done = TrainingRun(id=3, status="succeeded", method="dpo", adapter_name="chatlm-v2",
                       progress={**progress, "step": 21})
    assert describe_run(done) == ("**Round 3 succeeded:** adapter `chatlm-v2` (dpo) is registered after 21 steps, "
                                  "final loss 0.6500, 80 tokens/s, 40 s of training.")
    failed = TrainingRun(id=4, status="failed", method="auto", error="Not enough feedback to train.")
    assert describe_run(failed) == "**Round 4 failed:** Not enough feedback to train."
    assert describe_run(None) == "No training round yet." and loss_frame(None).empty


def test_a_short_rounds_loss_plot_names_its_steps_in_step_order() -> None:
    """A round of a few steps ticks each step once, 9 before 10 in the chart's own text order, and
    never sends a sort that would make the chart redraw itself at each step."""
    from chatlm.store.models import TrainingRun
    from chatlm.ui.training_view import loss_plot

    def plot(steps: list[int]) -> dict:
        return loss_plot(TrainingRun(id=1, status="running", progress={"loss": [[s, 0.5] for s in steps]}))

    short = plot([8, 9, 10, 11])
    assert sorted(short["value"]["step"]) == list(short["value"]["step"]) == [" 8", " 9", "10", "11"]
    assert "sort" not in short and short["visible"]
    assert list(plot(list(range(1, 12)))["value"]["step"]) == list(range(1, 12))  # a long round: numbers
    assert plot([])["visible"] is False


# ---- a round on a user's chat corrections --------------------------------------------------------
@pytest.mark.slow
def test_a_chat_corrections_round_learns_every_correction_and_is_judged_on_everyday_questions(
        tiny_settings) -> None:
    """SFT on written corrections of chat answers trains on every one of them (none is held out) at
    the corrections' learning rate, and its verdict says how many everyday questions the model
    answered right before and after (nothing else was held out)."""
    from chatlm.training import trainer
    from tests.seeding import add_turn

    sessions = sessions_for(tiny_settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
    system = {"role": "system", "content": "You are a helpful assistant."}
    for i in range(6):
        question = f"What is the name of my pet number {i}?"
        add_turn(sessions, uid, question, [(f"I do not know pet {i}.", -1, f"Pet {i} is called Biscuit {i}.")],
                 prompt=[system, {"role": "user", "content": question}])
    with db.transaction(sessions) as s:
        run_id = registry.start_run(s, method="auto", params={"max_steps": 2}).id
    assert worker.run_round(tiny_settings, run_id) == 0
    with db.transaction(sessions) as s:
        adapter = registry.get_adapter(s, name=registry.get_run(s, run_id=run_id).adapter_name)
        hp, metrics = adapter.hyperparams, adapter.metrics
    assert adapter.method == "sft" and hp["learning_rate"] == trainer.CORRECTIONS_LR
    assert hp["train_records"] == 6 and metrics["learnt"]["corrections"] == 6  # none held out
    before, after = metrics["baseline"]["everyday_right"], metrics["adapter"]["everyday_right"]
    assert 0 <= before <= 1 and 0 <= after <= 1
    said = " ".join(metrics["verdict"]["summary"])
    assert f"everyday questions answered right: {before:.3g} → {after:.3g}" in said
    # served only to what it was taught: the six questions beside the weights, the base model for the rest
    from chatlm.adapters.scope import Scope

    scope = Scope.read(Path(adapter.path))
    assert scope is not None and scope.falls_back_to is None
    assert sorted(scope.questions) == [f"What is the name of my pet number {i}?" for i in range(6)]
    assert metrics["scope"]["taught"] == 6
    assert "It answers the 6 questions it was trained on" in said
