"""Listing the models folders: which checkpoints and LoRAs they hold, and which are left out.

:class:`ModelListing` (the base of :class:`~runner.models.manager.ModelManager`) scans
``checkpoints/``, ``diffusers/`` and ``loras/`` of each models folder, checks checkpoint
headers (remembered until the file changes), leaves out symbolic links that lead out of
the models folders (unless the operator allows them) and says why in a
:class:`SkippedModel`. Nothing here loads weights or imports torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner.errors import ModelError
from runner.files import PICKLE_SUFFIXES, read_safetensors_header, safe_relative_path
from runner.models import families
from runner.models.tiny import TINY_NAME
from runner.settings import EngineSettings

# The manager's logger, as before the listing moved here: operators filter on that name.
log = logging.getLogger("runner.models.manager")

CHECKPOINT_FOLDERS = ("checkpoints", "diffusers")
LORA_FOLDERS = ("loras",)


@dataclass(frozen=True)
class SkippedModel:
    """A file or folder in a models folder that is left out of the lists, and why."""

    kind: str
    """``checkpoint`` or ``lora``."""
    name: str
    """The name it would have (its path relative to ``checkpoints/``, ``loras/``...)."""
    path: Path
    reason: str
    """One sentence naming the file and what is wrong with it."""


def safe_relative_name(name: str) -> PurePosixPath:
    """A model name as a relative path inside a models folder
    (:func:`runner.files.safe_relative_path`); refuses absolute paths and ``..``."""
    return safe_relative_path(name, what="model name", folder="the models folder")


def scan_folder(
    base: Path, suffixes: Iterable[str], diffusers_dirs: bool
) -> list[tuple[str, Path, bool]]:
    """``(name, path, is_diffusers_folder)`` under ``base``, sorted by name. Follows
    symbolic links to folders (once each: a link loop ends); the callers decide whether
    a link that leads out of the models folders counts."""
    if not base.is_dir():
        return []
    found: list[tuple[str, Path, bool]] = []
    seen: set[tuple[int, int]] = set()
    stack = [base]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(base).as_posix()
            try:
                if entry.is_dir():
                    if diffusers_dirs and (path / "model_index.json").is_file():
                        found.append((rel, path, True))
                    else:
                        stack.append(path)
                elif entry.is_file() and path.suffix.lower() in suffixes:
                    found.append((rel, path, False))
            except OSError:
                continue
    return sorted(found)


def outside_problem(settings: EngineSettings, path: Path, what: str) -> str | None:
    """A sentence if ``path`` is, or lies under, a symbolic link that leads out of the
    models folders and the operator has not allowed that; else None."""
    if settings.allow_model_symlinks_outside:
        return None
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        return f"{path}: cannot follow it: {exc}"
    for root in settings.model_roots:
        try:
            base = root.resolve()
        except (OSError, RuntimeError):
            continue
        if real == base or base in real.parents:
            return None
    return (
        f"{path}: a symbolic link to {real}, outside the models folders; {what}s are "
        f"read from inside them only (set allow_model_symlinks_outside to follow such links)"
    )


class ModelListing:
    """What the models folders of ``settings`` hold, with the header checks remembered."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self._problems: dict[tuple[str, int, int], str | None] = {}
        """Header checks of checkpoint files and folders, by (path, size, mtime)."""

    def checkpoint_names(self) -> list[str]:
        """Every checkpoint name that can be loaded: unsafe and broken files, and symbolic
        links out of the models folders, are left out (:meth:`skipped_models` says why)."""
        names = [TINY_NAME]
        names.extend(name for name, _, problem in self._checkpoint_entries() if problem is None)
        return list(dict.fromkeys(names))

    def lora_names(self) -> list[str]:
        """Every LoRA file name under ``loras/`` of the models folders (symbolic links out
        of the models folders left out)."""
        names: list[str] = []
        for root in self.settings.model_roots:
            for folder in LORA_FOLDERS:
                for rel, path, _ in scan_folder(root / folder, (".safetensors",), False):
                    if self._outside_problem(path, "LoRA") is None:
                        names.append(rel)
        return list(dict.fromkeys(names))

    def skipped_models(self) -> list[SkippedModel]:
        """Checkpoints and LoRAs found in the models folders but left out of the lists:
        broken checkpoints (truncated, not safetensors, not a Stable Diffusion checkpoint)
        and symbolic links out of the models folders. For ``easel models`` and ``doctor``."""
        skipped = [
            SkippedModel("checkpoint", name, path, problem)
            for name, path, problem in self._checkpoint_entries()
            if problem is not None
        ]
        for root in self.settings.model_roots:
            for folder in LORA_FOLDERS:
                for rel, path, _ in scan_folder(root / folder, (".safetensors",), False):
                    problem = self._outside_problem(path, "LoRA")
                    if problem is not None:
                        skipped.append(SkippedModel("lora", rel, path, problem))
        return skipped

    def _checkpoint_entries(self) -> Iterator[tuple[str, Path, str | None]]:
        """``(name, path, problem or None)`` for every checkpoint file or folder found."""
        for root in self.settings.model_roots:
            for folder in CHECKPOINT_FOLDERS:
                for rel, path, is_folder in scan_folder(root / folder, (".safetensors",), True):
                    yield rel, path, self.checkpoint_problem(path, is_folder)

    def checkpoint_problem(self, path: Path, is_folder: bool = False) -> str | None:
        """Why the checkpoint at ``path`` cannot be loaded, or None; cheap: the header of a
        file (read with :func:`runner.files.read_safetensors_header` and judged by
        :func:`runner.models.families.family_of_keys`), the configs of a diffusers folder.
        Remembered until the file changes; a problem is logged once as a warning."""
        outside = self._outside_problem(path, "checkpoint")
        if outside is not None:
            return outside
        try:
            stat = (path / "model_index.json").stat() if is_folder else path.stat()
        except OSError as exc:
            return f"{path}: cannot read it: {exc.strerror or exc}"
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        if stamp in self._problems:
            return self._problems[stamp]
        problem: str | None = None
        try:
            if is_folder:
                families.family_of_folder(path)
            else:
                families.family_of_keys(read_safetensors_header(path))
        except ModelError as exc:  # UnsafeFileError (a renamed pickle) is one too
            problem = str(exc)
        if problem is not None:
            log.warning("leaving a checkpoint out of the list: %s", problem)
        self._problems[stamp] = problem
        return problem

    def _outside_problem(self, path: Path, what: str) -> str | None:
        """:func:`outside_problem` under this listing's settings."""
        return outside_problem(self.settings, path, what)

    def unsafe_files(self) -> list[Path]:
        """Pickle-based weight files found in the models folders (listed so people know why)."""
        found: list[Path] = []
        for root in self.settings.model_roots:
            for folder in (*CHECKPOINT_FOLDERS, *LORA_FOLDERS, "vae"):
                base = root / folder
                if base.is_dir():
                    found.extend(
                        p for p in sorted(base.rglob("*")) if p.suffix.lower() in PICKLE_SUFFIXES
                    )
        return found
