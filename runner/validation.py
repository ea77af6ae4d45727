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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner import types as T
from runner.nodes import Input, NodeType

if TYPE_CHECKING:
    from runner.environment import Environment

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


def convert_literal(spec: Input, value: Any) -> Any:
    """``value`` converted to ``spec``'s type; raises ValueError with a sentence if it can't be."""
    kind = spec.type
    if kind == T.INT:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_short(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {_short(value)}")
    if kind == T.FLOAT:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {_short(value)}")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {_short(value)}") from None
        else:
            raise ValueError(f"expected a number, got {_short(value)}")
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {_short(value)}")
        return number
    if kind == T.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"expected true or false, got {_short(value)}")
    if kind in (T.STRING, T.COMBO):
        # Text only: a number where text belongs is a mistake in the workflow (a prompt of
        # 42 would be encoded as "42" and then break what reads the literal), so say so.
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(
                f"expected text, got the number {_short(value)} (write it in quotes to mean the text)"
            )
        raise ValueError(f"expected text, got {_short(value)}")
    raise ValueError(
        f"a {kind} input needs a link [node_id, output_index], got the literal {_short(value)}"
    )


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


def _id_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isascii() and node_id.isdigit() else (1, node_id)


def _ancestors(
    inputs_of: dict[str, dict[str, Any]], present: set[str], outputs: list[str]
) -> set[str]:
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        if node_id not in inputs_of:
            continue
        for value in inputs_of[node_id].values():
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], (str, int))
                and not isinstance(value[0], bool)
            ):
                source = str(value[0])
                if source in present and source not in seen:
                    stack.append(source)
    return seen


def _check_node(
    node_id: str,
    node_type: NodeType,
    inputs: dict[str, Any],
    present: set[str],
    known: dict[str, NodeType],
    env: Environment | None,
) -> tuple[list[ValidationIssue], ResolvedNode]:
    issues: list[ValidationIssue] = []
    resolved = ResolvedNode(node_id, node_type)
    class_type = node_type.name

    def problem(kind: str, message: str, spec: Input, value: Any) -> None:
        issues.append(ValidationIssue(kind, message, node_id, class_type, spec.name, value))

    for spec in node_type.inputs:
        if spec.name not in inputs:
            # As in ComfyUI, a required input must be given even when it has a default
            # (a workflow without a width must not silently run at 512); only an optional
            # input falls back to its default.
            if spec.required:
                problem(
                    "required_input_missing",
                    f"required input '{spec.name}' ({spec.type}) is missing",
                    spec,
                    None,
                )
            elif spec.type in T.PRIMITIVES and spec.default is not None:
                resolved.literals[spec.name] = spec.default
            continue
        value = inputs[spec.name]
        if isinstance(value, list):
            _check_link(node_id, spec, value, present, known, problem, resolved)
            continue
        if spec.type not in T.PRIMITIVES:
            problem(
                "invalid_input_type",
                f"a {spec.type} input needs a link [node_id, output_index], got the literal {_short(value)}",
                spec,
                value,
            )
            continue
        try:
            converted = convert_literal(spec, value)
        except ValueError as exc:
            problem(
                "invalid_input_type",
                f"cannot use {_short(value)} as {spec.type}: {exc}",
                spec,
                value,
            )
            continue
        if not _check_range(spec, converted, value, env, problem):
            continue
        try:
            allowed = spec.allowed(env) if spec.check is None else None  # a check is authoritative
            message = (
                spec.check(converted, env) if spec.check is not None and env is not None else None
            )
        except Exception as exc:  # a plugin's choices or check must not break validation
            problem(
                "value_not_in_list",
                f"could not check {_short(value)}: {type(exc).__name__}: {exc}",
                spec,
                value,
            )
            continue
        if allowed is not None and converted not in allowed:
            shown = ", ".join(allowed[:40]) + (" ..." if len(allowed) > 40 else "")
            problem(
                "value_not_in_list",
                f"{_short(value)} is not one of the allowed values: {shown or '(none available)'}",
                spec,
                value,
            )
            continue
        if message:
            # A COMBO's check says the value is not one it accepts; on other inputs (a
            # filename_prefix) it is a custom check, as ComfyUI's VALIDATE_INPUTS.
            kind = "value_not_in_list" if spec.type == T.COMBO else "custom_validation_failed"
            problem(kind, message, spec, value)
            continue
        resolved.literals[spec.name] = converted

    if not issues and node_type.validate is not None:
        try:
            problems = list(node_type.validate(dict(resolved.literals)))
        except Exception as exc:  # a plugin's check must not break validation
            problems = [(None, f"could not check the inputs: {type(exc).__name__}: {exc}")]
        for input_name, message in problems:
            issues.append(
                ValidationIssue(
                    "custom_validation_failed",
                    message,
                    node_id,
                    class_type,
                    input_name,
                    resolved.literals.get(input_name),
                )
            )
    return issues, resolved


