"""File safety, in one place: every rule easel applies before it trusts a file or a name.

- :func:`write_atomic`: everything that writes a file a user or the operator relies on
  goes through it, so a crash never leaves half a file behind;
- :func:`refuse_pickle` / :data:`PICKLE_SUFFIXES`: pickle-based weight files (``.ckpt``,
  ``.pt``, ``.pth``, ``.bin``, ``.pkl``, ``.pickle``) are refused by name before a byte
  is read, since loading a pickle can run any code its author put in it;
- :func:`read_safetensors_header`: a ``.safetensors`` file's tensor names, shapes, dtypes
  and metadata, read with the ``safetensors`` library's ``safe_open`` (which validates the
  offsets). Before it, a cheap sniff refuses a pickle or zip renamed to ``.safetensors``,
  a file too short for a header and a header length that the file cannot hold; after
  it, a refusal from the library is turned into a sentence that says what is wrong;
- :func:`safe_relative_path`: a name (a model name, a path the database recorded) as a
  relative path that cannot leave the folder it is looked up in;
- :func:`clean_filename`: the name a user gave an uploaded file, made safe to store and
  show (no NUL, control or bidi-override characters, no folders). Every upload path uses it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from runner.errors import ModelError, UnsafeFileError

_UMASK = os.umask(0)
os.umask(_UMASK)

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
"""Suffixes of pickle-based weight files, refused everywhere by name."""

SAFETENSORS_SUFFIX = ".safetensors"

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors header read at all (the ``safetensors`` library's own limit)."""

CONVERT_HINT = (
    "Convert it on a machine you trust, e.g. "
    '`python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd); "
    "st.save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
    "'model.safetensors')\"`, or download the .safetensors version most models publish."
)


# ---------------------------------------------------------------------- writing


def ordinary_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what a plain ``open()`` would have given."""
    return mode & ~_UMASK


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, ordinary_mode())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- names


def is_pickle_name(name: str | Path) -> bool:
    """Whether ``name``'s suffix is one of :data:`PICKLE_SUFFIXES` (any case)."""
    return PurePosixPath(str(name).replace("\\", "/")).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(name: str | Path, *, hint: str = CONVERT_HINT) -> None:
    """Raise :class:`~runner.errors.UnsafeFileError` naming ``name`` if its suffix says it
    is a pickle; do nothing otherwise. Decided by the name alone: nothing is opened.

    ``hint`` ends the message (by default: how to convert the file to safetensors).
    """
    if not is_pickle_name(name):
        return
    suffix = PurePosixPath(str(name).replace("\\", "/")).suffix
    raise UnsafeFileError(
        f"{name}: refusing to load a {suffix} file. {suffix} files are Python pickles, and "
        f"loading a pickle can run any code its author put in it. easel loads .safetensors "
        f"files only. {hint}".rstrip()
    )


class UnsafePath(ModelError):
    """A name that would lead outside the folder it is looked up in. ``name`` is the name."""

    def __init__(self, name: str, what: str = "name", folder: str = "its folder"):
        self.name = name
        super().__init__(f"{what} {name!r} must be a plain name relative to {folder}")


def safe_relative_path(
    name: str, *, what: str = "name", folder: str = "its folder"
) -> PurePosixPath:
    """``name`` as a relative POSIX path that stays inside the folder it is joined to.

    Backslashes count as separators. Refuses (with :class:`UnsafePath`, whose message says
    ``what`` the name is and which ``folder`` it is relative to) an empty name, an absolute path, a drive (``C:``), and any
    ``..`` or empty component.
    """
    rel = PurePosixPath(str(name).replace("\\", "/"))
    if (
        not str(name)
        or not rel.parts
        or rel.is_absolute()
        or any(part in ("..", "") for part in rel.parts)
        or ":" in rel.parts[0]
    ):
        raise UnsafePath(str(name), what, folder)
    return rel


MAX_FILENAME_CHARS = 120
"""Longest cleaned upload name (the suffix is kept when a name is shortened)."""

_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
"""Unicode categories removed from upload names: controls (NUL, newlines, escapes), format
characters (bidi overrides and isolates, zero-width characters), surrogates, private use
and unassigned code points."""


def clean_filename(name: object, *, default: str = "upload") -> str:
    """The name a user gave an uploaded file, made safe to store and to show.

    Keeps the last component only (``/`` and ``\\`` are folder separators wherever the
    file came from), drops NUL, control, bidi-override and other invisible characters,
    turns other whitespace runs into one space, strips spaces at the ends and shortens it
    to :data:`MAX_FILENAME_CHARS` keeping its suffix. A name left empty, ``.`` or ``..``
    becomes ``default``. The result is a label: files are stored under names easel makes.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    kept = []
    for char in text:
        if char.isspace():  # tabs and newlines too: a name is one line
            kept.append(" ")
            continue
        category = unicodedata.category(char)
        if category in _DROPPED_CATEGORIES:
            continue
        kept.append(char)
    text = " ".join("".join(kept).split())
    if text in ("", ".", ".."):
        return default
    if len(text) > MAX_FILENAME_CHARS:
        stem, dot, suffix = text.rpartition(".")
        if dot and stem and len(suffix) <= 16:
            text = stem[: MAX_FILENAME_CHARS - len(suffix) - 1].rstrip() + "." + suffix
        else:
            text = text[:MAX_FILENAME_CHARS].rstrip()
    return text


# ---------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file's header says: tensor shapes and dtypes, and metadata."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    """The header's length, as the file's 8-byte length field gives it."""


class HeaderTooLarge(ModelError):
    """The header length field claims more than the caller's limit."""

    def __init__(self, path: Path, claimed: int, limit: int):
        self.path = path
        self.claimed = claimed
        self.limit = limit
        super().__init__(
            f"{path}: the safetensors header claims {claimed} bytes, more than the {limit} "
            f"bytes allowed"
        )


