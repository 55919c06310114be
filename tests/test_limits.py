"""Fair share: with accounts, one user cannot fill the backend's queue for everyone else."""

from __future__ import annotations

import pytest

from chatlm.chat.limits import FairShare, UserLimitError
from chatlm.config import Settings
from chatlm.engine.params import SamplingParams
from tests.wiring import make_service

LONG = SamplingParams(temperature=0.0, max_new_tokens=200)
SHORT = SamplingParams(temperature=0.0, max_new_tokens=2)


class Done:
    done = True


class Running:
    done = False


def test_limits_per_user_reset_with_time() -> None:
    now = [0.0]
    fair = FairShare(answers=1, per_minute=3, clock=lambda: now[0])
    fair.admit(1)
    fair.track(1, Running())
    with pytest.raises(UserLimitError, match="already have 1 answer"):
        fair.admit(1)
    fair.admit(2)  # another user is not held back by the first
    fair._running[1] = [Done()]  # the answer ended
    fair.admit(1)
    fair.admit(1)
    with pytest.raises(UserLimitError, match="3 requests in the last minute"):
        fair.admit(1)
    now[0] = 61.0
    fair.admit(1)


def test_a_user_at_the_limit_is_refused_before_anything_is_stored(tmp_path, tiny_backend) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", auth="password", user_answers=1,
                                 user_requests_per_minute=0)
    service = make_service(settings, tiny_backend)
    bob, ann = service.actor("bob"), service.actor("ann")
    first, second = service.new_conversation(bob), service.new_conversation(bob)
    running = service.send(bob, first.id, "a long story", LONG)
    stream = iter(running)
    next(stream)
    with pytest.raises(UserLimitError, match="limit is 1 per user"):
        service.send(bob, second.id, "another one", SHORT)
    assert service.history(bob, second.id) == []  # the refused message was not stored
    other = service.send(ann, service.new_conversation(ann).id, "hello", SHORT)  # ann is not held back
    other.run()
    service.stop(bob, first.id)
    list(stream)
    service.send(bob, second.id, "now it fits", SHORT).run()
    assert [m.role for m, _ in service.history(bob, second.id)] == ["user", "assistant"]
