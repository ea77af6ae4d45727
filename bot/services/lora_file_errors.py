"""The errors a LoRA file is refused with (:mod:`bot.services.lora_files`), one class per
reason, each naming the file as the user gave it."""

from __future__ import annotations

from bot.services.errors import ServiceError


class LoraFileError(ServiceError):
    """A LoRA file refused before anything was stored. ``filename`` is the name the user
    gave it; the message says what is wrong."""

    def __init__(self, filename: str, message: str):
        self.filename = filename
        super().__init__(f"{filename}: {message}")


class NotSafetensors(LoraFileError):
    """The file is not in the safetensors format (by its name)."""


class PickleFile(LoraFileError):
    """The file is a Python pickle (``.ckpt`` and friends, or one renamed): refused,
    since loading a pickle can run code."""


class FileTooLarge(LoraFileError):
    """The file is larger than ``max_upload_mb``."""

    def __init__(self, filename: str, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(
            filename, f"the file is {size / 1e6:.1f} MB, more than the {limit / 1e6:.1f} MB allowed"
        )


class BadHeader(LoraFileError):
    """The safetensors header is missing, truncated, not JSON, or describes tensors the
    file does not hold."""


class HeaderTooLarge(LoraFileError):
    """The header length field claims more than :data:`MAX_HEADER_BYTES`: whatever the
    file is, it is not a LoRA (a LoRA's header is small), so the message says that
    rather than quote the absurd length (kept in ``claimed`` for the log)."""

    def __init__(self, filename: str, claimed: int, limit: int):
        self.claimed = claimed
        self.limit = limit
        super().__init__(
            filename, "this is not a LoRA file (its start does not read as a safetensors file)"
        )


class TooManyTensors(LoraFileError):
    """The file holds more than :data:`MAX_TENSORS` tensors."""

    def __init__(self, filename: str, count: int, limit: int):
        self.count = count
        self.limit = limit
        super().__init__(filename, f"the file holds {count} tensors, more than the {limit} allowed")


class NotALora(LoraFileError):
    """The keys are not (only) LoRA weights for the UNet or text encoders."""


class FamilyUnknown(LoraFileError):
    """Neither the shapes nor the metadata tell which base model the LoRA is for, and no
    model was chosen."""


class FamilyConflict(LoraFileError):
    """The shapes point at different base model families."""


class WrongFamily(LoraFileError):
    """The LoRA is for another base model family than the model chosen for it."""

    def __init__(self, filename: str, family: str, expected: str, model: str | None = None):
        self.family = family
        self.expected = expected
        self.model = model
        target = f"{model!r}, a {expected} model" if model else f"{expected} models"
        super().__init__(
            filename, f"this LoRA is for {family} models and cannot be used with {target}"
        )


__all__ = [
    "BadHeader",
    "FamilyConflict",
    "FamilyUnknown",
    "FileTooLarge",
    "HeaderTooLarge",
    "LoraFileError",
    "NotALora",
    "NotSafetensors",
    "PickleFile",
    "TooManyTensors",
    "WrongFamily",
]
