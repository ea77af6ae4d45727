"""Textual-inversion embeddings: the files behind ``embedding:name`` in a prompt.

They live in ``embeddings/`` of each models folder (ComfyUI's layout), in subfolders too.
A name is looked up as ComfyUI's ``load_embed`` does: the exact file name, else the name
with ``.safetensors``, ``.pt`` or ``.bin`` added; in ``embeddings/`` first, then in its
subfolders (sorted), models folder after models folder.

Formats (what ComfyUI reads):

* SD1 / SD2: one tensor ``[n, width]`` under any key (``emb_params``, ...);
* SDXL: ``clip_l`` ``[n, 768]`` and ``clip_g`` ``[n, 1280]``, one per text encoder;
* A1111's ``.pt``: ``{"string_to_param": {"*": tensor}, "name": ..., "step": ...}``;
* vectors bundled in a LoRA file: ``bundle_emb.<name>.string_to_param.*`` or
  ``bundle_emb.<name>.<key>``.

``.safetensors`` files are read as such. ``.pt`` / ``.bin`` files are pickles: read only
when the setting ``allow_pickle_weights`` is on, with PyTorch's restricted unpickler
(``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers before it runs), one log line per file. These files come from the operator's
models folders, never from a Discord upload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ModelError, UnsafeFileError
from runner.files import is_pickle_name, safe_relative_path

log = logging.getLogger(__name__)

EMBEDDING_FOLDER = "embeddings"
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
"""Tried after the exact name, in this order (ComfyUI's)."""


@dataclass(frozen=True)
class Embedding:
    """A loaded embedding file: its tensors (or A1111's nested dict) by key."""

    name: str
    path: Path
    data: Mapping[str, Any]

    def vectors(self, key: str):
        """The vectors ``[n, width]`` for the text encoder whose key is ``key`` (``clip_l``,
        ``clip_g``), chosen as ComfyUI does: A1111's ``string_to_param``, else ``key``, else
        vectors bundled in a LoRA, else the first tensor of the file. Their width may not
        fit the encoder; the encoder then leaves them out with a warning."""
        import torch

        data = self.data
        params = data.get("string_to_param")
        if isinstance(params, Mapping) and params:
            return next(iter(params.values()))
        if isinstance(data.get(key), torch.Tensor):
            return data[key]
        for suffix in (".string_to_param.*", f".{key}"):
            bundled = [
                v
                for k, v in data.items()
                if k.startswith("bundle_emb.")
                and k.endswith(suffix)
                and isinstance(v, torch.Tensor)
            ]
            if bundled:
                return torch.cat(bundled, dim=0)
        for value in data.values():
            if isinstance(value, torch.Tensor):
                return value
        raise ModelError(f"embedding {self.name} ({self.path}) holds no tensors")


def _subfolders(base: Path) -> Iterator[Path]:
    """``base`` and every folder under it, ``base`` first, then sorted by path."""
    yield base
    try:
        found = sorted(p for p in base.rglob("*") if p.is_dir())
    except OSError:
        return
    yield from found


def find_embedding(roots: Sequence[Path], name: str) -> Path | None:
    """The file of embedding ``name`` under ``<root>/embeddings`` (see the module
    docstring), or None. A name that would leave the folder (absolute, ``..``) is never
    found."""
    try:
        rel = safe_relative_path(name, what="embedding name", folder="the embeddings folder")
    except ModelError:
        return None
    for root in roots:
        base = root / EMBEDDING_FOLDER
        if not base.is_dir():
            continue
        for folder in _subfolders(base):
            candidate = folder / rel
            if candidate.is_file():
                return candidate
            for suffix in EMBEDDING_SUFFIXES:
                with_suffix = folder / f"{rel}{suffix}"
                if with_suffix.is_file():
                    return with_suffix
    return None


def embedding_names(roots: Sequence[Path]) -> list[str]:
    """Every embedding file under ``<root>/embeddings`` (relative names, suffix kept)."""
    names: list[str] = []
    for root in roots:
        base = root / EMBEDDING_FOLDER
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix.lower() in EMBEDDING_SUFFIXES:
                names.append(path.relative_to(base).as_posix())
    return list(dict.fromkeys(names))


def _load_pickle(path: Path) -> Mapping[str, Any]:
    import pickle

    import torch

    log.info("reading the pickle-based embedding %s with torch.load(weights_only=True)", path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused: this pickle needs more than tensors to load ({exc})".split("\n")[0]
        ) from exc
    except Exception as exc:
        raise ModelError(f"{path}: not a readable PyTorch file: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ModelError(f"{path}: holds a {type(data).__name__}, not a dict of tensors")
    return data


def load_embedding(path: Path, *, name: str = "", allow_pickle: bool = True) -> Embedding:
    """Read the embedding file at ``path``. ``.pt`` / ``.bin`` (pickles) only with
    ``allow_pickle`` (the setting ``allow_pickle_weights``), through the restricted
    unpickler. Raises :class:`~runner.errors.ModelError` (or its subclass
    :class:`~runner.errors.UnsafeFileError`) naming the file and the reason."""
    path = Path(path)
    if is_pickle_name(path):
        if not allow_pickle:
            raise UnsafeFileError(
                f"{path}: a pickle-based embedding, and pickle weights are turned off "
                "(the setting allow_pickle_weights); convert it to .safetensors"
            )
        data = _load_pickle(path)
    else:
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelError(f"{path}: not a readable safetensors embedding: {exc}") from exc
    return Embedding(name or path.stem, path, data)


class EmbeddingCache:
    """Loaded embeddings by file, kept until the file changes (a few KB each)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, int, int], Embedding] = {}

    def load(self, path: Path, *, name: str, allow_pickle: bool) -> Embedding:
        """:func:`load_embedding`, remembered by (path, size, mtime)."""
        stat = path.stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        found = self._loaded.get(stamp)
        if found is None:
            found = load_embedding(path, name=name, allow_pickle=allow_pickle)
            self._loaded[stamp] = found
        return found


__all__ = [
    "EMBEDDING_FOLDER",
    "EMBEDDING_SUFFIXES",
    "Embedding",
    "EmbeddingCache",
    "embedding_names",
    "find_embedding",
    "load_embedding",
]
