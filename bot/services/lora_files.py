"""Checking a LoRA file before anything is loaded from it.

An uploaded file goes through, in order, and is refused at the first problem:

1. its name: ``.ckpt``/``.pt``/``.bin``... are pickles and refused; only ``.safetensors``;
2. its size (``max_upload_mb``);
3. its header, read by the runner (:func:`runner.files.read_safetensors_header`, the
   ``safetensors`` library underneath): a pickle or zip renamed to ``.safetensors``, a
   header length past the end of the file or over :data:`MAX_HEADER_BYTES`, bad JSON, a
   tensor whose dtype, shape and offsets disagree, tensors that do not cover the data
   section exactly (truncated, or extra bytes);
4. the tensor count limit and floating-point tensors only;
5. the keys: every key must be LoRA weight for the UNet or the text encoder(s), in
   diffusers/peft format (``unet.<module>.lora_A.weight`` / ``lora_B``, also the older
   ``lora.down``/``lora.up`` and ``lora_linear_layer`` spellings; ``text_encoder.``,
   ``text_encoder_2.``) or in kohya/A1111 format (``lora_unet_<module>.lora_down.weight``
   / ``lora_up.weight`` / ``alpha``; ``lora_te_``, ``lora_te1_``, ``lora_te2_``), with
   matching down/up pairs of the same rank;
6. the base model family, from tensor shapes
   (:func:`runner.models.families.family_of_lora`), checked against the family of the
   model the user chose, if any.

Uploads are staged in a temporary file (the reader needs a path), which is renamed into
place by the caller or deleted: a refused file leaves nothing behind. The staging process
holds a lock on its file (:func:`bot.services.storage.lock_staging_file`), so a file left
by a killed process is told apart from one in use and removed at the next start.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.services.lora_file_errors import (
    BadHeader,
    FamilyConflict,
    FamilyUnknown,
    FileTooLarge,
    HeaderTooLarge,
    LoraFileError,
    NotALora,
    NotSafetensors,
    PickleFile,
    TooManyTensors,
    WrongFamily,
)
from bot.services.storage import (
    lock_staging_file,
    place_file,
    release_staging_file,
    sha256_file,
)
from runner.errors import ModelError, UnsafeFileError
from runner.files import HeaderTooLarge as _HeaderTooLarge
from runner.files import clean_filename, read_safetensors_header, refuse_pickle
from runner.models.families import LORA_FAMILIES, LoraFamilyConflict, family_of_lora, lora_family
from runner.models.layout import LORA_DIFFUSERS_KEY as _DIFFUSERS_KEY
from runner.models.layout import LORA_KOHYA_COMPONENTS as _KOHYA_COMPONENTS
from runner.models.layout import LORA_KOHYA_KEY as _KOHYA_KEY

MAX_HEADER_BYTES = 8 * 1024 * 1024
"""Largest safetensors header accepted. A full SDXL LoRA with kohya's training metadata
has well under 1 MB."""

MAX_TENSORS = 10_000
"""Most tensors accepted in one file. A LoRA on every layer of SDXL has about 3,000."""

_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# kohya's alpha is one number, which some tools (diffusers' converter) store as an integer.
_ALPHA_DTYPES = _FLOAT_DTYPES | {"I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64"}


# ------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LoraFileInfo:
    """What inspection found out about a valid LoRA file."""

    sha256: str
    size_bytes: int
    family: str
    """``sd1``, ``sd2`` or ``sdxl``."""
    family_evidence: str
    """How the family was decided, in words (for logs and ``easel lora list``)."""
    key_format: str
    """``diffusers`` or ``kohya``."""
    components: tuple[str, ...]
    """Which of ``unet``, ``text_encoder``, ``text_encoder_2`` the LoRA changes."""
    rank: int
    """The largest rank among its modules."""
    modules: int
    tensor_count: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class StagedLora:
    """An uploaded LoRA that passed inspection, waiting in a temporary file.

    Call :meth:`commit` to move it to its content-hash name, or :meth:`discard`; use it as
    a context manager to discard it whatever happens.
    """

    path: Path
    filename: str
    info: LoraFileInfo
    committed: bool = False
    """Whether :meth:`commit` moved the file to its place."""
    discarded: bool = False
    lock_fd: int | None = None
    """The staging lock held while the file waits (see the module docstring)."""

    def commit(self, target: Path) -> bool:
        """Move the file to ``target``; True when ``target`` was created by this call
        (False when the same file was already there)."""
        created = place_file(self.path, target, move=True)
        self.committed = True
        self._release()
        return created

    def discard(self) -> None:
        """Delete the temporary file (nothing happens after :meth:`commit`)."""
        if not self.committed and not self.discarded:
            self.path.unlink(missing_ok=True)
        self.discarded = True
        self._release()

    def _release(self) -> None:
        fd, self.lock_fd = self.lock_fd, None
        release_staging_file(fd)

    def __enter__(self) -> StagedLora:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


# ------------------------------------------------------------------------ inspection


def check_lora_filename(filename: str) -> str:
    """The file's base name, if its suffix says safetensors. Raises :class:`PickleFile`
    for pickle suffixes and :class:`NotSafetensors` for anything else."""
    base = clean_filename(filename)  # no NUL, control or bidi characters, no folders
    suffix = Path(base).suffix.lower()
    try:
        refuse_pickle(base, hint="Upload the .safetensors version of this LoRA instead.")
    except UnsafeFileError as exc:
        raise PickleFile(base, str(exc).removeprefix(f"{base}: ")) from None
    if suffix != ".safetensors":
        raise NotSafetensors(
            base,
            f"not a .safetensors file (suffix {suffix or 'none'!r}); LoRAs are accepted as .safetensors only",
        )
    return base


def stage_lora_upload(
    data: bytes,
    filename: str,
    staging_dir: Path,
    *,
    max_bytes: int,
    expected_family: str | None = None,
    model_name: str | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_tensors: int = MAX_TENSORS,
) -> StagedLora:
    """Check an uploaded LoRA (its bytes and the name the user gave the file) and keep it
    in a temporary file under ``staging_dir`` (same file system as the library, so that
    :meth:`StagedLora.commit` is a rename).

    ``expected_family`` is the family of the model the user chose (``model_name``, for
    messages): a LoRA of another family is refused; it also decides the family of a LoRA
    whose shapes and metadata do not tell. Raises a :class:`LoraFileError` subclass and
    leaves no file behind.
    """
    name = check_lora_filename(filename)
    if len(data) > max_bytes:
        raise FileTooLarge(name, len(data), max_bytes)
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".safetensors", dir=staging_dir)
    path = Path(tmp)
    lock_fd = None
    try:
        with os.fdopen(fd, "wb") as fh:
            lock_fd = lock_staging_file(path)
            fh.write(data)
        info = inspect_lora_file(
            path,
            display_name=name,
            max_bytes=max_bytes,
            expected_family=expected_family,
            model_name=model_name,
            max_header_bytes=max_header_bytes,
            max_tensors=max_tensors,
            sha256=hashlib.sha256(data).hexdigest(),
        )
    except BaseException:
        path.unlink(missing_ok=True)
        release_staging_file(lock_fd)
        raise
    return StagedLora(path=path, filename=name, info=info, lock_fd=lock_fd)


def inspect_lora_file(
    path: Path,
    *,
    display_name: str | None = None,
    max_bytes: int | None = None,
    expected_family: str | None = None,
    model_name: str | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_tensors: int = MAX_TENSORS,
    sha256: str | None = None,
) -> LoraFileInfo:
    """Check a LoRA file on disk (see the module docstring for every check) and describe
    it. ``display_name`` names it in messages (default: its file name). Reads the header
    only, plus the content once for the hash unless ``sha256`` is given."""
    path = Path(path)
    name = display_name or path.name
    check_lora_filename(name)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadHeader(name, f"cannot read the file: {exc.strerror or exc}") from None
    if max_bytes is not None and size > max_bytes:
        raise FileTooLarge(name, size, max_bytes)
    try:
        header = read_safetensors_header(path, max_header_bytes=max_header_bytes)
    except UnsafeFileError as exc:
        raise PickleFile(name, _reader_message(exc, path)) from None
    except _HeaderTooLarge as exc:
        raise HeaderTooLarge(name, exc.claimed, max_header_bytes) from None
    except ModelError as exc:
        raise BadHeader(name, _reader_message(exc, path)) from None
    if len(header.shapes) > max_tensors:
        raise TooManyTensors(name, len(header.shapes), max_tensors)
    if not header.shapes:
        raise NotALora(name, "the file holds no tensors")
    for key, dtype in header.dtypes.items():
        allowed = _ALPHA_DTYPES if key.endswith(".alpha") else _FLOAT_DTYPES
        if dtype not in allowed:
            raise NotALora(
                name, f"tensor {key!r} has dtype {dtype}; LoRA weights are floating point"
            )
    key_format, components, rank, modules = classify_lora_keys(header.shapes, name)
    family, evidence = detect_lora_family(header.shapes, header.metadata, name)
    if family is None:
        if expected_family is None:
            raise FamilyUnknown(
                name,
                "cannot tell which base model (SD1, SD2 or SDXL) this LoRA is for from its "
                "shapes or metadata; choose the model it is for",
            )
        family = lora_family(expected_family)
        evidence = f"taken from the chosen model {model_name or ''}".rstrip() + f" ({family})"
    if expected_family is not None and family != lora_family(expected_family):
        raise WrongFamily(name, family, lora_family(expected_family), model_name)
    return LoraFileInfo(
        sha256=sha256 or sha256_file(path),
        size_bytes=size,
        family=family,
        family_evidence=evidence,
        key_format=key_format,
        components=components,
        rank=rank,
        modules=modules,
        tensor_count=len(header.shapes),
        metadata=dict(header.metadata),
    )


def _reader_message(exc: Exception, path: Path) -> str:
    # The reader names the (temporary) path; the user knows the file by its own name.
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text.replace(str(path), "the file")


def classify_lora_keys(
    shapes: Mapping[str, Sequence[int]], filename: str = "<lora>"
) -> tuple[str, tuple[str, ...], int, int]:
    """``(key_format, components, rank, modules)`` for a LoRA's keys and shapes.

    Raises :class:`NotALora` when a key is not LoRA weight for the UNet or a text
    encoder, when formats are mixed, or when a module lacks its down or up matrix or
    their ranks differ.
    """
    formats: set[str] = set()
    parts: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    unknown: list[str] = []
    for key, shape in shapes.items():
        match = _DIFFUSERS_KEY.match(key)
        if match:
            formats.add("diffusers")
            component = match["component"]
            role = {"A": "down", "B": "up"}.get(
                match["ab"] or "", match["du"] or match["du2"] or "alpha"
            )
        else:
            match = _KOHYA_KEY.match(key)
            if not match:
                unknown.append(key)
                continue
            formats.add("kohya")
            component = _KOHYA_COMPONENTS[match["component"]]
            role = match["du"] or "alpha"
        module = parts.setdefault((component, match["module"]), {})
        if role in module:
            raise NotALora(filename, f"two {role} tensors for module {match['module']!r}")
        module[role] = tuple(int(d) for d in shape)
    if unknown:
        raise NotALora(filename, _describe_unknown(unknown, all_unknown=not parts))
    if len(formats) > 1:
        raise NotALora(
            filename, "mixes diffusers (unet./text_encoder.) and kohya (lora_unet_/lora_te_) keys"
        )
    rank = 0
    for (component, module), roles in parts.items():
        down, up = roles.get("down"), roles.get("up")
        label = f"{component} module {module!r}"
        if down is None or up is None:
            missing = "down (lora_A)" if down is None else "up (lora_B)"
            raise NotALora(filename, f"{label} has no {missing} matrix")
        if len(down) not in (2, 4) or len(up) not in (2, 4) or len(down) != len(up):
            raise NotALora(
                filename, f"{label} has down/up shapes {list(down)} and {list(up)}, not a LoRA pair"
            )
        if down[0] != up[1] or down[0] == 0:
            raise NotALora(filename, f"{label}: down rank {down[0]} does not match up rank {up[1]}")
        alpha = roles.get("alpha")
        if alpha is not None and math.prod(alpha) != 1:
            raise NotALora(
                filename, f"{label}: alpha should be one number, has shape {list(alpha)}"
            )
        rank = max(rank, down[0])
    components = tuple(
        c for c in ("unet", "text_encoder", "text_encoder_2") if any(k[0] == c for k in parts)
    )
    return formats.pop(), components, rank, len(parts)


def _describe_unknown(keys: list[str], *, all_unknown: bool) -> str:
    sample = ", ".join(repr(k) for k in sorted(keys)[:3])
    if all_unknown:
        if any(
            k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner."))
            for k in keys
        ):
            return f"this is a full checkpoint, not a LoRA (keys like {sample})"
        if any(re.search(r"\.(hada_|lokr_|oft_)|\.lora_mid\.", k) for k in keys):
            return f"this is a LyCORIS file (LoHa/LoKr/OFT), which easel does not load (keys like {sample})"
        return f"no LoRA keys for the UNet or text encoder in this file (keys like {sample})"
    return f"{len(keys)} key(s) are not LoRA weights for the UNet or text encoder, e.g. {sample}"


def detect_lora_family(
    shapes: Mapping[str, Sequence[int]],
    metadata: Mapping[str, str] | None = None,
    filename: str = "<lora>",
) -> tuple[str | None, str]:
    """``(family, evidence)`` of a LoRA (:func:`runner.models.families.family_of_lora`),
    raising :class:`FamilyConflict` when its shapes disagree."""
    try:
        return family_of_lora(shapes, metadata, filename)
    except LoraFamilyConflict as exc:
        raise FamilyConflict(filename, exc.detail) from None


__all__ = [
    "LORA_FAMILIES",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "BadHeader",
    "FamilyConflict",
    "FamilyUnknown",
    "FileTooLarge",
    "HeaderTooLarge",
    "LoraFileError",
    "LoraFileInfo",
    "NotALora",
    "NotSafetensors",
    "PickleFile",
    "StagedLora",
    "TooManyTensors",
    "WrongFamily",
    "check_lora_filename",
    "classify_lora_keys",
    "detect_lora_family",
    "inspect_lora_file",
    "stage_lora_upload",
]
