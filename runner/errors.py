"""The runner's exception tree. Each error carries the offending names and values;
the bot and the command line turn them into friendly sentences."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.validation import ValidationIssue


class EaselError(Exception):
    """Base class of every error the runner raises on purpose."""


class WorkflowError(EaselError):
    """A workflow could not be read (not JSON, not an object, unreadable file)."""


class WorkflowInvalid(EaselError):
    """Validation found problems; ``issues`` lists every one of them."""

    def __init__(self, issues: list[ValidationIssue]):
        self.issues = list(issues)
        lines = [f"workflow has {len(self.issues)} problem(s):"] + [f"  - {i}" for i in self.issues]
        super().__init__("\n".join(lines))


class NodeExecutionError(EaselError):
    """A node raised while running. ``node_id`` and ``class_type`` say which one."""

    def __init__(self, node_id: str, class_type: str, message: str):
        self.node_id = node_id
        self.class_type = class_type
        self.message = message
        super().__init__(f"node {node_id} ({class_type}) failed: {message}")


class JobCancelled(EaselError):
    """The job was cancelled; raised between nodes or between sampling steps."""


class ModelError(EaselError):
    """A model could not be found or loaded (missing file, unsafe format, bad weights)."""


class UnsafeFileError(ModelError):
    """A weights file in a format that can run code when loaded (pickle), refused."""


class TemplateError(EaselError):
    """A request could not be turned into a workflow (unknown template, bad option)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the device (or the host) ran out of memory: torch's
    ``OutOfMemoryError`` (CUDA, MPS), Python's ``MemoryError``, or a runtime error whose
    message says so (how some backends report it)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
