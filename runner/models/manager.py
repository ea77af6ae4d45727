"""Finding and loading checkpoints and LoRAs, and keeping them loaded under a memory budget.

Checkpoint names resolve, in order, to: the built-in ``tiny-random`` model; a file or a
diffusers folder under ``checkpoints/`` (or ``diffusers/``) of a models folder in
ComfyUI's layout; a Hugging Face repo id (``org/name``) when hub downloads are allowed.
Weights load from safetensors only: pickle formats are refused before any byte is read
(:mod:`runner.files`). :meth:`ModelManager.family` and :meth:`ModelManager.native_size`
answer for a name without loading it (:mod:`runner.models.families`); a loaded model is a
:class:`~runner.models.checkpoint.Checkpoint`. Listing the models folders (and the header
checks and symbolic-link rules that leave files out) is :mod:`runner.models.listing`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from runner.errors import ModelError, UnsafeFileError
from runner.files import refuse_pickle
from runner.models import families
from runner.models.checkpoint import Checkpoint
from runner.models.components import ComponentLoading, Components, pipeline_bytes, rel_name
from runner.models.device import memory_budget_bytes, pick_device, pick_dtype
from runner.models.embeddings import Embedding, EmbeddingCache, embedding_names, find_embedding
from runner.models.listing import (
    CHECKPOINT_FOLDERS,
    LORA_FOLDERS,
    ModelListing,
    SkippedModel,
    safe_relative_name,
)
from runner.models.pickle_weights import (
    WEIGHT_PICKLE_SUFFIXES,
    converted_safetensors,
    is_weight_pickle,
)
from runner.models.tiny import TINY_NAME, tiny_model_dir
from runner.settings import EngineSettings

log = logging.getLogger(__name__)

TINY_FAMILY = "sd1"
"""The built-in ``tiny-random`` model is a (tiny) SD1."""


__all__ = [
    "CHECKPOINT_FOLDERS",
    "LORA_FOLDERS",
    "TINY_FAMILY",
    "Checkpoint",
    "Components",
    "ModelManager",
    "SkippedModel",
    "rel_name",
    "safe_relative_name",
]


class ModelManager(ComponentLoading, ModelListing):
    """Resolves names, loads checkpoints and keeps them in an LRU cache under a memory budget.

    What the models folders hold (:meth:`checkpoint_names`, :meth:`lora_names`,
    :meth:`skipped_models`, :meth:`checkpoint_problem`, :meth:`unsafe_files`) comes from
    :class:`~runner.models.listing.ModelListing`; standalone VAEs, text encoders and
    upscalers (:meth:`vae`, :meth:`text_encoders`, :meth:`upscale_model`) from
    :class:`~runner.models.components.ComponentLoading`.
    """

    def __init__(self, settings: EngineSettings):
        super().__init__(settings)  # settings and the remembered header checks
        self.device = pick_device(settings)
        self.dtype = pick_dtype(settings, self.device)
        self._loaded: OrderedDict[str, Checkpoint] = OrderedDict()
        self._lock = threading.RLock()
        self.load_seconds: dict[str, float] = {}
        self.extra_lora_paths: dict[str, Path] = {}
        """LoRAs registered by name from elsewhere (the bot's per-user library)."""
        self._file_families: dict[tuple[str, int], str] = {}
        self._embeddings = EmbeddingCache()

    # Names ------------------------------------------------------------------------
    def check_checkpoint_name(self, name: str) -> str | None:
        """None if ``name`` can be loaded, else a sentence saying why not (for validation)."""
        try:
            self.resolve_checkpoint(name)
        except ModelError as exc:
            return str(exc)
        except OSError as exc:  # a name the file system cannot look up (too long...)
            return f"no checkpoint named {name!r}: {exc.strerror or exc}"
        return None

    def resolve_checkpoint(self, name: str) -> tuple[str, Path | str]:
        """``(kind, location)`` for a checkpoint name: kind is builtin, file, folder or hub.

        Names may use subfolders and Windows separators (``sdxl\\model.safetensors``).
        A ``.ckpt`` (or other pickle) is found when ``allow_pickle_weights`` is on; a name
        that is missing but whose other format exists (``x.ckpt`` / ``x.safetensors``) is
        named in the error."""
        if name == TINY_NAME:
            return "builtin", TINY_NAME
        rel = safe_relative_name(name)
        if not (self.settings.allow_pickle_weights and is_weight_pickle(rel)):
            try:
                refuse_pickle(name)
            except UnsafeFileError as exc:
                raise UnsafeFileError(
                    f"{exc} (or set allow_pickle_weights to load it with PyTorch's "
                    f"restricted unpickler){self._other_format_hint(rel)}"
                ) from None
        suffixes = self.weight_suffixes()
        for base in self.folders("checkpoints"):
            candidate = base / rel
            if candidate.is_file() and candidate.suffix.lower() in suffixes:
                kind = "file"
            elif candidate.is_dir() and (candidate / "model_index.json").is_file():
                kind = "folder"
            else:
                continue
            problem = self.checkpoint_problem(candidate, kind == "folder")
            if problem is not None:  # refused at validation, not at load
                raise ModelError(f"checkpoint {name!r} cannot be used: {problem}")
            return kind, candidate
        if self.settings.allow_hub_downloads and len(rel.parts) == 2 and not rel.suffix:
            return "hub", name
        available = ", ".join(self.checkpoint_names())
        hint = (
            ""
            if self.settings.allow_hub_downloads
            else " (Hugging Face repo ids need allow_hub_downloads)"
        )
        raise ModelError(
            f"no checkpoint named {name!r}{self._other_format_hint(rel)}; "
            f"available: {available}{hint}"
        )

    def _other_format_hint(self, rel: PurePosixPath) -> str:
        """``"; but x.safetensors exists"`` when the same name in another weights format is
        in the checkpoint folders, else ``""``."""
        for suffix in (".safetensors", *sorted(WEIGHT_PICKLE_SUFFIXES)):
            if suffix == rel.suffix.lower():
                continue
            other = rel.with_suffix(suffix)
            for base in self.folders("checkpoints"):
                if (base / other).is_file():
                    usable = suffix == ".safetensors" or self.settings.allow_pickle_weights
                    tail = "" if usable else " (a pickle: set allow_pickle_weights to load it)"
                    return f"; but {other.as_posix()} exists: use that name{tail}"
        return ""

    def lora_path(self, name: str) -> Path:
        """The file of a LoRA name (with or without ``.safetensors``)."""
        refuse_pickle(name)
        rel = safe_relative_name(name)
        for folder in self.folders("loras"):
            for candidate in (folder / rel, folder / f"{rel}.safetensors"):
                if candidate.is_file() and candidate.suffix.lower() == ".safetensors":
                    outside = self._outside_problem(candidate, "LoRA")
                    if outside is not None:
                        raise ModelError(f"LoRA {name!r} cannot be used: {outside}")
                    return candidate
        extra = self.extra_lora_paths.get(name)
        if extra is not None and extra.is_file():
            return extra
        # The bot's LoRA library: files named by content hash, referenced as "<sha256>.safetensors".
        library = self.settings.lora_library_dir / rel
        if len(rel.parts) == 1 and library.suffix == ".safetensors" and library.is_file():
            return library
        raise ModelError(
            f"no LoRA named {name!r}; available: {', '.join(self.lora_names()) or '(none)'}"
        )

    # Embeddings -------------------------------------------------------------------
    def embedding_path(self, name: str) -> Path | None:
        """The file of textual-inversion embedding ``name`` (``embedding:name`` in a prompt)
        under ``embeddings/`` of the models folders, or None
        (:func:`runner.models.embeddings.find_embedding`; symbolic links out of the models
        folders count only if the operator allows them)."""
        path = find_embedding(self.settings.model_roots, name)
        if path is None or self._outside_problem(path, "embedding") is not None:
            return None
        return path

    def embedding_names(self) -> list[str]:
        """Every embedding file under ``embeddings/`` of the models folders."""
        return embedding_names(self.settings.model_roots)

    def embedding(self, name: str) -> Embedding | None:
        """The loaded embedding ``name``, or None if there is no such file. Raises
        :class:`~runner.errors.ModelError` for a file that cannot be read (or a pickle
        while ``allow_pickle_weights`` is off)."""
        path = self.embedding_path(name)
        if path is None:
            return None
        return self._embeddings.load(
            path, name=name, allow_pickle=getattr(self.settings, "allow_pickle_weights", True)
        )

    # Families ---------------------------------------------------------------------
    def family(self, name: str) -> str:
        """The family (``sd1``, ``sd2``, ``sd2-v``, ``sdxl``) of checkpoint ``name``,
        without loading its weights where possible (see :mod:`runner.models.families`):

        - a checkpoint already loaded answers at once;
        - ``tiny-random`` is ``sd1``;
        - a single ``.safetensors`` file: its header (and for SD2 a ``.yaml`` sidecar or
          one 1.3 KB tensor), remembered until the file changes;
        - a diffusers folder: its configs;
        - a hub id: its configs fetched from the hub (a few KB); if they cannot be
          fetched, the model is loaded, as loading it is what the job would do next.

        Raises :class:`~runner.errors.ModelError` for a name that does not resolve.
        """
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded.family
        kind, location = self.resolve_checkpoint(name)
        if kind == "builtin":
            return TINY_FAMILY
        if kind == "folder":
            return families.family_of_folder(Path(location))
        if kind == "file":
            path = Path(location)
            stamp = (str(path), path.stat().st_mtime_ns)
            family = self._file_families.get(stamp)
            if family is None and is_weight_pickle(path):
                family = families.family_of_checkpoint(self._as_safetensors(path))
            elif family is None:
                family = families.family_of_checkpoint(path)
                self._file_families[stamp] = family
            return family
        return self._hub_family(str(location))

    def native_size(self, name: str) -> tuple[int, int]:
        """``(width, height)`` checkpoint ``name`` was trained at: its family's
        (:func:`runner.models.families.native_size`), found as :meth:`family` finds it."""
        return families.native_size(self.family(name))

    def _hub_family(self, repo_id: str) -> str:
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                repo_id,
                allow_patterns=[
                    "model_index.json",
                    "text_encoder/config.json",
                    "scheduler/scheduler_config.json",
                ],
            )
            return families.family_of_folder(Path(folder))
        except Exception:  # no network, gated repo...: fall back to loading it
            log.info("could not fetch the configs of %s; loading it to learn its family", repo_id)
            return self.checkpoint(repo_id).family

    # Loading ----------------------------------------------------------------------
    def checkpoint(self, name: str) -> Checkpoint:
        """The loaded checkpoint ``name``, loading it (and evicting others) if needed."""
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is not None:
                self._loaded.move_to_end(name)
                return loaded
            kind, location = self.resolve_checkpoint(name)
            t0 = time.perf_counter()
            pipe, family = self._load(kind, location)
            checkpoint = Checkpoint(
                name=name,
                family=family,
                pipe=pipe,
                device=self.device,
                dtype=self.dtype,
                source=str(location),
                size_bytes=pipeline_bytes(pipe),
            )
            self._prepare(checkpoint)
            self.load_seconds[name] = time.perf_counter() - t0
            self._make_room(checkpoint.size_bytes)
            self._loaded[name] = checkpoint
            log.info(
                "loaded %s (%s, %.1f MB) in %.2fs",
                name,
                family,
                checkpoint.size_bytes / 1e6,
                self.load_seconds[name],
            )
            return checkpoint

    def loaded(self) -> list[Checkpoint]:
        """Checkpoints in memory, least recently used first."""
        return list(self._loaded.values())

    def unload(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    def clear(self) -> None:
        """Unload every checkpoint."""
        with self._lock:
            self._loaded.clear()

    def _make_room(self, incoming: int) -> None:
        budget = memory_budget_bytes(self.settings, self.device)
        while self._loaded and sum(c.size_bytes for c in self._loaded.values()) + incoming > budget:
            name, evicted = self._loaded.popitem(last=False)
            log.info(
                "evicting %s (%.1f MB) to stay within the model memory budget",
                name,
                evicted.size_bytes / 1e6,
            )

    def _load(self, kind: str, location: Path | str) -> tuple[Any, str]:
        from diffusers import DiffusionPipeline

        try:
            if kind == "builtin":
                folder = tiny_model_dir(self.settings.cache_dir)
                return self._from_folder(folder), TINY_FAMILY
            if kind == "folder":
                return self._from_folder(Path(location)), families.family_of_folder(Path(location))
            if kind == "file":
                from runner.models.configs import companion_config_dir
                from runner.models.single_file import load_single_file

                path = Path(location)
                readable = self._as_safetensors(path) if is_weight_pickle(path) else path
                return load_single_file(
                    readable,
                    cache_dir=self.settings.cache_dir,
                    torch_dtype=self.dtype,
                    config_override_dir=companion_config_dir(path) if readable != path else None,
                )
            pipe = DiffusionPipeline.from_pretrained(
                str(location), torch_dtype=self.dtype, use_safetensors=True, safety_checker=None
            )
            return pipe, families.family_of_pipeline(pipe)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"checkpoint {location} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc

    def _as_safetensors(self, path: Path) -> Path:
        """A pickle checkpoint as a safetensors copy in the cache (made once per version of
        the file, with PyTorch's restricted unpickler; :mod:`runner.models.pickle_weights`),
        so the single-file loader reads it like any other; its ``.yaml`` sidecar comes too."""
        converted = converted_safetensors(path, self.settings.cache_dir)
        sidecar = path.with_suffix(".yaml")
        if sidecar.is_file() and not converted.with_suffix(".yaml").is_file():
            converted.with_suffix(".yaml").write_bytes(sidecar.read_bytes())
        return converted

    def _from_folder(self, folder: Path) -> Any:
        from diffusers import DiffusionPipeline

        kwargs: dict[str, Any] = {}
        index = json.loads((folder / "model_index.json").read_text())
        if "safety_checker" in index:
            kwargs["safety_checker"] = None
            kwargs["requires_safety_checker"] = False
        return DiffusionPipeline.from_pretrained(
            str(folder),
            torch_dtype=self.dtype,
            use_safetensors=True,
            local_files_only=True,
            **kwargs,
        )

    def _prepare(self, checkpoint: Checkpoint) -> None:
        """Apply the speed and memory settings to a freshly loaded pipeline."""
        pipe = checkpoint.pipe
        settings = self.settings
        pipe.set_progress_bar_config(disable=True)
        if settings.attention == "sdpa":
            from diffusers.models.attention_processor import AttnProcessor2_0

            pipe.unet.set_attn_processor(AttnProcessor2_0())
        else:
            from diffusers.models.attention_processor import AttnProcessor

            pipe.unet.set_attn_processor(AttnProcessor())
        if settings.vae_tiling == "on":
            pipe.vae.enable_tiling()
        if settings.low_vram and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(gpu_id=self.device.index or 0)
        else:
            if settings.low_vram:
                log.warning(
                    "low_vram needs a CUDA GPU; running %s on %s without offload",
                    checkpoint.name,
                    self.device,
                )
            pipe.to(self.device)
        if settings.compile:
            pipe.unet = torch.compile(pipe.unet)

    # Nodes' own models (merges) -------------------------------------------------------
    def derived(self, key: str) -> Checkpoint | None:
        """The checkpoint kept under ``key`` by :meth:`add_derived`, or None."""
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                self._loaded.move_to_end(key)
            return found

    def add_derived(self, key: str, checkpoint: Checkpoint) -> Checkpoint:
        """Keep a checkpoint made by a node (a merge) in the cache under ``key`` (a ``:``
        key, never a checkpoint name), within the memory budget; the one already there
        under that key is returned instead, so equal merges share their weights."""
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                return loaded
            self._make_room(checkpoint.size_bytes)
            self._loaded[key] = checkpoint
            return checkpoint

    def describe(self) -> dict[str, Any]:
        """What can be loaded and what is loaded, for ``easel models``."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "models_folders": [str(p) for p in self.settings.model_roots],
            "checkpoints": self.checkpoint_names(),
            "loras": self.lora_names(),
            "by_kind": self.models_by_kind(),
            "extra_model_paths": {
                kind: [str(p) for p in paths]
                for group in self.extra_model_paths()
                for kind, paths in group.items()
            },
            "allow_pickle_weights": self.settings.allow_pickle_weights,
            "refused_unsafe_files": [str(p) for p in self.unsafe_files()],
            "skipped": [
                {"kind": m.kind, "name": m.name, "path": str(m.path), "reason": m.reason}
                for m in self.skipped_models()
            ],
            "loaded": [c.name for c in self.loaded()],
        }
