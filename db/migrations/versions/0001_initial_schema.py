"""Initial schema: users and settings, LoRAs, generations and outputs, jobs, installed
plugins, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Column types are spelt out here rather than imported from db.base, so this script
keeps describing the schema as it was even when the models move on. (UTCDateTime and
Seed are stored as plain DATETIME and BIGINT.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "done", "failed", "cancelled")


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )

    op.create_table(
        "user_settings",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("default_model", sa.String(length=200), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("cfg", sa.Double(), nullable=True),
        sa.Column("sampler", sa.String(length=64), nullable=True),
        sa.Column("scheduler", sa.String(length=64), nullable=True),
        sa.Column("negative_prompt", sa.Text(), nullable=True),
        sa.Column(
            "seed_policy",
            _enum("seed_policy", "random", "fixed", "increment"),
            server_default="random",
            nullable=False,
        ),
        sa.Column("fixed_seed", sa.BigInteger(), nullable=True),
        sa.Column("last_seed", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_settings_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_settings")),
    )

    op.create_table(
        "loras",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("family", _enum("lora_family", "sd1", "sd2", "sdxl"), nullable=False),
        sa.Column("key_format", sa.String(length=64), nullable=False),
        sa.Column("trigger_words", sa.JSON(), nullable=False),
        sa.Column("default_weight", sa.Double(), server_default=sa.text("1.0"), nullable=False),
        sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("original_filename", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_loras_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loras")),
        sa.UniqueConstraint("owner_id", "name", name=op.f("uq_loras_owner_id_name")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_loras_owner_id"), "loras", ["owner_id"])
    op.create_index(op.f("ix_loras_sha256"), "loras", ["sha256"])
    op.create_index("ix_loras_shared_name", "loras", ["shared", "name"])

    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column(
            "status", _enum("generation_status", *STATUSES), server_default="queued", nullable=False
        ),
        sa.Column("template", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("workflow", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("queued_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["generations.id"],
            name=op.f("fk_generations_parent_id_generations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_generations_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_generations_message_id"), "generations", ["message_id"])
    op.create_index(op.f("ix_generations_parent_id"), "generations", ["parent_id"])
    op.create_index(op.f("ix_generations_prompt"), "generations", ["prompt"])
    op.create_index("ix_generations_user_id_created_at", "generations", ["user_id", "created_at"])

    op.create_table(
        "generation_outputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_generation_outputs_generation_id_generations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_outputs")),
        sa.UniqueConstraint(
            "generation_id", "index", name=op.f("uq_generation_outputs_generation_id_index")
        ),
    )
    op.create_index(
        op.f("ix_generation_outputs_generation_id"), "generation_outputs", ["generation_id"]
    )
    op.create_index(op.f("ix_generation_outputs_sha256"), "generation_outputs", ["sha256"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column(
            "status", _enum("job_status", *STATUSES), server_default="queued", nullable=False
        ),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("posted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("posted_message_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("queued_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_jobs_generation_id_generations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_jobs_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_jobs_generation_id"), "jobs", ["generation_id"])
    op.create_index(op.f("ix_jobs_user_id"), "jobs", ["user_id"])
    op.create_index(
        "ix_jobs_status_priority_created_at", "jobs", ["status", "priority", "created_at"]
    )

    op.create_table(
        "installed_plugins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("distribution", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("wheel_sha256", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("installed_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installed_plugins")),
        sa.UniqueConstraint("distribution", name=op.f("uq_installed_plugins_distribution")),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"])
    op.create_index(op.f("ix_audit_log_actor_id"), "audit_log", ["actor_id"])
    op.create_index(op.f("ix_audit_log_created_at"), "audit_log", ["created_at"])


def downgrade() -> None:
    # Children before parents; a table's indexes go with it.
    op.drop_table("audit_log")
    op.drop_table("installed_plugins")
    op.drop_table("jobs")
    op.drop_table("generation_outputs")
    op.drop_table("generations")
    op.drop_table("loras")
    op.drop_table("user_settings")
    op.drop_table("users")
