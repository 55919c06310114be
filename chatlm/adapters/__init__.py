"""Adapters that ship with the app: the reader for the bundled model (``reader/``, with its card).

A fresh install registers it on the first start (``register_shipped_reader``), so it is listed,
compared and measured like any round's adapter; it serves only questions about a loaded text
(``ChatService.ensure_reader``), never other chat, unless an admin promotes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

SHIPPED_READER = Path(__file__).resolve().parent / "reader"
READER_NAME = "reader"


def register_shipped_reader(session: Session, base_model: str) -> tuple[str, str]:
    """The registry row of the shipped reader (made when missing): its name and folder."""
    from chatlm.engine.adapters import check_files
    from chatlm.store.models import AdapterVersion

    check_files(SHIPPED_READER)
    row = session.scalar(select(AdapterVersion).where(AdapterVersion.name == READER_NAME))
    if row is None:
        card = json.loads((SHIPPED_READER / "training.json").read_text(encoding="utf-8"))
        row = AdapterVersion(name=READER_NAME, base_model=base_model, parent=None, path=str(SHIPPED_READER),
                             method="reader", dataset_hash=card.get("dataset_hash", ""),
                             hyperparams=card.get("hyperparams", {}), metrics=card.get("metrics", {}))
        session.add(row)
        session.flush()
    return row.name, str(SHIPPED_READER)  # this install's copy, wherever the code was moved
