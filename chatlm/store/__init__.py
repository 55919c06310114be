"""Storage: SQLite through SQLAlchemy 2 (typed ORM) with Alembic migrations."""
