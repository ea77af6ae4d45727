"""Listing the models folders: which checkpoints, LoRAs, VAEs, text encoders and upscalers
they hold, and which are left out.

:class:`ModelListing` (the base of :class:`~runner.models.manager.ModelManager`) scans each
kind's folders (:mod:`runner.models.model_paths`: ``checkpoints/``, ``diffusers/``,
``loras/``, ``vae/``... of each models folder, and those an ``extra_model_paths.yaml``
adds), checks checkpoint headers (remembered until the file changes), leaves out symbolic
links that lead out of the models folders (unless the operator allows them) and says why
in a :class:`SkippedModel`. Pickle-based files (``.ckpt``, ``.pt``, ``.pth``, ``.bin``)
are listed when ``allow_pickle_weights`` is on (their first bytes checked only: they are
unpickled, restricted, when loaded). Nothing here loads weights or imports torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner.errors import ModelError
from runner.files import PICKLE_SUFFIXES, read_safetensors_header, safe_relative_path
from runner.models import families, model_paths
from runner.models.pickle_weights import WEIGHT_PICKLE_SUFFIXES, sniff_problem
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
    base: Path,
    suffixes: Iterable[str],
    diffusers_dirs: bool,
    *,
    folder_marker: str = "model_index.json",
    skip_folder_suffix: str | None = None,
) -> list[tuple[str, Path, bool]]:
    """``(name, path, is_diffusers_folder)`` under ``base``, sorted by name. Follows
    symbolic links to folders (once each: a link loop ends); the callers decide whether
    a link that leads out of the models folders counts.

    With ``diffusers_dirs``, a folder holding ``folder_marker`` (a pipeline's
    ``model_index.json``, a single model's ``config.json``) is one model and is not
    entered; folders whose name ends in ``skip_folder_suffix`` are passed over."""
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
                    if skip_folder_suffix and entry.name.endswith(skip_folder_suffix):
                        continue
                    if diffusers_dirs and (path / folder_marker).is_file():
                        found.append((rel, path, True))
                    else:
                        stack.append(path)
                elif entry.is_file() and path.suffix.lower() in suffixes:
                    found.append((rel, path, False))
            except OSError:
                continue
    return sorted(found)


def outside_problem(
    settings: EngineSettings, path: Path, what: str, extra_roots: Iterable[Path] = ()
) -> str | None:
    """A sentence if ``path`` is, or lies under, a symbolic link that leads out of the
    models folders (and ``extra_roots``, the folders an extra_model_paths.yaml names) and
    the operator has not allowed that; else None."""
    if settings.allow_model_symlinks_outside:
        return None
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        return f"{path}: cannot follow it: {exc}"
    for root in [*settings.model_roots, *extra_roots]:
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
        self._extra_paths: tuple[dict[str, list[Path]], dict[str, list[Path]]] | None = None

    # Folders of each kind ---------------------------------------------------------
    def extra_model_paths(self) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
        """The folders ``extra_model_paths.yaml`` adds, by kind (read once;
        :mod:`runner.models.model_paths`)."""
        if self._extra_paths is None:
            found = model_paths.find_extra_paths_file(
                self.settings.models_root, self.settings.extra_model_paths
            )
            self._extra_paths = model_paths.read_extra_paths(found) if found else ({}, {})
            if found:
                log.info("read extra model folders from %s", found)
        return self._extra_paths

    def folders(self, kind: str) -> list[Path]:
        """Every folder searched for models of ``kind`` (``checkpoints``, ``loras``,
        ``vae``, ``vae_approx``, ``text_encoders``, ``upscale_models``...), in order."""
        return model_paths.kind_folders(kind, self.settings.model_roots, self.extra_model_paths())

    def weight_suffixes(self) -> tuple[str, ...]:
        """File suffixes loaded as weights: ``.safetensors``, and the pickle-based ones
        when ``allow_pickle_weights`` is on."""
        if self.settings.allow_pickle_weights:
            return (".safetensors", *sorted(WEIGHT_PICKLE_SUFFIXES))
        return (".safetensors",)

    def find_file(self, kind: str, name: str, what: str) -> Path | None:
        """The file of model ``name`` of ``kind`` (``\\`` separators and subfolders
        allowed; the name may leave out ``.safetensors``), or None. Raises ModelError for
        a pickle when pickles are off, or a link out of the models folders."""
        from runner.files import refuse_pickle

        rel = safe_relative_name(name)
        pickle_ok = self.settings.allow_pickle_weights and rel.suffix.lower() in (
            WEIGHT_PICKLE_SUFFIXES
        )
        if not pickle_ok:
            refuse_pickle(name)
        for folder in self.folders(kind):
            for candidate in (folder / rel, folder / f"{rel}.safetensors"):
                if candidate.is_file() and candidate.suffix.lower() in self.weight_suffixes():
                    problem = self._outside_problem(candidate, what)
                    if problem is not None:
                        raise ModelError(f"{what} {name!r} cannot be used: {problem}")
                    return candidate
        return None

    def names_of(
        self,
        kind: str,
        *,
        folders_too: str | None = None,
        suffixes: tuple[str, ...] | None = None,
    ) -> list[str]:
        """Every model name of ``kind``: weight files (or files with ``suffixes``), and
        with ``folders_too`` the folders holding that file (``config.json`` for a
        diffusers VAE...)."""
        names: list[str] = []
        for _, rel, _path in self._kind_entries(kind, folders_too, suffixes):
            names.append(rel)
        return list(dict.fromkeys(names))

    def _kind_entries(
        self, kind: str, folders_too: str | None = None, suffixes: tuple[str, ...] | None = None
    ):
        for folder in self.folders(kind):
            for rel, path, _ in scan_folder(folder, suffixes or self.weight_suffixes(), False):
                if self._outside_problem(path, kind) is None and self._pickle_ok(path):
                    yield kind, rel, path
            if folders_too and folder.is_dir():
                for marker in sorted(folder.rglob(folders_too)):
                    rel = marker.parent.relative_to(folder).as_posix()
                    if rel != "." and self._outside_problem(marker.parent, kind) is None:
                        yield kind, rel, marker.parent

    def _pickle_ok(self, path: Path) -> bool:
        if path.suffix.lower() not in WEIGHT_PICKLE_SUFFIXES:
            return True
        return sniff_problem(path) is None

    def models_by_kind(self) -> dict[str, list[str]]:
        """Every model name the loaders accept, grouped by kind (for ``easel models``)."""
        # The per-kind modules import the manager; imported here, they cannot loop.
        from runner.models import clip_vision, gligen, hypernetworks, style_models
        from runner.models.controlnet import control_names

        return {
            "checkpoints": self.checkpoint_names(),
            "loras": self.lora_names(),
            "vae": self.vae_names(),
            "text_encoders": self.text_encoder_names(),
            "upscale_models": self.upscale_model_names(),
            "controlnet": control_names(self.settings),
            "clip_vision": clip_vision.clip_vision_names(self),
            "style_models": style_models.style_model_names(self),
            "hypernetworks": hypernetworks.hypernetwork_names(self),
            "gligen": gligen.gligen_names(self),
            "embeddings": self.embedding_names(),
        }

    def vae_names(self) -> list[str]:
        """VAELoader's choices: files and diffusers folders under ``vae/``, and ``taesd`` /
        ``taesdxl`` when their encoder and decoder are in ``vae_approx/`` (ComfyUI's rule)
        or a diffusers folder of that name is."""
        names = self.names_of("vae", folders_too="config.json")
        approx = [n for n in self.names_of("vae_approx", folders_too="config.json")]
        stems = {Path(n).stem for n in approx}
        for name in ("taesd", "taesdxl"):
            both = f"{name}_encoder" in stems and f"{name}_decoder" in stems
            if both or name in approx:
                names.append(name)
        return list(dict.fromkeys(names))

    def text_encoder_names(self) -> list[str]:
        """CLIPLoader's choices: files under ``text_encoders/`` (and ComfyUI's old ``clip/``)."""
        return self.names_of("text_encoders")

    def upscale_model_names(self) -> list[str]:
        """UpscaleModelLoader's choices: files under ``upscale_models/``."""
        return self.names_of("upscale_models")

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
        for folder in self.folders("loras"):
            for rel, path, _ in scan_folder(folder, (".safetensors",), False):
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
        for folder in self.folders("loras"):
            for rel, path, _ in scan_folder(folder, (".safetensors",), False):
                problem = self._outside_problem(path, "LoRA")
                if problem is not None:
                    skipped.append(SkippedModel("lora", rel, path, problem))
        return skipped

    def _checkpoint_entries(self) -> Iterator[tuple[str, Path, str | None]]:
        """``(name, path, problem or None)`` for every checkpoint file or folder found."""
        for folder in self.folders("checkpoints"):
            for rel, path, is_folder in scan_folder(folder, self.weight_suffixes(), True):
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
            elif path.suffix.lower() in WEIGHT_PICKLE_SUFFIXES:
                # A pickle is not opened to list it (that would unpickle it): its first
                # bytes only; its keys are checked when it loads.
                problem = sniff_problem(path)
            else:
                families.family_of_keys(read_safetensors_header(path))
        except ModelError as exc:  # UnsafeFileError (a renamed pickle) is one too
            problem = str(exc)
        if problem is not None:
            log.warning("leaving a checkpoint out of the list: %s", problem)
        self._problems[stamp] = problem
        return problem

    def _outside_problem(self, path: Path, what: str) -> str | None:
        """:func:`outside_problem` under this listing's settings (the folders an
        extra_model_paths.yaml names count as inside)."""
        first, others = self.extra_model_paths()
        extra = [p for paths in (*first.values(), *others.values()) for p in paths]
        return outside_problem(self.settings, path, what, extra)

    def unsafe_files(self) -> list[Path]:
        """Pickle-based files found in the models folders that are refused: all of them
        when ``allow_pickle_weights`` is off, else only ``.pkl``/``.pickle`` (never weights)
        and LoRA pickles (LoRAs load as safetensors only). Listed so people know why."""
        found: list[Path] = []
        allowed = self.settings.allow_pickle_weights
        for kind in ("checkpoints", "loras", "vae", "text_encoders", "upscale_models"):
            for base in self.folders(kind):
                if not base.is_dir():
                    continue
                for p in sorted(base.rglob("*")):
                    suffix = p.suffix.lower()
                    if suffix not in PICKLE_SUFFIXES:
                        continue
                    if allowed and kind != "loras" and suffix in WEIGHT_PICKLE_SUFFIXES:
                        continue
                    found.append(p)
        return list(dict.fromkeys(found))
