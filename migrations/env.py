"""Alembic environment: URL from the caller or from chatlm's settings; batch mode for SQLite."""

from __future__ import annotations

from alembic import context

from chatlm.config import Settings
from chatlm.store.db import make_engine
from chatlm.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.from_env().db_url
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, render_as_batch=True,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """On SQLite, foreign keys are off while migrating: batch mode rebuilds a table by copying it
    and dropping the original, and with foreign keys on that DROP deletes every row that refers to
    the table through ON DELETE CASCADE (rebuilding ``messages`` deleted all ratings). The pragma only
    takes effect outside a transaction; the references are checked before the migration commits."""
    engine = make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"The migration left rows with broken references: {broken[:5]}")
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
