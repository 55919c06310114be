"""Data functions for the adapter registry and training runs (one writer at a time)."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from chatlm.errors import ChatLMError, NotFoundError
from chatlm.store import db
from chatlm.store.models import AdapterVersion, TrainingRun, utcnow

RUNNING = ("queued", "running")


class RoundInProgressError(ChatLMError):
    status_code = 409
    code = "round_in_progress"


def next_name(session: Session, *, prefix: str, taken: Callable[[str], bool] = lambda name: False) -> str:
    """``prefix-vN`` with N one more than any registered version of that prefix, skipping names that
    ``taken`` says are in use elsewhere (a directory left by a worker killed before its commit)."""
    names = session.scalars(select(AdapterVersion.name).where(AdapterVersion.name.like(f"{prefix}-v%")))
    numbers = [int(m.group(1)) for n in names if (m := re.fullmatch(rf"{re.escape(prefix)}-v(\d+)", n))]
    number = max(numbers, default=0) + 1
    while taken(f"{prefix}-v{number}"):
        number += 1
    return f"{prefix}-v{number}"


def register(session: Session, **fields: Any) -> AdapterVersion:
    adapter = AdapterVersion(**fields)
    session.add(adapter)
    session.flush()
    return adapter


def list_adapters(session: Session) -> list[AdapterVersion]:
    return list(session.scalars(select(AdapterVersion).order_by(AdapterVersion.id)))


def get_adapter(session: Session, *, name: str) -> AdapterVersion:
    adapter = session.scalar(select(AdapterVersion).where(AdapterVersion.name == name))
    if adapter is None:
        raise NotFoundError(f"No adapter named {name!r} in the registry.")
    return adapter


def find_adapter(session: Session, *, name: str) -> AdapterVersion | None:
    return session.scalar(select(AdapterVersion).where(AdapterVersion.name == name))


def is_reader(session: Session, name: str) -> bool:
    """Whether adapter ``name`` was taught to read: a reader round, or a round continued from one."""
    seen: set[str] = set()
    row = find_adapter(session, name=name)
    while row is not None and row.name not in seen:
        if row.method == "reader":
            return True
        seen.add(row.name)
        row = find_adapter(session, name=row.parent) if row.parent else None
    return False


def active_adapter(session: Session) -> AdapterVersion | None:
    return session.scalar(select(AdapterVersion).where(AdapterVersion.is_active.is_(True)))


def activate(session: Session, *, name: str | None) -> AdapterVersion | None:
    """Make ``name`` the adapter new chats use (None: the base model); only one is active, whichever
    front end promotes (the registry lock orders concurrent promotions)."""
    db.lock(session, "registry")
    target = get_adapter(session, name=name) if name is not None else None
    session.execute(update(AdapterVersion).values(is_active=False))
    if target is not None:
        target.is_active = True
        target.activated_at = utcnow()
    return target


def rollback_target(session: Session) -> AdapterVersion | None:
    """The adapter that was active before the current one (None: the base model); changes nothing."""
    current = active_adapter(session)
    if current is None:
        raise ChatLMError("Nothing to roll back: the base model is already active.")
    return session.scalar(
        select(AdapterVersion)
        .where(AdapterVersion.activated_at.is_not(None), AdapterVersion.id != current.id,
               AdapterVersion.activated_at <= current.activated_at)
        .order_by(AdapterVersion.activated_at.desc(), AdapterVersion.id.desc()))


def rollback(session: Session) -> AdapterVersion | None:
    """Activate the adapter that was active before the current one (or the base model)."""
    earlier = rollback_target(session)
    return activate(session, name=earlier.name if earlier else None)


HOST = socket.gethostname()
STALE_AFTER = timedelta(minutes=15)
"""A worker on another host that has written no progress for this long is taken for dead (a step of a
round on a CPU takes seconds to a minute; the worker writes at every step)."""


def run_alive(run: TrainingRun) -> bool:
    """Whether a running round's worker is alive: its pid on this host, its heartbeat elsewhere."""
    if run.host in (None, HOST):
        return process_alive(run.pid)
    beat = run.heartbeat_at or run.started_at or run.created_at
    return beat is not None and utcnow() - beat < STALE_AFTER


def process_alive(pid: int | None) -> bool:
    """Whether the process that claimed a run still exists (a run's only sign of life)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_run(session: Session, *, method: str, params: dict[str, Any]) -> TrainingRun:
    """Create a queued run, refusing a second writer; a run whose process died is marked failed.
    The check and the insert hold the database's registry lock, so two front ends (or a front end
    and the CLI) on one PostgreSQL cannot both start one."""
    db.lock(session, "training")
    for run in session.scalars(select(TrainingRun).where(TrainingRun.status.in_(RUNNING))):
        if run.status == "running" and not run_alive(run):
            fail_run(session, run_id=run.id, error="The training process ended unexpectedly.")
            continue
        raise RoundInProgressError(f"Training round {run.id} is still {run.status}; wait for it to finish.")
    run = TrainingRun(method=method, params=params)
    session.add(run)
    session.flush()
    return run


def claim_next(session: Session, *, pid: int) -> TrainingRun | None:
    """The oldest queued round, claimed (running, on this host, by ``pid``) for a worker on any
    host: under the training lock, so two workers never take the same one."""
    db.lock(session, "training")
    run = session.scalars(select(TrainingRun).where(TrainingRun.status == "queued")
                          .order_by(TrainingRun.id).limit(1)).first()
    if run is not None:
        run.status, run.pid, run.host, run.heartbeat_at = "running", pid, HOST, utcnow()
    return run


def get_run(session: Session, *, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFoundError(f"No training run {run_id}.")
    return run


def fail_run(session: Session, *, run_id: int, error: str) -> None:
    run = get_run(session, run_id=run_id)
    run.status, run.error, run.finished_at = "failed", error[-4000:], utcnow()


def latest_runs(session: Session, *, limit: int = 20) -> list[TrainingRun]:
    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))
