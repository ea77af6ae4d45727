"""Reading workflows (ComfyUI's API or UI format, JSON or in an image), and applying
``--set`` overrides.

A workflow is a JSON object mapping node ids to ``{"class_type": ..., "inputs": {...}}``;
an input is a literal or a link ``[node_id, output_index]``. Structural problems inside
the object are left to validation, which reports them all at once; this module only
rejects what is not a workflow at all.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import WorkflowError
from runner.nodes import NodeType
from runner.ui_format import is_ui_workflow, ui_to_api

Workflow = dict[str, Any]

MAX_WORKFLOW_BYTES = 8 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest image file read for its embedded workflow (only its text chunks are parsed)."""


def load_workflow(
    source: str | Path | dict[str, Any], node_types: Mapping[str, NodeType] | None = None
) -> Workflow:
    """A workflow from a dict, a path to a JSON file or an image, or a JSON string.

    Accepts the API format, ``{"prompt": {...}}`` as ComfyUI's ``/prompt`` endpoint
    takes it, ComfyUI's UI format (what its Save writes; converted with the node types'
    input specs, so ``node_types`` must be given), and PNG or WebP images carrying a
    ``prompt`` (preferred) or ``workflow`` chunk as ComfyUI and easel write them.
    Raises :class:`WorkflowError` naming the problem.
    """
    if isinstance(source, dict):
        data: Any = source
    elif _is_image_path(source):
        data = _workflow_from_image(Path(source))
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
    if is_ui_workflow(data):
        if node_types is None:
            raise WorkflowError(
                "this is ComfyUI's UI format (it has 'nodes' and 'links'); converting it needs "
                "the node types (load_workflow(..., node_types=env.node_types)), or export it "
                "with 'Export (API)' in ComfyUI"
            )
        return ui_to_api(data, node_types)
    return copy.deepcopy(data)


def _is_image_path(source: str | Path) -> bool:
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return False
    path = Path(source)
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return head.startswith(PNG_SIGNATURE) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _workflow_from_image(path: Path) -> Any:
    """The workflow an image carries: its ``prompt`` chunk (API format), else its
    ``workflow`` chunk (UI format), parsed from JSON."""
    from runner.images import image_workflow_text  # Pillow: only for images

    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise WorkflowError(
                f"image {path} is {size} bytes, more than the {MAX_IMAGE_BYTES} allowed"
            )
        chunks = image_workflow_text(path.read_bytes())
    except OSError as exc:
        raise WorkflowError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise WorkflowError(f"image {path}: {exc}") from exc
    for key in ("prompt", "workflow"):
        text = chunks.get(key)
        if not text:
            continue
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkflowError(
                f"image {path}: its {key!r} chunk is not valid JSON ({exc.msg})"
            ) from exc
    if "parameters" in chunks:
        raise WorkflowError(
            f"image {path} carries only A1111 'parameters', no ComfyUI workflow "
            "('prompt' or 'workflow' chunk)"
        )
    raise WorkflowError(f"image {path} carries no workflow ('prompt' or 'workflow' chunk)")


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
