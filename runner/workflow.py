"""Reading workflows in ComfyUI's API format, and applying ``--set`` overrides.

A workflow is a JSON object mapping node ids to ``{"class_type": ..., "inputs": {...}}``;
an input is a literal or a link ``[node_id, output_index]``. Structural problems inside
the object are left to validation, which reports them all at once; this module only
rejects what is not a workflow at all.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from runner.errors import WorkflowError

Workflow = dict[str, Any]

MAX_WORKFLOW_BYTES = 8 * 1024 * 1024


def load_workflow(source: str | Path | dict[str, Any]) -> Workflow:
    """A workflow from a dict, a path to a JSON file, or a JSON string.

    Accepts the API format, and also ``{"prompt": {...}}`` as ComfyUI's ``/prompt``
    endpoint takes it. Raises :class:`WorkflowError` naming the problem.
    """
    if isinstance(source, dict):
        data: Any = source
    else:
        text = _read_text(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{source}: " if isinstance(source, Path) else ""
            raise WorkflowError(
                f"{where}not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
    if (
        isinstance(data, dict)
        and isinstance(data.get("prompt"), dict)
        and "class_type" not in data["prompt"]
    ):
        data = data["prompt"]
    if not isinstance(data, dict):
        raise WorkflowError(f"a workflow must be a JSON object of nodes, got {type(data).__name__}")
    if "nodes" in data and "links" in data and isinstance(data.get("nodes"), list):
        raise WorkflowError(
            "this is ComfyUI's UI format (it has 'nodes' and 'links'); export it with "
            "'Export (API)' in ComfyUI and run that file"
        )
    return copy.deepcopy(data)


def _read_text(source: str | Path) -> str:
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return source
    path = Path(source)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise WorkflowError(f"workflow file not found: {path}") from exc
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow file {path}: {exc.strerror}") from exc
    if size > MAX_WORKFLOW_BYTES:
        raise WorkflowError(
            f"workflow file {path} is {size} bytes, more than the {MAX_WORKFLOW_BYTES} allowed"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"workflow file {path} is not UTF-8 text") from exc
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow file {path}: {exc.strerror}") from exc


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"NODE.INPUT=VALUE"`` -> ``(node, input, value)``; the value is JSON if it parses."""
    target, sep, raw = text.partition("=")
    node_id, dot, input_name = target.strip().partition(".")
    if not sep or not dot or not node_id or not input_name:
        raise WorkflowError(f"override {text!r} is not of the form NODE.INPUT=VALUE")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, input_name, value


def apply_overrides(
    workflow: Workflow, overrides: list[str] | list[tuple[str, str, Any]]
) -> Workflow:
    """A copy of ``workflow`` with each override's input set; the node must exist."""
    out = copy.deepcopy(workflow)
    for item in overrides:
        node_id, input_name, value = parse_override(item) if isinstance(item, str) else item
        node = out.get(node_id)
        if not isinstance(node, dict):
            raise WorkflowError(
                f"override {node_id}.{input_name}: there is no node {node_id!r} in the workflow"
            )
        inputs = node.setdefault("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(
                f"override {node_id}.{input_name}: node {node_id!r} has malformed inputs"
            )
        inputs[input_name] = value
    return out
