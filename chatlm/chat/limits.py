"""Fair share between users: answers at once and requests per minute, per user.

The backend's queue is shared; without a per-user bound one visitor (or one script) could fill it
and everyone else would be told "busy". Each user may have a few answers running and a bounded
number of new ones a minute; the next is refused at once with a message saying which limit, before
anything is stored. Guests draw on one share together: a guest is one new cookie away from another,
so a share per guest would bound nothing.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any

from chatlm.errors import BusyError

WINDOW_S = 60.0
GUESTS = 0
"""The share key of all guests together (no user has id 0)."""


class UserLimitError(BusyError):
    code = "user_limit"


class FairShare:
    """``answers``: running answers per user; ``per_minute``: new answers per user per minute (0:
    no limit). Used only when the app has users (CHATLM_AUTH is not ``none``)."""

    def __init__(self, answers: int, per_minute: int, *, clock: Any = time.monotonic) -> None:
        self.answers, self.per_minute, self.clock = answers, per_minute, clock
        self._lock = threading.Lock()
        self._running: dict[int, list[Any]] = defaultdict(list)
        self._recent: dict[int, deque[float]] = defaultdict(deque)

    def admit(self, user_id: int) -> None:
        """Raise UserLimitError when this user is at a limit; otherwise count the request."""
        now = self.clock()
        with self._lock:
            running = [g for g in self._running[user_id] if not g.done]
            self._running[user_id] = running
            if self.answers and len(running) >= self.answers:
                if user_id == GUESTS:
                    raise UserLimitError(f"Guests together have {len(running)} answer(s) being written (the "
                                         f"limit for all guests is {self.answers}): wait a moment, or sign in.")
                raise UserLimitError(f"You already have {len(running)} answer(s) being written (the limit "
                                     f"is {self.answers} per user): wait for one to end, or stop it.")
            recent = self._recent[user_id]
            while recent and now - recent[0] > WINDOW_S:
                recent.popleft()
            if self.per_minute and len(recent) >= self.per_minute:
                wait = max(1, round(WINDOW_S - (now - recent[0])))
                if user_id == GUESTS:
                    raise UserLimitError(f"Guests together sent {len(recent)} requests in the last minute "
                                         f"(the limit for all guests is {self.per_minute}): try again in "
                                         f"{wait} s, or sign in.")
                raise UserLimitError(f"You sent {len(recent)} requests in the last minute (the limit is "
                                     f"{self.per_minute}): try again in {wait} s.")
            recent.append(now)

    def track(self, user_id: int, generation: Any) -> None:
        """Count an admitted answer as running until its generation is done."""
        with self._lock:
            self._running[user_id].append(generation)
