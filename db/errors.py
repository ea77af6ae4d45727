"""The data layer's exception tree. Each error carries the offending name or value;
the bot and the command line turn them into friendly sentences."""

from __future__ import annotations

from typing import Any


class DbError(Exception):
    """Base class of every error the data layer raises on purpose."""


class NotFound(DbError):
    """No such row, or one the caller may not see (another user's private data is
    reported as missing, so its existence does not leak)."""

    def __init__(self, kind: str, value: Any):
        self.kind = kind
        self.value = value
        super().__init__(f"{kind} {value!r} not found")


class NameTaken(DbError):
    """The owner already has something of this kind under this name."""

    def __init__(self, kind: str, name: str, owner_id: int | None = None):
        self.kind = kind
        self.name = name
        self.owner_id = owner_id
        super().__init__(f"{kind} name {name!r} is already taken")


class InvalidName(DbError):
    """A name that may not be used (empty, too long, path separators, odd characters)."""

    def __init__(self, kind: str, name: str, reason: str):
        self.kind = kind
        self.name = name
        self.reason = reason
        super().__init__(f"invalid {kind} name {name!r}: {reason}")


class InvalidValue(DbError):
    """A field given a value it cannot hold."""

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid value for {field}: {value!r} ({reason})")


class Forbidden(DbError):
    """The caller may see the row but not change it (e.g. another user's shared LoRA)."""

    def __init__(self, action: str, kind: str, value: Any):
        self.action = action
        self.kind = kind
        self.value = value
        super().__init__(f"not allowed to {action} {kind} {value!r}")


class FamilyMismatch(DbError):
    """A LoRA made for one base model family requested with a model of another."""

    def __init__(self, name: str, lora_family: str, model_family: str):
        self.name = name
        self.lora_family = lora_family
        self.model_family = model_family
        super().__init__(
            f"LoRA {name!r} is for {lora_family} models and cannot be used with a "
            f"{model_family} model"
        )


class InvalidTransition(DbError):
    """A status change that is not allowed (e.g. a finished job started again)."""

    def __init__(self, kind: str, id: int, current: str, requested: str):
        self.kind = kind
        self.id = id
        self.current = current
        self.requested = requested
        super().__init__(f"{kind} {id} is {current} and cannot become {requested}")


__all__ = [
    "DbError",
    "FamilyMismatch",
    "Forbidden",
    "InvalidName",
    "InvalidTransition",
    "InvalidValue",
    "NameTaken",
    "NotFound",
]
