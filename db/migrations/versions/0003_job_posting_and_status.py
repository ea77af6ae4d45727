"""Jobs remember what makes a crash harmless: when posting their result started (so a
restart looks for the message before sending it again) and where their private status
shows (an interaction token while it is valid, or a reply message), so a restart can
say where the job went.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("post_started_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("status_token", sa.Text(), nullable=True))
        batch.add_column(sa.Column("status_expires_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("status_channel_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("status_message_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("status_message_id")
        batch.drop_column("status_channel_id")
        batch.drop_column("status_expires_at")
        batch.drop_column("status_token")
        batch.drop_column("post_started_at")
