"""What a fine-tuning round learns from: the method chosen for the ratings there are (and what is
missing when there are too few), the held-out split, KTO's class weights, guests' ratings left out
unless asked for, and old free-form ratings about loaded texts trained as SFT on one passage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from chatlm.compose import sessions_for
from chatlm.engine.params import SamplingParams
from chatlm.errors import ChatLMError
from chatlm.store import db, registry
from chatlm.training import data, rounds
from chatlm.training.data import NotEnoughDataError
from chatlm.training.options import RoundOptions
from tests.conftest import REPO
from tests.seeding import add_turn, seed_pairs
from tests.wiring import make_service

P = SamplingParams(temperature=0.0, max_new_tokens=4)


def test_method_choice_holdout_and_too_little_data(settings, tiny_backend, tmp_path) -> None:
    service = make_service(settings, tiny_backend)
    me = service.actor()
    conv = service.new_conversation(me)
    service.send(me, conv.id, "hello", P).run()
    service.rate(me, service.history(me, conv.id)[-1][0].id, 1)
    with db.transaction(service.sessions) as s, pytest.raises(NotEnoughDataError) as err:
        data.build_round(s)
    message = err.value.message
    assert "DPO needs 8 preference pairs" in message and "there are 0" in message
    assert "SFT needs 4 liked or corrected answers; there are 1" in message
    assert "KTO needs 8 rated answers" in message and "(1 liked, 0 disliked)" in message

    other = service.actor("alice").user_id  # every user's ratings count
    for i in range(3):
        add_turn(service.sessions, other, f"q{i}", [(f"good {i}", 1, None)])
    add_turn(service.sessions, me.user_id, "secret", [("hidden", 1, None), ("bad", -1, None)] * 5, excluded=True)
    with db.transaction(service.sessions) as s:
        sft = data.build_round(s)
        assert sft.method == "sft" and sft.counts.sft == 4 and sft.counts.pairs == 0
        assert "hidden" not in sft.jsonl
        with pytest.raises(NotEnoughDataError, match=r"DPO needs 8 preference pairs .* there are 0"):
            data.build_round(s, "dpo")
    for i in range(4):
        add_turn(service.sessions, other, f"bad q{i}", [(f"wrong {i}", -1, None)])
    with db.transaction(service.sessions) as s:
        kto = data.build_round(s)
    assert kto.method == "kto" and (kto.counts.liked, kto.counts.disliked) == (4, 4)
    d, u = kto.kto_weights
    n_d = sum(r["label"] for r in kto.train)
    assert 1 <= d * n_d / (u * (len(kto.train) - n_d)) <= 4 / 3
    seed_pairs(service.sessions, me.user_id, 8)
    with db.transaction(service.sessions) as s:
        dpo, again = data.build_round(s), data.build_round(s)
        with pytest.raises(ChatLMError, match="must be one of"):
            data.build_round(s, "ppo")
    assert dpo.method == "dpo" and dpo.counts.pairs == 8
    assert dpo.dataset_hash == again.dataset_hash == hashlib.sha256(dpo.jsonl.encode()).hexdigest()
    train_prompts = {json.dumps(r["prompt"]) for r in dpo.train}
    held_prompts = {json.dumps(r["prompt"]) for r in dpo.heldout.rated}
    assert held_prompts and not train_prompts & held_prompts
    assert dpo.heldout.prompts == len(held_prompts) == round(0.2 * 16)  # 16 prompts, the excluded one not counted


def test_kto_weights_follow_trl_advice() -> None:
    for n_d, n_u in ((1, 9), (9, 1), (5, 5), (4, 3), (100, 7)):
        d, u = data.kto_weights(n_d, n_u)
        assert 1 <= d * n_d / (u * n_u) <= 4 / 3, (n_d, n_u)


@pytest.mark.slow  # runs the command line in a subprocess
def test_train_cli_says_what_is_missing(tmp_path) -> None:
    env = {**os.environ, "CHATLM_DATA_DIR": str(tmp_path / "d")}
    out = subprocess.run([sys.executable, "-m", "chatlm", "train", "--method", "sft"], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "SFT needs 4 liked or corrected answers; there are 0" in out.stderr
    out = subprocess.run([sys.executable, "-m", "chatlm", "adapters", "list"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "no adapters yet" in out.stdout


def test_guest_ratings_are_left_out_unless_the_admin_asks(tiny_settings) -> None:
    """Anyone can rate as a guest, so a round learns from guests' ratings only when asked to."""
    from chatlm.identity.accounts import AccountService

    sessions = sessions_for(tiny_settings)
    guest = AccountService(sessions).guest()[0]
    seed_pairs(sessions, guest.user_id, 10)
    with db.transaction(sessions) as s, pytest.raises(NotEnoughDataError):
        data.build_round(s)
    with pytest.raises(NotEnoughDataError):
        rounds.start_round(tiny_settings, RoundOptions("dpo"), sessions=sessions)
    with db.transaction(sessions) as s:
        assert data.build_round(s, guests=True).method == "dpo"
        assert registry.latest_runs(s, limit=5) == []  # the refused round left no run behind


