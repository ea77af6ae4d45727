"""The queue's pause state is stored (table ``queue_state``) instead of being derived
from the audit log; the state the audit log implies is carried over, so a queue that
was paused stays paused.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAUSE, RESUME = "queue.pause", "queue.resume"


def upgrade() -> None:
    queue_state = op.create_table(
        "queue_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("changed_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_state")),
    )
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("actor_id", sa.BigInteger()),
        sa.column("action", sa.String()),
        sa.column("created_at", sa.DateTime()),
    )
    # The newest pause or resume decides, as the audit log was read before this revision.
    # One INSERT ... SELECT, so that offline (--sql) scripts carry the state over too.
    newest = (
        sa.select(
            sa.literal(1).label("id"),
            (audit.c.action == PAUSE).label("paused"),
            audit.c.actor_id,
            audit.c.created_at,
        )
        .where(audit.c.action.in_([PAUSE, RESUME]))
        .order_by(audit.c.created_at.desc(), audit.c.id.desc())
        .limit(1)
    )
    op.execute(
        sa.insert(queue_state).from_select(["id", "paused", "changed_by", "updated_at"], newest)
    )


def downgrade() -> None:
    # The audit log still holds every pause and resume: nothing is lost.
    op.drop_table("queue_state")
