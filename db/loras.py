"""Each user's LoRA library: records of files already checked and stored by the caller.

Visibility: a user sees their own LoRAs and everyone's shared ones, and changes only
their own. Another user's private LoRA is reported as not found (its existence does
not leak); another user's shared LoRA is visible but :class:`Forbidden` to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.errors import FamilyMismatch, Forbidden, InvalidName, InvalidValue, NameTaken, NotFound
from db.models import Lora, LoraFamily
from db.results import StoredFile
from db.users import get_or_create_user

MAX_NAME_LENGTH = 64
MAX_TRIGGER_WORDS = 32
MAX_TRIGGER_WORD_LENGTH = 100
_NAME_RE = re.compile(r"\w[\w.\-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_UNSET: Any = object()


def check_lora_name(name: str) -> str:
    """``name`` if it may name a LoRA, else :class:`InvalidName` saying why.

    A name is 1-64 letters, digits, ``_``, ``-`` or ``.``, starting with a letter,
    digit or ``_``: no path separators, spaces or the ``:``/``<>`` of prompt syntax.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("LoRA", str(name), "a name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName("LoRA", name, f"longer than {MAX_NAME_LENGTH} characters")
    if "/" in name or "\\" in name:
        raise InvalidName("LoRA", name, "path separators are not allowed")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            "LoRA", name, "use letters, digits, '_', '-' and '.', not starting with '.' or '-'"
        )
    return name


def _check_family(value: Any, field: str = "family") -> LoraFamily:
    try:
        return LoraFamily(value)
    except ValueError:
        choices = ", ".join(f.value for f in LoraFamily)
        raise InvalidValue(field, value, f"must be one of {choices}") from None


def _check_trigger_words(words: Iterable[str]) -> list[str]:
    if isinstance(words, str):
        words = [words]
    cleaned = []
    for word in words:
        if not isinstance(word, str):
            raise InvalidValue("trigger_words", word, "expected text")
        if word.strip():
            cleaned.append(word.strip())
    if len(cleaned) > MAX_TRIGGER_WORDS:
        raise InvalidValue("trigger_words", cleaned, f"at most {MAX_TRIGGER_WORDS}")
    for word in cleaned:
        if len(word) > MAX_TRIGGER_WORD_LENGTH:
            raise InvalidValue("trigger_words", word, f"longer than {MAX_TRIGGER_WORD_LENGTH}")
    return list(dict.fromkeys(cleaned))


def _check_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidValue("default_weight", weight, "expected a number")
    if not -10.0 <= weight <= 10.0:
        raise InvalidValue("default_weight", weight, "must be between -10 and 10")
    return float(weight)


def _own(session: Session, user_id: int, name: str) -> Lora | None:
    return session.scalars(
        select(Lora).where(Lora.owner_id == user_id, Lora.name == name)
    ).one_or_none()


def _shared(session: Session, name: str) -> Lora | None:
    # Several owners may share the same name: the oldest wins, deterministically.
    return session.scalars(
        select(Lora).where(Lora.shared.is_(True), Lora.name == name).order_by(Lora.id).limit(1)
    ).first()


def _owned_or_raise(session: Session, user_id: int, name: str, action: str) -> Lora:
    lora = _own(session, user_id, name)
    if lora is not None:
        return lora
    if _shared(session, name) is not None:
        raise Forbidden(action, "LoRA", name)
    raise NotFound("LoRA", name)


def add_lora(
    session: Session,
    owner_id: int,
    *,
    name: str,
    sha256: str,
    path: str,
    size_bytes: int,
    family: LoraFamily | str,
    key_format: str,
    trigger_words: Iterable[str] = (),
    default_weight: float = 1.0,
    shared: bool = False,
    original_filename: str | None = None,
) -> Lora:
    """Record a LoRA file (already validated and stored by the caller) in the owner's
    library under ``name``.

    Raises :class:`InvalidName` for a bad name, :class:`NameTaken` when the owner
    already has a LoRA of that name, :class:`InvalidValue` for a bad hash, family,
    weight or trigger word.
    """
    check_lora_name(name)
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise InvalidValue("sha256", sha256, "expected 64 lowercase hex digits")
    if size_bytes < 0:
        raise InvalidValue("size_bytes", size_bytes, "must not be negative")
    lora = Lora(
        name=name,
        sha256=sha256,
        path=path,
        size_bytes=size_bytes,
        family=_check_family(family),
        key_format=key_format,
        trigger_words=_check_trigger_words(trigger_words),
        default_weight=_check_weight(default_weight),
        shared=bool(shared),
        original_filename=original_filename,
    )
    get_or_create_user(session, owner_id)
    if _own(session, owner_id, name) is not None:
        raise NameTaken("LoRA", name, owner_id)
    lora.owner_id = owner_id
    session.add(lora)
    session.flush()
    return lora