def test_old_free_form_knowledge_ratings_train_as_sft_on_one_passage(settings) -> None:
    """Ratings stored before answers were extractive (free-form, three passages, the long cite-your-
    sources instruction) train like new ones: SFT on the one passage holding the user's correction,
    with the short instruction, not DPO on the whole prompt (85 s a step on 620-token prompts)."""
    from chatlm.chat.prompts import grounded_question, split_grounded
    from chatlm.feedback import load
    from chatlm.store import db, repo
    from chatlm.training import data

    sessions = sessions_for(settings)
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
    filler = "The harbour wall was rebuilt after the storm of the previous winter. " * 8
    for i in range(12):
        passages = [(1, "town.txt", f"{filler} Mill {i} stands by the river."),
                    (2, "town.txt", f"Mill {i} was founded by Ada Marsh{i} in 18{i:02d}. {filler}"),
                    (3, "town.txt", filler)]
        prompt = [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": grounded_question(f"Who founded mill {i}?", passages)}]
        add_turn(sessions, uid, f"Who founded mill {i}?",
                 [(f"Mill {i} was founded by a man called John [1].", -1, f"Ada Marsh{i}"),
                  ("It was founded by John Brackenford [3].", -1, None)], prompt=prompt)
    with db.transaction(sessions) as s:
        answers = load.rated_answers(s)
    assert all(a.knowledge and not a.extractive for a in answers)
    corrected = [a for a in answers if a.better_answer]
    for a in corrected:
        _, kept = split_grounded(a.prompt[-1][1])
        assert len(kept) == 1 and a.better_answer in kept[0][2]  # the passage holding the correction
        assert "shortest exact phrase" in a.prompt[-1][1] and a.prompt[0] == ("system", "Be brief.")
    round_data = data.prepare(answers)
    assert round_data.method == "sft" and round_data.knowledge  # DPO would have had 12 pairs
    longest = max(len(m["content"]) for r in round_data.train for m in r["prompt"])
    assert longest < len(grounded_question("Who founded mill 0?", [(1, "t", filler)] * 3)) / 2
    assert {t for _, t in round_data.corrections} <= {f"Ada Marsh{i}" for i in range(12)}
    assert round_data.corrections and not round_data.liked


def test_everyday_questions_are_judged_by_a_word_and_asked_with_the_users_system_prompt() -> None:
    """A chat round's everyday questions count an answer right when it says one of the right words
    as a word; they are asked as the user's chats were (their system prompt)."""
    from chatlm.evaluation.everyday import QUESTIONS, says, system_of

    assert says("The capital of Italy is Rome.", ("rome",)) and not says("Romeo and Juliet.", ("rome",))
    assert says("There are 7 days.", ("7", "seven")) and not says("About 17 of them.", ("7", "seven"))
    assert len(QUESTIONS) >= 12 and all(words for _, words in QUESTIONS)
    system = {"role": "system", "content": "Be brief."}
    assert system_of([[{"role": "user", "content": "hi"}], [system, {"role": "user", "content": "x"}]]) == [system]
    assert system_of([[{"role": "user", "content": "hi"}]]) == []


def test_held_out_items_within_a_corrections_adapters_questions() -> None:
    """A corrections adapter is judged on the held-out questions it answers, every shape of item."""
    from chatlm.training.data import Heldout

    cat = [{"role": "user", "content": "What is my cat called?"}]
    dog = [{"role": "user", "content": "What is my dog called?"}]
    answer = [{"role": "assistant", "content": "Biscuit."}]
    held = Heldout(pairs=[{"prompt": cat, "chosen": answer, "rejected": answer}],
                   rated=[{"prompt": dog, "completion": answer, "label": True}],
                   liked=[{"prompt": cat, "completion": answer}, {"prompt": dog, "completion": answer}],
                   prompts=2, texts=["a window"])
    mine = held.within(lambda prompt: "cat" in prompt[-1]["content"])
    assert (len(mine.pairs), len(mine.rated), len(mine.liked), mine.prompts) == (1, 0, 1, 1)
    assert mine.texts == ["a window"] and held.prompts == 2  # the round's own held-out set is untouched
    assert held.within(lambda prompt: False).prompts == 0
