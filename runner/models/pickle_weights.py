"""Pickle-based weight files (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) from the operator's own
models folders, read with PyTorch's restricted unpickler.

``torch.load(..., weights_only=True)`` unpickles only tensors, storages and plain
containers and numbers (PyTorch's allow-list); a pickle that asks for anything else (a
class, a function such as ``os.system``) is refused by the unpickler *before* it is
called, so nothing the file's author put in it runs. That is what ComfyUI does for these
files. easel does it only for files under the models folders and only when the setting
``allow_pickle_weights`` is on; anything a Discord user uploads stays safetensors-only
(:func:`runner.files.refuse_pickle`).

Each file read logs one line. A refused file raises :class:`~runner.errors.UnsafeFileError`
with the unpickler's reason.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Any

from runner.errors import ModelError, UnsafeFileError
from runner.files import CONVERT_HINT, PICKLE_SUFFIXES, is_pickle_name

log = logging.getLogger(__name__)

WEIGHT_PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})
"""Pickle-based suffixes read as weights (``.pkl``/``.pickle`` are never weights here)."""

_ZIP_MAGIC = b"PK\x03\x04"


def is_weight_pickle(name: str | Path) -> bool:
    """Whether ``name`` has one of :data:`WEIGHT_PICKLE_SUFFIXES`."""
    return is_pickle_name(name) and Path(str(name).replace("\\", "/")).suffix.lower() in (
        WEIGHT_PICKLE_SUFFIXES
    )


def sniff_problem(path: Path) -> str | None:
    """A sentence if ``path`` is plainly not a PyTorch pickle (cheap: its first bytes), else
    None. A zip archive (``torch.save``'s format) or a raw pickle passes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"{path}: cannot read it: {exc.strerror or exc}"
    if head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return None
    return f"{path}: not a PyTorch weights file (neither torch.save's zip format nor a pickle)"


def _only_tensors(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning checkpoints keep the weights under state_dict
    if isinstance(obj, dict) and "params_ema" in obj and isinstance(obj["params_ema"], dict):
        obj = obj["params_ema"]  # BasicSR upscalers (ESRGAN family)
    elif isinstance(obj, dict) and "params" in obj and isinstance(obj["params"], dict):
        obj = obj["params"]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{path}: holds no tensors")
    return tensors


def load_pickle_weights(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The tensors of a pickle-based weights file, read with ``torch.load(weights_only=True)``.

    A Lightning ``state_dict`` (and BasicSR's ``params_ema`` / ``params``) is unwrapped;
    entries that are not tensors (step counters...) are dropped. ``mmap`` maps a zip-format
    file instead of reading it (for looking at keys and shapes). Raises
    :class:`~runner.errors.UnsafeFileError` when the file needs more than tensors (the
    unpickler's reason is in the message; nothing it names was run), and
    :class:`~runner.errors.ModelError` for a file that is not a PyTorch pickle.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        raise ModelError(f"{path}: not a pickle-based weights file")
    problem = sniff_problem(path)
    if problem is not None:
        raise ModelError(problem)
    log.info("reading pickle weights %s with torch.load(weights_only=True)", path)
    try:
        with open(path, "rb") as fh:
            is_zip = fh.read(4) == _ZIP_MAGIC
        obj = torch.load(
            str(path), map_location="cpu", weights_only=True, mmap=bool(mmap and is_zip)
        )
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        telling = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln]
        reason = (telling or lines or ["the unpickler refused it"])[0]
        reason = reason.removeprefix("WeightsUnpickler error:").strip().rstrip(".")
        raise UnsafeFileError(
            f"{path}: refused: this pickle needs more than tensors ({reason}). PyTorch's "
            f"restricted unpickler (weights_only=True) loads tensors only, and nothing in "
            f"the file was run. {CONVERT_HINT}"
        ) from None
    except Exception as exc:
        raise ModelError(f"{path}: cannot read it: {type(exc).__name__}: {exc}") from exc
    return _only_tensors(obj, path)


def converted_safetensors(path: Path, cache_dir: Path) -> Path:
    """A ``.safetensors`` copy of pickle checkpoint ``path`` in ``cache_dir/converted/``,
    made once per version of the file (name from its path, size and mtime) and reused.

    Loaders built for safetensors (the single-file checkpoint loader reads the header,
    then maps the file) then read it unchanged. Older copies of the same file are removed.
    """
    from safetensors.torch import save_file

    path = Path(path)
    stat = path.stat()
    source_id = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    version = f"{stat.st_size}-{stat.st_mtime_ns}"
    folder = Path(cache_dir) / "converted"
    target = folder / f"{path.stem}-{source_id}-{version}.safetensors"
    if target.is_file():
        return target
    tensors = load_pickle_weights(path)
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        shared = ptr in seen
        seen.add(ptr)
        value = value.contiguous()
        out[key] = value.clone() if shared else value
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{path.stem}-{source_id}-*.safetensors"):
        old.unlink(missing_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(out, str(tmp), metadata={"easel.converted_from": path.name})
    tmp.replace(target)
    log.info("converted %s to %s for loading", path, target)
    return target


__all__ = [
    "WEIGHT_PICKLE_SUFFIXES",
    "converted_safetensors",
    "is_weight_pickle",
    "load_pickle_weights",
    "sniff_problem",
]
