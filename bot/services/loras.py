"""Each user's LoRA library: uploads checked and stored once by content hash, names per
user, sharing, and turning a request's LoRA names into the files a workflow loads.

Files live at ``settings.lora_library_dir / "<sha256>.safetensors"``; the runner's model
manager finds a workflow's ``lora_name`` ``"<sha256>.safetensors"`` there. One file backs
every row with its hash and is deleted with the last of them.

Every operation blocks (database and file work): the bot calls them with
``await asyncio.to_thread(library.method, ...)`` so nothing blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bot.services.errors import ServiceError
from bot.services.lora_files import (
    LoraFileInfo,
    StagedLora,
    WrongFamily,
    check_lora_filename,
    stage_lora_upload,
)
from bot.services.storage import (
    LORA_STAGING_FOLDER,
    delete_unreferenced,
    relative_to_data,
    stored_path,
)
from db import loras as db_loras
from db.engine import Database
from db.errors import FamilyMismatch, NameTaken
from db.models import Lora
from db.results import StoredFile
from runner.models.families import lora_family
from runner.settings import EngineSettings
from runner.templates import GenerationRequest, LoraRef

STAGING_FOLDER = LORA_STAGING_FOLDER
"""Uploads wait here (inside the library folder, so that storing them is a rename); files
a killed process left are removed at the next start
(:func:`bot.services.storage.tidy_data_folder`)."""

_UNSET: Any = object()


class AlreadyInLibrary(ServiceError):
    """The user already has this very file in their library, under another name."""

    def __init__(self, name: str, existing: str):
        self.name = name
        self.existing = existing
        super().__init__(f"the same file is already in this library as {existing!r}")


@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA name from a request, resolved for one user and one model family."""

    name: str
    """The name the user asked for."""
    lora_name: str
    """What the workflow's ``LoraLoader`` gets: ``"<sha256>.safetensors"``."""
    sha256: str
    family: str
    owner_id: int
    shared: bool
    strength_model: float
    strength_clip: float | None
    trigger_words: tuple[str, ...] = field(default=())

    def as_ref(self) -> LoraRef:
        """The request's :class:`~runner.templates.LoraRef`, naming the library file."""
        return LoraRef(
            name=self.lora_name,
            strength_model=self.strength_model,
            strength_clip=self.strength_clip,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready parameters, as a generation records them."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "strength_model": self.strength_model,
            "strength_clip": self.strength_clip,
        }


# ------------------------------------------------------------------ model families


def model_family(settings: EngineSettings, model: str | None = None, manager: Any = None) -> str:
    """The LoRA family (``sd1``, ``sd2``, ``sdxl``) of checkpoint ``model`` (default: the
    configured default model), without loading weights where the runner can tell
    (:meth:`runner.models.manager.ModelManager.family`).

    ``manager`` is the environment's model manager (one is made from ``settings`` when
    none is given). Raises :class:`runner.errors.ModelError` for an unknown name.
    """
    if manager is None:
        from runner.models.manager import ModelManager  # imports torch

        manager = ModelManager(settings)
    return lora_family(manager.family(model or settings.default_model))


# ------------------------------------------------------------- request resolution


def _ref_parts(
    ref: LoraRef | str | tuple[str, float | None],
) -> tuple[str, float | None, float | None]:
    if isinstance(ref, str):
        return ref, None, None
    if isinstance(ref, tuple):
        return ref[0], ref[1], None
    # A strength the request did not set explicitly falls back to the LoRA's default weight.
    weight = ref.strength_model if "strength_model" in ref.model_fields_set else None
    return ref.name, weight, ref.strength_clip


def resolve_loras_in_session(
    session: Session,
    user_id: int,
    refs: Sequence[LoraRef | str | tuple[str, float | None]],
    *,
    family: str | None,
) -> list[ResolvedLora]:
    """Resolve a request's LoRA names for ``user_id`` inside the caller's unit of work:
    their own LoRA first, then a shared one. A strength not given is the LoRA's default
    weight. With ``family`` (the chosen model's), a LoRA of another family is refused:
    :class:`db.errors.FamilyMismatch`; a name the user cannot see: :class:`db.errors.NotFound`.
    """
    resolved = []
    for ref in refs:
        name, weight, clip = _ref_parts(ref)
        lora = db_loras.resolve_lora(session, user_id, name, family=family)
        resolved.append(
            ResolvedLora(
                name=name,
                lora_name=f"{lora.sha256}.safetensors",
                sha256=lora.sha256,
                family=lora.family.value,
                owner_id=lora.owner_id,
                shared=lora.shared,
                strength_model=lora.default_weight if weight is None else float(weight),
                strength_clip=clip,
                trigger_words=tuple(lora.trigger_words or ()),
            )
        )
    return resolved


