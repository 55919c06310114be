"""documents are unique per user and content hash, not per content hash: a text one user loaded
must not answer (or refuse) another user who loads the same text

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint("uq_documents_sha256", type_="unique")
        batch.create_unique_constraint("uq_documents_user_sha256", ["user_id", "sha256"])


def downgrade() -> None:
    """Refused while two users hold the same text: one content hash per row cannot keep both."""
    shared = op.get_bind().execute(sa.text(
        "SELECT sha256 FROM documents GROUP BY sha256 HAVING count(*) > 1 LIMIT 1")).first()
    if shared is not None:
        raise RuntimeError("Cannot downgrade past 0007: several users loaded the same text "
                           f"(sha256 {shared[0]}); remove the copies first.")
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint("uq_documents_user_sha256", type_="unique")
        batch.create_unique_constraint("uq_documents_sha256", ["sha256"])