def list_loras(
    session: Session,
    user_id: int,
    *,
    include_shared: bool = True,
    family: LoraFamily | str | None = None,
) -> list[Lora]:
    """The LoRAs ``user_id`` may use: their own, then (unless ``include_shared`` is
    False) other users' shared ones; each group by name. ``family`` filters."""
    visible = Lora.owner_id == user_id
    if include_shared:
        visible = or_(visible, Lora.shared.is_(True))
    stmt = select(Lora).where(visible)
    if family is not None:
        stmt = stmt.where(Lora.family == _check_family(family))
    own_first = (Lora.owner_id != user_id).asc()
    return list(session.scalars(stmt.order_by(own_first, Lora.name, Lora.id)))


def list_all_loras(session: Session) -> list[Lora]:
    """Every user's LoRAs, shared or not, by owner then name (for operators)."""
    return list(session.scalars(select(Lora).order_by(Lora.owner_id, Lora.name, Lora.id)))


def get_lora(session: Session, user_id: int, name: str) -> Lora:
    """The LoRA ``name`` as ``user_id`` sees it: their own first, then a shared one.

    Raises :class:`NotFound` when neither exists (another user's private LoRA
    included).
    """
    lora = _own(session, user_id, name) or _shared(session, name)
    if lora is None:
        raise NotFound("LoRA", name)
    return lora


def resolve_lora(
    session: Session, user_id: int, name: str, *, family: LoraFamily | str | None = None
) -> Lora:
    """The LoRA a request's ``name`` means for ``user_id`` (see :func:`get_lora`).

    With ``family`` (the chosen model's), a LoRA for another family is refused with
    :class:`FamilyMismatch`.
    """
    lora = get_lora(session, user_id, name)
    if family is not None:
        wanted = _check_family(family, "model family")
        if lora.family is not wanted:
            raise FamilyMismatch(name, lora.family.value, wanted.value)
    return lora


def resolve_loras(
    session: Session,
    user_id: int,
    names: Sequence[str],
    *,
    family: LoraFamily | str | None = None,
) -> list[Lora]:
    """:func:`resolve_lora` for each name, in order."""
    return [resolve_lora(session, user_id, n, family=family) for n in names]


def find_lora_by_hash(session: Session, owner_id: int, sha256: str) -> Lora | None:
    """The owner's LoRA backed by this file, if they already have one."""
    return session.scalars(
        select(Lora).where(Lora.owner_id == owner_id, Lora.sha256 == sha256).limit(1)
    ).first()


def rename_lora(session: Session, user_id: int, name: str, new_name: str) -> Lora:
    """Rename one of the user's own LoRAs.

    Raises :class:`NotFound`, :class:`Forbidden` (someone else's shared LoRA),
    :class:`InvalidName` or :class:`NameTaken`.
    """
    check_lora_name(new_name)
    lora = _owned_or_raise(session, user_id, name, "rename")
    if new_name != name:
        if _own(session, user_id, new_name) is not None:
            raise NameTaken("LoRA", new_name, user_id)
        lora.name = new_name
        lora.updated_at = utcnow()
        session.flush()
    return lora


def update_lora(
    session: Session,
    user_id: int,
    name: str,
    *,
    trigger_words: Iterable[str] = _UNSET,
    default_weight: float = _UNSET,
) -> Lora:
    """Change the trigger words and/or default weight of one of the user's LoRAs."""
    lora = _owned_or_raise(session, user_id, name, "change")
    if trigger_words is not _UNSET:
        lora.trigger_words = _check_trigger_words(trigger_words)
    if default_weight is not _UNSET:
        lora.default_weight = _check_weight(default_weight)
    lora.updated_at = utcnow()
    session.flush()
    return lora


def set_lora_shared(session: Session, user_id: int, name: str, shared: bool) -> Lora:
    """Share one of the user's LoRAs with everyone, or make it private again."""
    lora = _owned_or_raise(session, user_id, name, "share")
    lora.shared = bool(shared)
    lora.updated_at = utcnow()
    session.flush()
    return lora


def count_lora_file_references(session: Session, sha256: str) -> int:
    """How many LoRA rows (of any user) use the file with this hash."""
    return session.scalar(select(func.count()).where(Lora.sha256 == sha256)) or 0


def remove_lora(session: Session, user_id: int, name: str) -> StoredFile | None:
    """Remove one of the user's LoRAs. Returns its file when no row references that
    file any more (the caller deletes it), else None."""
    lora = _owned_or_raise(session, user_id, name, "remove")
    orphan = StoredFile("lora", lora.sha256, lora.path)
    session.delete(lora)
    session.flush()
    if count_lora_file_references(session, orphan.sha256):
        return None
    return orphan
