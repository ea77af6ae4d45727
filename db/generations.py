"""Generations (a user's history) and their output images.

Every function that returns a :class:`~db.models.Generation` loads its ``outputs``, so
the row stays usable after its session has closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from db.base import MAX_SEED, utcnow
from db.errors import InvalidValue, NotFound
from db.functions import casefold
from db.models import Generation, GenerationOutput, JobStatus
from db.results import Page, StoredFile
from db.status import advance, parse_status
from db.users import get_or_create_user

MAX_PAGE_SIZE = 100


def _select() -> Select[tuple[Generation]]:
    return select(Generation).options(selectinload(Generation.outputs))


def record_generation(
    session: Session,
    user_id: int,
    *,
    prompt: str,
    workflow: Mapping[str, Any],
    parameters: Mapping[str, Any] | None = None,
    seed: int | None = None,
    model: str | None = None,
    negative_prompt: str | None = None,
    template: str | None = None,
    parent_id: int | None = None,
    status: JobStatus | str = JobStatus.QUEUED,
    guild_id: int | None = None,
    channel_id: int | None = None,
    message_id: int | None = None,
    queued_at: datetime | None = None,
) -> Generation:
    """Record a new generation of ``user_id`` (created if new): the full workflow as
    submitted, the request's parameters and the seed actually used.

    ``parent_id`` links img2img and variations to the generation they start from
    (which may be another user's: replying to any image is allowed); it must exist.
    """
    if not isinstance(workflow, Mapping):
        raise InvalidValue("workflow", workflow, "expected a JSON object")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidValue("seed", seed, f"must be between 0 and {MAX_SEED}")
    status = parse_status(status)
    get_or_create_user(session, user_id)
    if parent_id is not None and session.get(Generation, parent_id) is None:
        raise NotFound("generation", parent_id)
    now = utcnow()
    generation = Generation(
        user_id=user_id,
        prompt=prompt,
        negative_prompt=negative_prompt,
        workflow=dict(workflow),
        parameters=dict(parameters or {}),
        seed=seed,
        model=model,
        template=template,
        parent_id=parent_id,
        status=status,
        guild_id=guild_id,
        channel_id=channel_id,
        message_id=message_id,
        queued_at=queued_at or now,
        created_at=now,
        outputs=[],
    )
    session.add(generation)
    session.flush()
    return generation


def add_output(
    session: Session,
    generation_id: int,
    *,
    index: int,
    path: str,
    sha256: str,
    width: int,
    height: int,
    size_bytes: int,
) -> GenerationOutput:
    """Record one output image of a generation (already stored by the caller)."""
    generation = session.get(Generation, generation_id)
    if generation is None:
        raise NotFound("generation", generation_id)
    output = GenerationOutput(
        index=index,
        path=path,
        sha256=sha256,
        width=width,
        height=height,
        size_bytes=size_bytes,
    )
    # Through the relationship, so a generation already in the session sees it.
    generation.outputs.append(output)
    session.flush()
    return output


def _require(session: Session, generation_id: int) -> Generation:
    generation = session.scalars(_select().where(Generation.id == generation_id)).one_or_none()
    if generation is None:
        raise NotFound("generation", generation_id)
    return generation


def set_generation_status(
    session: Session,
    generation_id: int,
    status: JobStatus | str,
    *,
    error: str | None = None,
    at: datetime | None = None,
) -> Generation:
    """Move a generation to ``status`` (the rules: :mod:`db.status`), stamping
    ``started_at`` (running) or ``finished_at`` (done, failed, cancelled). A finished
    generation stays finished: :class:`InvalidTransition`. A job's generation moves
    with it through :func:`db.jobs.move_job`."""
    generation = _require(session, generation_id)
    status, at = advance("generation", generation_id, generation.status, status, at)
    generation.status = status
    if status is JobStatus.QUEUED:
        generation.queued_at = generation.queued_at or at
    elif status is JobStatus.RUNNING:
        generation.started_at = at
    elif status.finished and generation.finished_at is None:
        generation.finished_at = at
    if error is not None:
        generation.error = error
    session.flush()
    return generation


def set_generation_message(
    session: Session,
    generation_id: int,
    *,
    message_id: int,
    channel_id: int | None = None,
    guild_id: int | None = None,
) -> Generation:
    """Remember the Discord message (and its channel and guild) that shows a
    generation, so replies to it and its buttons find it again."""
    generation = _require(session, generation_id)
    generation.message_id = message_id
    if channel_id is not None:
        generation.channel_id = channel_id
    if guild_id is not None:
        generation.guild_id = guild_id
    session.flush()
    return generation


def get_generation(
    session: Session, generation_id: int, *, user_id: int, admin: bool = False
) -> Generation:
    """One generation with its outputs, if ``user_id`` owns it (or ``admin``).

    Raises :class:`NotFound` otherwise, whether or not it exists.
    """
    generation = session.scalars(_select().where(Generation.id == generation_id)).one_or_none()
    if generation is None or (not admin and generation.user_id != user_id):
        raise NotFound("generation", generation_id)
    return generation


def history(
    session: Session,
    user_id: int,
    *,
    offset: int = 0,
    limit: int = 10,
    prompt_contains: str | None = None,
    status: JobStatus | str | None = None,
) -> Page[Generation]:
    """A user's generations, newest first, one page at a time.

    ``prompt_contains`` keeps those whose prompt contains that text, ignoring case
    (Unicode-aware; ``%`` and ``_`` are literal). ``limit`` is capped at 100.
    """
    if offset < 0:
        raise InvalidValue("offset", offset, "must not be negative")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidValue("limit", limit, f"must be between 1 and {MAX_PAGE_SIZE}")
    conditions = [Generation.user_id == user_id]
    if prompt_contains:
        needle = prompt_contains.casefold()
        conditions.append(casefold(Generation.prompt).contains(needle, autoescape=True))
    if status is not None:
        conditions.append(Generation.status == parse_status(status))
    total = session.scalar(select(func.count()).select_from(Generation).where(*conditions)) or 0
    items = list(
        session.scalars(
            _select()
            .where(*conditions)
            .order_by(Generation.created_at.desc(), Generation.id.desc())
            .offset(offset)
            .limit(limit)
        )
    )
    return Page(items=items, total=total, offset=offset, limit=limit)


def find_generation_by_message(session: Session, message_id: int) -> Generation | None:
    """The generation shown by this Discord message, whoever made it (reply-to-image
    and the result buttons start from a message)."""
    return session.scalars(
        _select().where(Generation.message_id == message_id).order_by(Generation.id).limit(1)
    ).first()


def find_generation_by_output_hash(session: Session, sha256: str) -> Generation | None:
    """The generation that first produced an image with this sha256, whoever made it."""
    return session.scalars(
        _select()
        .where(Generation.outputs.any(GenerationOutput.sha256 == sha256))
        .order_by(Generation.id)
        .limit(1)
    ).first()


def count_output_references(session: Session, sha256: str) -> int:
    """How many output rows (of any user) use the image file with this hash."""
    return session.scalar(select(func.count()).where(GenerationOutput.sha256 == sha256)) or 0


def count_init_image_references(session: Session, name: str) -> int:
    """How many generations (of any user) used the uploaded init image ``name``."""
    return (
        session.scalar(
            select(func.count()).where(Generation.parameters["init_image"].as_string() == name)
        )
        or 0
    )


def unreferenced_images(session: Session, outputs: list[StoredFile]) -> list[StoredFile]:
    """Those of ``outputs`` whose hash no output row references any more."""
    seen: set[str] = set()
    orphans = []
    for f in outputs:
        if f.sha256 in seen:
            continue
        seen.add(f.sha256)
        if not count_output_references(session, f.sha256):
            orphans.append(f)
    return orphans


def delete_generation(
    session: Session, generation_id: int, *, user_id: int, admin: bool = False
) -> list[StoredFile]:
    """Delete a generation the user owns (or any, for ``admin``) with its outputs.

    Generations made from it keep existing with no parent. Returns the image files
    that nothing references any more, for the caller to delete.
    """
    generation = get_generation(session, generation_id, user_id=user_id, admin=admin)
    files = [StoredFile("image", o.sha256, o.path) for o in generation.outputs]
    session.delete(generation)
    session.flush()
    return unreferenced_images(session, files)