def _check_range(spec: Input, converted: Any, raw: Any, env: Environment | None, problem) -> bool:
    if spec.type == T.STRING:
        return _check_length(spec, converted, raw, env, problem)
    if spec.type not in (T.INT, T.FLOAT):
        return True
    if spec.min is not None and converted < spec.min:
        problem(
            "value_smaller_than_min",
            f"{_short(raw)} is smaller than the minimum {_num(spec.min)}",
            spec,
            raw,
        )
        return False
    maximum = spec.effective_max(env)
    if maximum is not None and converted > maximum:
        why = (
            f" (the configured limit {spec.limit})"
            if spec.limit and env is not None and maximum != spec.max
            else ""
        )
        problem(
            "value_bigger_than_max",
            f"{_short(raw)} is bigger than the maximum {_num(maximum)}{why}",
            spec,
            raw,
        )
        return False
    return True


def _check_length(spec: Input, text: str, raw: Any, env: Environment | None, problem) -> bool:
    """A STRING's ``max`` (or configured ``limit``, such as max_prompt_chars) is its length."""
    maximum = spec.effective_max(env)
    if maximum is None or len(text) <= maximum:
        return True
    why = f" (the configured limit {spec.limit})" if spec.limit and env is not None else ""
    problem(
        "value_bigger_than_max",
        f"the text is {len(text)} characters long, more than the {_num(maximum)} allowed{why}",
        spec,
        text[:80] + "..." if len(text) > 80 else text,
    )
    return False


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _check_link(
    node_id,
    spec: Input,
    value: list,
    present: set[str],
    known: dict[str, NodeType],
    problem,
    resolved: ResolvedNode,
) -> None:
    if not (
        len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        problem(
            "bad_linked_input",
            f"a link must be [node_id, output_index], got {_short(value)}",
            spec,
            value,
        )
        return
    source, index = str(value[0]), value[1]
    if source not in present:
        problem(
            "bad_linked_input",
            f"links to node {source!r}, which is not in the workflow",
            spec,
            value,
        )
        return
    source_type = known.get(source)
    if source_type is None:
        problem(
            "bad_linked_input", f"links to node {source!r}, which is itself invalid", spec, value
        )
        return
    if index < 0 or index >= len(source_type.outputs):
        problem(
            "bad_linked_input",
            f"links to output {index} of node {source} ({source_type.name}), which has {len(source_type.outputs)} output(s)",
            spec,
            value,
        )
        return
    given = source_type.outputs[index]
    accepted = {spec.type}
    if spec.type == T.COMBO:
        accepted |= {T.STRING}
    if given not in accepted and "*" not in (given, spec.type):
        problem(
            "return_type_mismatch",
            f"expects {spec.type} but output {index} of node {source} ({source_type.name}) is {given}",
            spec,
            value,
        )
        return
    resolved.links[spec.name] = (source, index)


def _cycles(nodes: dict[str, ResolvedNode]) -> list[list[str]]:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(nodes, WHITE)
    found: list[list[str]] = []
    for start in sorted(nodes, key=_id_order):
        if colour[start] != WHITE:
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [
            (
                start,
                sorted({s for s, _ in nodes[start].links.values() if s in nodes}, key=_id_order),
            )
        ]
        colour[start] = GREY
        path.append(start)
        while stack:
            current, todo = stack[-1]
            if todo:
                nxt = todo.pop(0)
                if colour[nxt] == GREY:
                    found.append(path[path.index(nxt) :])
                elif colour[nxt] == WHITE:
                    colour[nxt] = GREY
                    path.append(nxt)
                    stack.append(
                        (
                            nxt,
                            sorted(
                                {s for s, _ in nodes[nxt].links.values() if s in nodes},
                                key=_id_order,
                            ),
                        )
                    )
            else:
                colour[current] = BLACK
                path.pop()
                stack.pop()
    return found
