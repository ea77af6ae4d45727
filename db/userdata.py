"""Data rights: export everything stored about one user, and delete all of it.

Files on disk are the caller's: the export lists the files the user's rows point at,
and the deletion returns the files no row references any more.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from db.base import Base, utcnow
from db.errors import NotFound
from db.generations import count_init_image_references, count_output_references
from db.loras import count_lora_file_references
from db.models import AuditEntry, Generation, GenerationOutput, Job, Lora, User, UserSettings
from db.results import StoredFile
from db.users import count_users, list_users

EXPORT_FORMAT = "easel.user-export"
EXPORT_VERSION = 1


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def row_to_dict(row: Base, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row's column values as JSON-serialisable data (timestamps in ISO 8601)."""
    return {
        attr.key: _json_value(getattr(row, attr.key))
        for attr in row.__mapper__.column_attrs
        if attr.key not in exclude
    }


def _user_files(session: Session, user_id: int) -> list[StoredFile]:
    files: dict[tuple[str, str], StoredFile] = {}
    for sha, path in session.execute(
        select(Lora.sha256, Lora.path).where(Lora.owner_id == user_id).order_by(Lora.id)
    ):
        files.setdefault(("lora", sha), StoredFile("lora", sha, path))
    for sha, path in session.execute(
        select(GenerationOutput.sha256, GenerationOutput.path)
        .join(Generation)
        .where(Generation.user_id == user_id)
        .order_by(GenerationOutput.id)
    ):
        files.setdefault(("image", sha), StoredFile("image", sha, path))
    for (parameters,) in session.execute(
        select(Generation.parameters).where(Generation.user_id == user_id).order_by(Generation.id)
    ):
        name = (parameters or {}).get("init_image")
        if isinstance(name, str) and name and "/" not in name and "\\" not in name:
            # Uploaded init images live in the input folder under their hash-based name.
            files.setdefault(("input", name), StoredFile("input", name, f"input/{name}"))
    return list(files.values())


def user_files(session: Session, user_id: int) -> list[StoredFile]:
    """Every file (LoRAs, result images, uploaded init images) the user's rows point at, each once."""
    return _user_files(session, user_id)


def export_user_data(session: Session, user_id: int) -> dict[str, Any]:
    """Everything stored about ``user_id`` as one JSON-serialisable document: the
    user, settings, LoRAs, generations with outputs, jobs, audit entries they made,
    and ``files``: the data-folder paths of the files those rows point at.

    Raises :class:`NotFound` for an unknown user.
    """
    user = session.scalars(
        select(User).where(User.id == user_id).options(selectinload(User.settings))
    ).one_or_none()
    if user is None:
        raise NotFound("user", user_id)
    loras = session.scalars(select(Lora).where(Lora.owner_id == user_id).order_by(Lora.id))
    generations = session.scalars(
        select(Generation)
        .where(Generation.user_id == user_id)
        .options(selectinload(Generation.outputs))
        .order_by(Generation.id)
    )
    jobs = session.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.id))
    audit = session.scalars(
        select(AuditEntry).where(AuditEntry.actor_id == user_id).order_by(AuditEntry.id)
    )
    files = _user_files(session, user_id)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": utcnow().isoformat(),
        "user": row_to_dict(user),
        "settings": row_to_dict(user.settings, exclude=("user_id",)) if user.settings else None,
        "loras": [row_to_dict(lora, exclude=("owner_id",)) for lora in loras],
        "generations": [
            {
                **row_to_dict(g, exclude=("user_id",)),
                "outputs": [row_to_dict(o, exclude=("id", "generation_id")) for o in g.outputs],
            }
            for g in generations
        ],
        "jobs": [row_to_dict(j, exclude=("user_id",)) for j in jobs],
        "audit": [row_to_dict(a, exclude=("actor_id",)) for a in audit],
        "files": [{"kind": f.kind, "sha256": f.sha256, "path": f.path} for f in files],
    }


