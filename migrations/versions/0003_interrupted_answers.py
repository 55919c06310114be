"""answers checkpointed while they stream: status 'interrupted' for one a crash cut off

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('complete', 'stopped', 'error', 'pending')"
NEW = "status IN ('complete', 'stopped', 'error', 'pending', 'interrupted')"


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint(op.f("ck_messages_status"), type_="check")
        batch.create_check_constraint("status", NEW)


def downgrade() -> None:
    op.execute("UPDATE messages SET status = 'stopped' WHERE status = 'interrupted'")
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint(op.f("ck_messages_status"), type_="check")
        batch.create_check_constraint("status", OLD)
