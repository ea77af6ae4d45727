"""Workflow validation before anything loads.

Every problem is reported at once, each naming the node id, the input and the bad
value, with ComfyUI's error types so people who know ComfyUI recognise them:

``invalid_prompt``, ``prompt_no_outputs``, ``required_input_missing``,
``bad_linked_input``, ``return_type_mismatch``, ``invalid_input_type``,
``value_smaller_than_min``, ``value_bigger_than_max``, ``value_not_in_list``,
``custom_validation_failed`` and ``dependency_cycle``.

Validation never raises for a malformed workflow: :func:`validate` returns the issues
and, for nodes without issues, their inputs converted to the declared types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runner.nodes import NodeType
from runner.validation.graph import _ancestors, _cycles, _graph_issues, _id_order
from runner.validation.issues import (
    ERROR_TYPES,
    ResolvedNode,
    ValidationIssue,
    ValidationResult,
    _short,
)
from runner.validation.values import _check_node, convert_literal

if TYPE_CHECKING:
    from runner.environment import Environment

__all__ = [
    "ERROR_TYPES",
    "ResolvedNode",
    "ValidationIssue",
    "ValidationResult",
    "convert_literal",
    "validate",
]


def validate(
    workflow: Any, node_types: Mapping[str, NodeType], env: Environment | None = None
) -> ValidationResult:
    """Check ``workflow`` against the registered ``node_types``; never raises for bad input."""
    issues: list[ValidationIssue] = []
    nodes: dict[str, ResolvedNode] = {}
    if not isinstance(workflow, dict):
        issues.append(
            ValidationIssue(
                "invalid_prompt",
                f"a workflow must be an object of nodes, got {type(workflow).__name__}",
            )
        )
        return ValidationResult(issues, nodes, [])
    if not workflow:
        issues.append(ValidationIssue("prompt_no_outputs", "the workflow has no nodes"))
        return ValidationResult(issues, nodes, [])

    # Pass 1: every node must be an object with a known class_type (as ComfyUI checks first).
    # Node ids are compared as strings (links name them so); a node may omit "inputs".
    known: dict[str, NodeType] = {}
    inputs_of: dict[str, dict[str, Any]] = {}
    present: set[str] = set()
    for raw_id, entry in workflow.items():
        node_id = str(raw_id)
        if node_id in present:
            issues.append(
                ValidationIssue(
                    "invalid_prompt", f"node id {node_id!r} is given twice", node_id, value=raw_id
                )
            )
            continue
        present.add(node_id)
        if not isinstance(entry, dict):
            issues.append(
                ValidationIssue(
                    "invalid_prompt",
                    f"node must be an object, got {_short(entry)}",
                    node_id,
                    value=entry,
                )
            )
            continue
        class_type = entry.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            issues.append(
                ValidationIssue(
                    "invalid_prompt",
                    "node is missing the class_type property",
                    node_id,
                    value=class_type,
                )
            )
            continue
        node_type = node_types.get(class_type)
        if node_type is None:
            # The plugin host notes the node types of plugins switched off (a plain dict).
            off = (getattr(env, "disabled_node_types", None) or {}).get(class_type)
            hint = (
                f"it comes from the plugin {off!r}, which is disabled: enable it (/plugin enable {off})"
                if off
                else "`easel nodes` lists the node types available"
            )
            issues.append(
                ValidationIssue(
                    "invalid_prompt",
                    f"unknown node type {class_type!r}; {hint}",
                    node_id,
                    class_type,
                    value=class_type,
                )
            )
            continue
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict):
            issues.append(
                ValidationIssue(
                    "invalid_prompt",
                    f"inputs must be an object, got {_short(inputs)}",
                    node_id,
                    class_type,
                    value=inputs,
                )
            )
            continue
        known[node_id] = node_type
        inputs_of[node_id] = inputs

    outputs = sorted((nid for nid, nt in known.items() if nt.output_node), key=_id_order)
    if not outputs:
        issues.append(
            ValidationIssue(
                "prompt_no_outputs",
                "the workflow has no output node (such as SaveImage), so nothing would be produced",
            )
        )

    # Pass 2: inputs of every node an output needs (every node when there is no output).
    to_check = _ancestors(inputs_of, present, outputs) if outputs else set(known)
    for node_id in sorted(to_check, key=_id_order):
        node_type = known.get(node_id)
        if node_type is None:
            continue
        node_issues, resolved = _check_node(
            node_id, node_type, inputs_of[node_id], present, known, env
        )
        if not node_issues:
            node_issues = _graph_issues(node_id, resolved, workflow)
        issues.extend(node_issues)
        if not node_issues:
            nodes[node_id] = resolved

    # Pass 3: cycles among the nodes that resolved.
    for cycle in _cycles(nodes):
        first = cycle[0]
        issues.append(
            ValidationIssue(
                "dependency_cycle",
                "nodes depend on each other in a cycle: " + " -> ".join(cycle + [first]),
                first,
                nodes[first].node_type.name,
            )
        )
    return ValidationResult(issues, nodes, outputs)