def delete_user_data(session: Session, user_id: int) -> list[StoredFile]:
    """Delete every row of ``user_id``: settings, LoRAs, generations and outputs,
    jobs, the audit entries they made, and the user.

    Other users' generations made from theirs keep existing without a parent. Returns
    the files that no row references any more, for the caller to delete. Deleting an
    unknown user deletes nothing and returns an empty list.
    """
    session.flush()  # bulk statements below bypass the unit of work
    files = _user_files(session, user_id)
    own_generations = select(Generation.id).where(Generation.user_id == user_id)
    # Explicit, child-first deletes rather than relying on ON DELETE alone, so the
    # result does not depend on the backend enforcing foreign keys.
    session.execute(
        update(Generation)
        .where(Generation.parent_id.in_(own_generations))
        .values(parent_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Job)
        .where(Job.generation_id.in_(own_generations), Job.user_id != user_id)
        .values(generation_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(GenerationOutput)
        .where(GenerationOutput.generation_id.in_(own_generations))
        .execution_options(synchronize_session=False)
    )
    for model, column in (
        (Job, Job.user_id),
        (Generation, Generation.user_id),
        (Lora, Lora.owner_id),
        (UserSettings, UserSettings.user_id),
        (AuditEntry, AuditEntry.actor_id),
        (User, User.id),
    ):
        session.execute(
            delete(model).where(column == user_id).execution_options(synchronize_session=False)
        )
    # Bulk statements bypass the identity map: drop whatever it still holds.
    session.expire_all()
    orphans = []
    for f in files:
        counter = {
            "lora": count_lora_file_references,
            "input": count_init_image_references,
        }.get(f.kind, count_output_references)
        if not counter(session, f.sha256):
            orphans.append(f)
    return orphans


def referenced_file_hashes(session: Session) -> tuple[set[str], set[str]]:
    """The content hashes of every result image and every LoRA file some row references
    (of any user): what the data folder must keep."""
    images = set(session.scalars(select(GenerationOutput.sha256).distinct()))
    loras = set(session.scalars(select(Lora.sha256).distinct()))
    return images, loras


def user_row_counts(session: Session, user_id: int) -> dict[str, int]:
    """How many rows in each table belong to (or were made by) ``user_id``; all
    zeros after :func:`delete_user_data`."""
    own_generations = select(Generation.id).where(Generation.user_id == user_id)
    checks = {
        "users": select(func.count()).where(User.id == user_id),
        "user_settings": select(func.count()).where(UserSettings.user_id == user_id),
        "loras": select(func.count()).where(Lora.owner_id == user_id),
        "generations": select(func.count()).where(Generation.user_id == user_id),
        "generation_outputs": select(func.count()).where(
            GenerationOutput.generation_id.in_(own_generations)
        ),
        "jobs": select(func.count()).where(
            or_(Job.user_id == user_id, Job.generation_id.in_(own_generations))
        ),
        "audit_log": select(func.count()).where(AuditEntry.actor_id == user_id),
    }
    return {table: session.scalar(stmt) or 0 for table, stmt in checks.items()}


def user_summaries(
    session: Session, *, offset: int = 0, limit: int = 100
) -> tuple[int, list[dict[str, Any]]]:
    """How many users are known, and one page of them (by Discord id) with how much
    each has stored: ``id``, ``display_name``, ``loras``, ``generations``, ``jobs``,
    ``last_seen_at`` (ISO 8601) and ``seed_policy``."""
    items = []
    for user in list_users(session, offset=offset, limit=limit):
        counts = user_row_counts(session, user.id)
        items.append(
            {
                "id": user.id,
                "display_name": user.display_name,
                "loras": counts["loras"],
                "generations": counts["generations"],
                "jobs": counts["jobs"],
                "last_seen_at": user.last_seen_at.isoformat() if user.last_seen_at else None,
                "seed_policy": user.settings.seed_policy.value if user.settings else None,
            }
        )
    return count_users(session), items
