"""What validation reports: the ComfyUI error types, one issue, and the result.

:class:`ValidationIssue` is one problem (its ComfyUI error type, a sentence and where it
is), :class:`ResolvedNode` a node that passed, :class:`ValidationResult` both together with
the output nodes; ``_jsonable`` and ``_short`` show a bad value in an issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.nodes import NodeType

ERROR_TYPES = (
    "invalid_prompt",
    "prompt_no_outputs",
    "required_input_missing",
    "bad_linked_input",
    "return_type_mismatch",
    "invalid_input_type",
    "value_smaller_than_min",
    "value_bigger_than_max",
    "value_not_in_list",
    "custom_validation_failed",
    "dependency_cycle",
)


@dataclass
class ValidationIssue:
    """One problem: its ComfyUI error type, a sentence, and where it is."""

    type: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    value: Any = None

    def __str__(self) -> str:
        where = ""
        if self.node_id is not None:
            where = f"node {self.node_id}"
            if self.class_type:
                where += f" ({self.class_type})"
            if self.input_name:
                where += f", input '{self.input_name}'"
            where += ": "
        return f"{where}{self.message} [{self.type}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "node_id": self.node_id,
            "class_type": self.class_type,
            "input_name": self.input_name,
            "value": _jsonable(self.value),
        }


@dataclass
class ResolvedNode:
    """A node that passed validation: literal inputs converted, links as (node, index)."""

    node_id: str
    node_type: NodeType
    literals: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass
class ValidationResult:
    issues: list[ValidationIssue]
    nodes: dict[str, ResolvedNode]
    outputs: list[str]

    @property
    def ok(self) -> bool:
        return not self.issues


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