def apply_loras(
    request: GenerationRequest, resolved: Sequence[ResolvedLora], *, add_trigger_words: bool = True
) -> GenerationRequest:
    """``request`` with its LoRAs replaced by the resolved library files and, with
    ``add_trigger_words``, the LoRAs' trigger words the prompt lacks appended to it."""
    update: dict[str, Any] = {"loras": [r.as_ref() for r in resolved]}
    if add_trigger_words:
        prompt = request.prompt
        folded = prompt.casefold()
        missing = [w for r in resolved for w in r.trigger_words if w.casefold() not in folded]
        missing = list(dict.fromkeys(missing))
        if missing:
            update["prompt"] = (
                ", ".join([prompt, *missing]) if prompt.strip() else ", ".join(missing)
            )
    return request.model_copy(update=update)


# --------------------------------------------------------------------- the library


class LoraLibrary:
    """The LoRA libraries of all users, on one database and one data folder.

    ``family_of(model_name) -> family`` decides a checkpoint's family; by default
    :func:`model_family` with the settings (give one bound to the environment's model
    manager in the bot, so loaded checkpoints answer at once).
    """

    def __init__(
        self,
        db: Database,
        settings: EngineSettings,
        *,
        family_of: Callable[[str | None], str] | None = None,
    ):
        self.db = db
        self.settings = settings
        self.family_of = family_of or (lambda model: model_family(settings, model))

    # -- paths -------------------------------------------------------------------

    @property
    def library_dir(self) -> Path:
        """The folder holding the files, ``<sha256>.safetensors``."""
        return self.settings.lora_library_dir

    @property
    def max_bytes(self) -> int:
        """The largest upload accepted (``max_upload_mb``)."""
        return int(self.settings.max_upload_mb * 1024 * 1024)

    def file_path(self, lora: Lora) -> Path:
        """The file behind a library row."""
        return stored_path(self.settings.data_dir, lora.path)

    # -- adding --------------------------------------------------------------------

    def stage(self, data: bytes, filename: str, *, model: str | None = None) -> StagedLora:
        """Check an upload and keep it in a temporary file (see
        :func:`bot.services.lora_files.stage_lora_upload`); with ``model``, a LoRA for
        another family than that checkpoint's is refused."""
        check_lora_filename(filename)
        expected = self.family_of(model) if model else None
        return stage_lora_upload(
            data,
            filename,
            self.library_dir / STAGING_FOLDER,
            max_bytes=self.max_bytes,
            expected_family=expected,
            model_name=model,
        )

    @staticmethod
    def _precheck(session: Session, owner_id: int, name: str) -> None:
        # Answer a bad or taken name before the upload is read; add_lora checks again.
        db_loras.check_lora_name(name)
        if any(
            lora.name == name
            for lora in db_loras.list_loras(session, owner_id, include_shared=False)
        ):
            raise NameTaken("LoRA", name, owner_id)

    def _record(
        self,
        session: Session,
        owner_id: int,
        staged: StagedLora,
        *,
        name: str,
        trigger_words: Iterable[str],
        default_weight: float,
        shared: bool,
    ) -> Lora:
        info: LoraFileInfo = staged.info
        # The first statement takes the write lock before the file is touched.
        existing = db_loras.find_lora_by_hash(session, owner_id, info.sha256)
        if existing is not None:
            raise AlreadyInLibrary(name, existing.name)
        references = db_loras.count_lora_file_references(session, info.sha256)
        target = self.library_dir / f"{info.sha256}.safetensors"
        created = staged.commit(target)
        try:
            return db_loras.add_lora(
                session,
                owner_id,
                name=name,
                sha256=info.sha256,
                path=relative_to_data(self.settings.data_dir, target),
                size_bytes=info.size_bytes,
                family=info.family,
                key_format=info.key_format,
                trigger_words=trigger_words,
                default_weight=default_weight,
                shared=shared,
                original_filename=staged.filename,
            )
        except BaseException:
            if created and not references:
                target.unlink(missing_ok=True)
            raise

    def _cleanup(self, sha256: str) -> None:
        rel = relative_to_data(self.settings.data_dir, self.library_dir / f"{sha256}.safetensors")
        self.db.run_sync(
            delete_unreferenced, self.settings.data_dir, [StoredFile("lora", sha256, rel)]
        )

    def add(
        self,
        owner_id: int,
        data: bytes,
        filename: str,
        *,
        name: str,
        trigger_words: Iterable[str] = (),
        default_weight: float = 1.0,
        shared: bool = False,
        model: str | None = None,
    ) -> Lora:
        """Check an uploaded LoRA (``data`` and the file name it came with), store its file
        once by content hash and add it to ``owner_id``'s library as ``name``.

        ``model``: the checkpoint the user means it for; a LoRA of another family is
        refused, and a LoRA whose shapes do not tell its family gets that one. Raises a
        :class:`bot.services.lora_files.LoraFileError`, :class:`db.errors.InvalidName`,
        :class:`db.errors.NameTaken`, :class:`db.errors.InvalidValue` or
        :class:`AlreadyInLibrary`; a refused upload stores nothing.
        """
        self.db.read_sync(self._precheck, owner_id, name)
        with self.stage(data, filename, model=model) as staged:
            try:
                return self.db.run_sync(
                    self._record,
                    owner_id,
                    staged,
                    name=name,
                    trigger_words=trigger_words,
                    default_weight=default_weight,
                    shared=shared,
                )
            except BaseException:
                if staged.committed:  # the transaction may have failed after the move
                    self._cleanup(staged.info.sha256)
                raise

    def add_file(self, owner_id: int, path: Path, *, name: str, **kwargs: Any) -> Lora:
        """:meth:`add` for a file on disk (the command line); the size limit is checked
        before the file is read."""
        from bot.services.lora_files import FileTooLarge

        path = Path(path)
        check_lora_filename(path.name)
        size = path.stat().st_size
        if size > self.max_bytes:
            raise FileTooLarge(path.name, size, self.max_bytes)
        return self.add(owner_id, path.read_bytes(), path.name, name=name, **kwargs)

    # -- reading -------------------------------------------------------------------

    def list_visible(
        self, user_id: int, *, include_shared: bool = True, family: str | None = None
    ) -> list[Lora]:
        """The LoRAs ``user_id`` may use: their own, then others' shared ones, by name."""
        return self.db.read_sync(
            db_loras.list_loras, user_id, include_shared=include_shared, family=family
        )

    def list_all(self) -> list[Lora]:
        """Every user's LoRAs, shared or not, by owner then name (``easel lora list``)."""
        return self.db.read_sync(db_loras.list_all_loras)

    def get(self, user_id: int, name: str) -> Lora:
        """The LoRA ``name`` as ``user_id`` sees it (own first, then shared);
        :class:`db.errors.NotFound` otherwise."""
        return self.db.read_sync(db_loras.get_lora, user_id, name)

    # -- changing ------------------------------------------------------------------

    def rename(self, user_id: int, name: str, new_name: str) -> Lora:
        """Rename one of the user's own LoRAs."""
        return self.db.run_sync(db_loras.rename_lora, user_id, name, new_name)

    def update(
        self,
        user_id: int,
        name: str,
        *,
        trigger_words: Iterable[str] = _UNSET,
        default_weight: float = _UNSET,
    ) -> Lora:
        """Change the trigger words and/or the default weight of one of the user's LoRAs."""
        return self.db.run_sync(
            db_loras.update_lora, user_id, name, **_given(trigger_words, default_weight)
        )

    def share(self, user_id: int, name: str, shared: bool = True) -> Lora:
        """Share one of the user's LoRAs with everyone (or, ``shared=False``, stop)."""
        return self.db.run_sync(db_loras.set_lora_shared, user_id, name, shared)

    def remove(self, user_id: int, name: str) -> bool:
        """Remove one of the user's LoRAs; its file goes when no row references it any
        more. Returns whether the file was deleted."""
        orphan = self.db.run_sync(db_loras.remove_lora, user_id, name)
        if orphan is None:
            return False
        return bool(self.db.run_sync(delete_unreferenced, self.settings.data_dir, [orphan]))

    # -- using ---------------------------------------------------------------------

    def resolve(
        self,
        user_id: int,
        refs: Sequence[LoraRef | str | tuple[str, float | None]],
        *,
        model: str | None = None,
    ) -> list[ResolvedLora]:
        """Resolve a request's LoRA names for ``user_id`` and checkpoint ``model`` (default:
        the configured one); see :func:`resolve_loras_in_session`."""
        if not refs:
            return []
        family = self.family_of(model)
        return self.db.read_sync(resolve_loras_in_session, user_id, refs, family=family)


def _given(trigger_words: Any, default_weight: Any) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if trigger_words is not _UNSET:
        changes["trigger_words"] = list(trigger_words)
    if default_weight is not _UNSET:
        changes["default_weight"] = default_weight
    return changes


__all__ = [
    "STAGING_FOLDER",
    "AlreadyInLibrary",
    "FamilyMismatch",
    "LoraLibrary",
    "ResolvedLora",
    "WrongFamily",
    "apply_loras",
    "model_family",
    "resolve_loras_in_session",
]