def check_weights_path(path: Path) -> Path:
    """Refuse anything but an existing ``.safetensors`` file, before reading a byte of it.

    Raises :class:`~runner.errors.UnsafeFileError` for pickle suffixes (:func:`refuse_pickle`)
    and :class:`~runner.errors.ModelError` for other suffixes, missing files and folders.
    Returns the path.
    """
    path = Path(path)
    refuse_pickle(path)
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS_SUFFIX:
        raise ModelError(
            f"{path}: not a .safetensors file (suffix {suffix or 'none'!r}); "
            f"easel loads weights in the .safetensors format only"
        )
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a .safetensors file")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    return path


def _sniff_foreign(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the format torch.save writes: a pickled PyTorch checkpoint)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (a legacy PyTorch checkpoint)"
    return None


def _sniff(path: Path, max_header_bytes: int) -> tuple[int, int, bytes]:
    """``(file size, header length, raw header)`` after the cheap checks."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            foreign = _sniff_foreign(head)
            if foreign is not None:
                raise UnsafeFileError(
                    f"{path}: not a safetensors file: it is {foreign} renamed to .safetensors. "
                    f"Refused: loading a pickle can run any code its author put in it. "
                    f"{CONVERT_HINT}"
                )
            if len(head) < 8:
                raise ModelError(
                    f"{path}: not a valid safetensors file: {size} bytes, too short for a header "
                    f"(empty or truncated file)"
                )
            (n,) = struct.unpack("<Q", head)
            if n > max_header_bytes:
                raise HeaderTooLarge(path, n, max_header_bytes)
            if n < 2:
                raise ModelError(
                    f"{path}: not a valid safetensors file: the header length field says {n} bytes"
                )
            if 8 + n > size:
                raise ModelError(
                    f"{path}: not a valid safetensors file or truncated: the header needs {n} bytes "
                    f"but the file has {size - 8} after the length field"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    return size, n, raw


def _explain(path: Path, detail: str, raw: bytes, data_size: int) -> str:
    """A sentence for a header the ``safetensors`` library refused (``detail`` is its
    message). Reads the JSON again only to say which problem it is."""
    detail = detail.removeprefix("Error while deserializing header: ")
    bad = f"{path}: not a valid safetensors file"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{bad}: the header is not JSON ({exc})"
    if not isinstance(header, dict):
        return f"{bad}: the header is not a JSON object"
    if "not fully covered" in detail:
        ends = []
        for name, entry in header.items():
            try:
                ends.append((int(entry["data_offsets"][1]), name))
            except (TypeError, KeyError, ValueError, IndexError):
                continue
        end, name = max(ends, default=(0, None))
        if end > data_size:
            return (
                f"{path}: truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"but the file holds only {data_size} bytes of data (an incomplete download?)"
            )
        return (
            f"{bad}: the tensors take {end} bytes but the file holds {data_size} bytes of data "
            f"after the header (extra or missing bytes)"
        )
    if "invalid shape, data type, or offset" in detail:
        return (
            f"{bad}: the size a tensor's dtype and shape give does not match its data offsets "
            f"({detail})"
        )
    return f"{bad}: {detail}"


def read_safetensors_header(
    path: Path, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """The header of a ``.safetensors`` file, without reading tensor data.

    The ``safetensors`` library validates the JSON, every entry's dtype, shape and data
    offsets, and that the tensors cover the data section exactly (a truncated download
    fails here). Raises :class:`~runner.errors.UnsafeFileError` for a pickle suffix or a
    pickle or zip file renamed to ``.safetensors``, :class:`HeaderTooLarge` when the
    length field claims more than ``max_header_bytes``, and
    :class:`~runner.errors.ModelError` naming the file for anything else invalid.
    """
    from safetensors import SafetensorError, safe_open

    path = check_weights_path(path)
    size, n, raw = _sniff(path, max_header_bytes)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            names = list(fh.keys())
            metadata = fh.metadata() or {}
            slices = {name: fh.get_slice(name) for name in names}
            shapes = {name: tuple(int(d) for d in s.get_shape()) for name, s in slices.items()}
            dtypes = {name: str(s.get_dtype()) for name, s in slices.items()}
    except SafetensorError as exc:
        raise ModelError(_explain(path, str(exc), raw, size - 8 - n)) from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    return SafetensorsHeader(
        path=path,
        shapes=shapes,
        dtypes=dtypes,
        metadata={str(k): str(v) for k, v in metadata.items()},
        header_bytes=n,
    )


__all__ = [
    "CONVERT_HINT",
    "MAX_HEADER_BYTES",
    "PICKLE_SUFFIXES",
    "HeaderTooLarge",
    "SafetensorsHeader",
    "UnsafePath",
    "check_weights_path",
    "clean_filename",
    "is_pickle_name",
    "ordinary_mode",
    "read_safetensors_header",
    "refuse_pickle",
    "safe_relative_path",
    "write_atomic",
]
