"""Checks across nodes: links between them, the nodes outputs need, and cycles.

``_id_order`` sorts node ids as ComfyUI does (numbers first), ``_ancestors`` finds the
nodes an output depends on, ``_check_link`` checks one ``[node_id, output_index]`` link and
``_cycles`` finds dependency cycles among resolved nodes, and ``_graph_issues`` runs a
node type's ``validate_graph`` (checks of literal inputs against the whole workflow).
"""

from __future__ import annotations

from typing import Any

from runner import types as T
from runner.nodes import Input, NodeType
from runner.validation.issues import ResolvedNode, ValidationIssue, _short


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


def _graph_issues(
    node_id: str, resolved: ResolvedNode, workflow: dict[str, Any]
) -> list[ValidationIssue]:
    """``custom_validation_failed`` issues from the node type's ``validate_graph`` (its
    literal inputs and the whole workflow); none when it has no such check."""
    node_type = resolved.node_type
    if node_type.validate_graph is None:
        return []
    try:
        problems = list(node_type.validate_graph(dict(resolved.literals), workflow))
    except Exception as exc:  # a plugin's check must not break validation
        problems = [(None, f"could not check the inputs: {type(exc).__name__}: {exc}")]
    return [
        ValidationIssue(
            "custom_validation_failed",
            message,
            node_id,
            node_type.name,
            input_name,
            resolved.literals.get(input_name) if input_name else None,
        )
        for input_name, message in problems
    ]
