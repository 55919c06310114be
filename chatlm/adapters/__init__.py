"""Adapters that ship with the app: the reader for the bundled model (``reader/``, with its card).

A fresh install registers it on the first start (``register_shipped_reader``), so it is listed,
compared and measured like any round's adapter; it serves only questions about a loaded text
(``Serving.ensure_reader``), never other chat, unless an admin promotes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import Session

from chatlm.config import BUNDLED_MODEL, Settings

SHIPPED_READER = Path(__file__).resolve().parent / "reader"
READER_NAME = "reader"


def reader_for(settings: Settings, session: Session, *, register_as: str | None = None) -> tuple[str, str] | None:
    """The reader ``CHATLM_READER`` names, as (name, folder): ``auto`` is the shipped one when the
    bundled model serves (registered under ``register_as``, the served model's id, when given),
    a name is that registered adapter; None for ``off``, another model, or a reader not registered.
    The one answer to "which reader" for serving (``Serving.ensure_reader``) and for rounds that
    continue from it (``chatlm.training.worker``)."""
    from chatlm.store import registry

    if settings.reader == "off":
        return None
    if settings.reader != "auto":
        row = registry.find_adapter(session, name=settings.reader)
        return (row.name, row.path) if row is not None else None
    if settings.model != BUNDLED_MODEL or not SHIPPED_READER.is_dir():
        return None  # the shipped reader is the bundled model's
    if register_as is not None:
        return register_shipped_reader(session, register_as)
    return (READER_NAME, str(SHIPPED_READER)) if registry.find_adapter(session, name=READER_NAME) else None


def register_shipped_reader(session: Session, base_model: str) -> tuple[str, str]:
    """The registry row of the shipped reader (made when missing): its name and folder."""
    from chatlm.engine.adapters import check_files
    from chatlm.store import registry
    from chatlm.store.models import AdapterVersion

    check_files(SHIPPED_READER)
    row = registry.find_adapter(session, name=READER_NAME)
    if row is None:
        card = json.loads((SHIPPED_READER / "training.json").read_text(encoding="utf-8"))
        row = AdapterVersion(name=READER_NAME, base_model=base_model, parent=None, path=str(SHIPPED_READER),
                             method="reader", dataset_hash=card.get("dataset_hash", ""),
                             hyperparams=card.get("hyperparams", {}), metrics=card.get("metrics", {}))
        session.add(row)
        session.flush()
    return row.name, str(SHIPPED_READER)  # this install's copy, wherever the code was moved
