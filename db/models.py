"""The tables: users and their settings, LoRAs, generations and their outputs, jobs,
installed plugins, the audit log and the queue's stored state.

Discord ids are the users' primary keys. Files (images, LoRAs) live on disk under the
data folder, named by content hash; rows hold the relative path and the sha256.
"""

# Nullable mapped columns are spelt Optional[...], as in SQLAlchemy's own docs.
# ruff: noqa: UP045

from __future__ import annotations

import enum
from typing import Optional

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import (
    Base,
    created_ts,
    intpk,
    json_dict,
    json_list,
    name_str,
    rel_path,
    seed_int,
    sha256_hex,
    short_str,
    snowflake,
    timestamp,
    updated_ts,
)


class SeedPolicy(enum.StrEnum):
    """How a job's seed is chosen when the request names none."""

    RANDOM = "random"
    FIXED = "fixed"
    INCREMENT = "increment"


class LoraFamily(enum.StrEnum):
    """The base model family a LoRA was trained for."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


class JobStatus(enum.StrEnum):
    """Life cycle of a job, and of the generation it produces."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the terminal states."""
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # VARCHAR plus a CHECK constraint on every backend; values (not names) are stored.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class User(Base):
    """A Discord user who has used the bot (the primary key is their Discord id)."""

    __tablename__ = "users"
    __repr_attrs__ = ("display_name",)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    display_name: Mapped[Optional[str]] = mapped_column(String(100))
    created_at: Mapped[created_ts]
    last_seen_at: Mapped[updated_ts]

    settings: Mapped[UserSettings] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )
    loras: Mapped[list[Lora]] = relationship(
        back_populates="owner", cascade="all, delete-orphan", passive_deletes=True
    )
    generations: Mapped[list[Generation]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
    jobs: Mapped[list[Job]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class UserSettings(Base):
    """One user's defaults. ``None`` means "use the bot's configured default"."""

    __tablename__ = "user_settings"
    __repr_attrs__ = ("seed_policy", "last_seed")

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    default_model: Mapped[Optional[str]] = mapped_column(String(200))
    width: Mapped[Optional[int]]
    height: Mapped[Optional[int]]
    steps: Mapped[Optional[int]]
    cfg: Mapped[Optional[float]]
    sampler: Mapped[Optional[str]] = mapped_column(String(64))
    scheduler: Mapped[Optional[str]] = mapped_column(String(64))
    negative_prompt: Mapped[Optional[str]] = mapped_column(Text)
    seed_policy: Mapped[SeedPolicy] = mapped_column(
        _enum(SeedPolicy, "seed_policy"),
        default=SeedPolicy.RANDOM,
        server_default=SeedPolicy.RANDOM.value,
    )
    fixed_seed: Mapped[Optional[seed_int]]
    last_seed: Mapped[Optional[seed_int]]
    updated_at: Mapped[updated_ts]

    user: Mapped[User] = relationship(back_populates="settings")


class Lora(Base):
    """A LoRA in one user's library. The same file (by hash) may back several rows."""

    __tablename__ = "loras"
    __table_args__ = (
        UniqueConstraint("owner_id", "name"),
        Index("ix_loras_shared_name", "shared", "name"),
        {"sqlite_autoincrement": True},
    )
    __repr_attrs__ = ("owner_id", "name", "family", "shared")

    id: Mapped[intpk]
    owner_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[sha256_hex] = mapped_column(index=True)
    path: Mapped[rel_path]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    family: Mapped[LoraFamily] = mapped_column(_enum(LoraFamily, "lora_family"))
    key_format: Mapped[short_str]
    trigger_words: Mapped[json_list] = mapped_column(default=list)
    default_weight: Mapped[float] = mapped_column(default=1.0, server_default=text("1.0"))
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    original_filename: Mapped[Optional[str]] = mapped_column(String(255))
    created_at: Mapped[created_ts]
    updated_at: Mapped[updated_ts]

    owner: Mapped[User] = relationship(back_populates="loras")


class Generation(Base):
    """One request's result: the full workflow, the seed used, timings and where it shows."""

    __tablename__ = "generations"
    # AUTOINCREMENT: ids end up in Discord buttons, so a deleted id must never come back.
    __table_args__ = (
        Index("ix_generations_user_id_created_at", "user_id", "created_at"),
        {"sqlite_autoincrement": True},
    )
    __repr_attrs__ = ("user_id", "status", "seed")

    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    parent_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("generations.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "generation_status"),
        default=JobStatus.QUEUED,
        server_default=JobStatus.QUEUED.value,
    )
    template: Mapped[Optional[str]] = mapped_column(String(64))
    model: Mapped[Optional[str]] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text, index=True)
    negative_prompt: Mapped[Optional[str]] = mapped_column(Text)
    seed: Mapped[Optional[seed_int]]
    workflow: Mapped[json_dict]
    parameters: Mapped[json_dict] = mapped_column(default=dict)
    error: Mapped[Optional[str]] = mapped_column(Text)
    guild_id: Mapped[Optional[int]] = mapped_column(BigInteger)
    channel_id: Mapped[Optional[int]] = mapped_column(BigInteger)
    message_id: Mapped[Optional[int]] = mapped_column(BigInteger, index=True)
    queued_at: Mapped[Optional[timestamp]]
    started_at: Mapped[Optional[timestamp]]
    finished_at: Mapped[Optional[timestamp]]
    created_at: Mapped[created_ts]

    user: Mapped[User] = relationship(back_populates="generations")
    parent: Mapped[Optional[Generation]] = relationship(remote_side="Generation.id")
    outputs: Mapped[list[GenerationOutput]] = relationship(
        back_populates="generation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="GenerationOutput.index",
    )

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish, when both are known."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class GenerationOutput(Base):
    """One image a generation produced, stored under the data folder by content hash."""

    __tablename__ = "generation_outputs"
    __table_args__ = (UniqueConstraint("generation_id", "index"),)
    __repr_attrs__ = ("generation_id", "index", "sha256")

    id: Mapped[intpk]
    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    path: Mapped[rel_path]
    sha256: Mapped[sha256_hex] = mapped_column(index=True)
    width: Mapped[int]
    height: Mapped[int]
    size_bytes: Mapped[int] = mapped_column(BigInteger)

    generation: Mapped[Generation] = relationship(back_populates="outputs")


class Job(Base):
    """The durable record of one unit of work for the scheduler."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_priority_created_at", "status", "priority", "created_at"),
        {"sqlite_autoincrement": True},
    )
    __repr_attrs__ = ("user_id", "status", "generation_id")

    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    generation_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("generations.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"),
        default=JobStatus.QUEUED,
        server_default=JobStatus.QUEUED.value,
    )
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    request: Mapped[json_dict]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    worker: Mapped[Optional[str]] = mapped_column(String(128))
    error: Mapped[Optional[str]] = mapped_column(Text)
    posted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    posted_message_id: Mapped[Optional[int]] = mapped_column(BigInteger)
    #: When posting the result started: set (and committed) before the send, so a
    #: restart knows the message may exist and looks for it before sending again.
    post_started_at: Mapped[Optional[timestamp]]
    #: The interaction token of the job's private status (valid 15 minutes, until
    #: ``status_expires_at``), or the channel and id of a reply message that shows it.
    status_token: Mapped[Optional[str]] = mapped_column(Text)
    status_expires_at: Mapped[Optional[timestamp]]
    status_channel_id: Mapped[Optional[int]] = mapped_column(BigInteger)
    status_message_id: Mapped[Optional[int]] = mapped_column(BigInteger)
    created_at: Mapped[created_ts]
    queued_at: Mapped[Optional[timestamp]]
    started_at: Mapped[Optional[timestamp]]
    finished_at: Mapped[Optional[timestamp]]
    updated_at: Mapped[updated_ts]

    user: Mapped[User] = relationship(back_populates="jobs")
    generation: Mapped[Optional[Generation]] = relationship()


class InstalledPlugin(Base):
    """A third-party plugin distribution installed by an owner."""

    __tablename__ = "installed_plugins"
    __repr_attrs__ = ("distribution", "version", "enabled")

    id: Mapped[intpk]
    #: The PEP 503-normalised distribution name.
    distribution: Mapped[name_str] = mapped_column(unique=True)
    version: Mapped[Optional[str]] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: What was passed to pip (a requirement, a path or a URL).
    source: Mapped[str] = mapped_column(String(1000))
    wheel_sha256: Mapped[Optional[sha256_hex]]
    error: Mapped[Optional[str]] = mapped_column(Text)
    installed_at: Mapped[created_ts]
    updated_at: Mapped[updated_ts]


class AuditEntry(Base):
    """One admin action. ``actor_id`` is a Discord id, deliberately not a foreign key:
    owners need not be users of the bot."""

    __tablename__ = "audit_log"
    __repr_attrs__ = ("actor_id", "action", "target")

    id: Mapped[intpk]
    actor_id: Mapped[snowflake] = mapped_column(index=True)
    action: Mapped[short_str] = mapped_column(index=True)
    target: Mapped[Optional[str]] = mapped_column(String(255))
    details: Mapped[json_dict] = mapped_column(default=dict)
    created_at: Mapped[created_ts] = mapped_column(index=True)


class QueueState(Base):
    """The job queue's state that outlives a restart: one row (``id`` 1), absent until
    an owner first pauses or resumes. ``changed_by`` is the Discord id of who did."""

    __tablename__ = "queue_state"
    __repr_attrs__ = ("paused", "changed_by")

    id: Mapped[intpk]
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    changed_by: Mapped[Optional[int]] = mapped_column(BigInteger)
    updated_at: Mapped[updated_ts]


#: Every mapped class, in an order where parents come before children.
ALL_MODELS: tuple[type[Base], ...] = (
    User,
    UserSettings,
    Lora,
    Generation,
    GenerationOutput,
    Job,
    InstalledPlugin,
    AuditEntry,
    QueueState,
)

__all__ = [
    "ALL_MODELS",
    "AuditEntry",
    "Generation",
    "GenerationOutput",
    "InstalledPlugin",
    "Job",
    "JobStatus",
    "Lora",
    "LoraFamily",
    "QueueState",
    "SeedPolicy",
    "User",
    "UserSettings",
]
