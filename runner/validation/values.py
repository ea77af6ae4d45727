"""Checks on one node's inputs: types, ranges and lengths, choices and custom checks.

:func:`convert_literal` converts a literal to its input's declared type; ``_check_node``
checks every input of one node (links through :mod:`runner.validation.graph`), then the
node type's own ``validate``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from runner import types as T
from runner.nodes import Input, NodeType
from runner.validation.graph import _check_link
from runner.validation.issues import ResolvedNode, ValidationIssue, _short

if TYPE_CHECKING:
    from runner.environment import Environment


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
