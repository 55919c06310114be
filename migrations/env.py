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
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
