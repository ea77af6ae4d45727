"""An API-format workflow drawn as ComfyUI's UI format (schema version 0.4), with an
automatic layout, for the ``workflow`` chunk of saved PNGs: dropped onto ComfyUI, the
image opens as a readable graph.

Layout: each node goes in the column of its depth (the longest chain of links from a
node with no linked inputs, the loaders, so every link points right), nodes in a column
stacked top to bottom in the order of their consumers' rows. Slots and widget values
follow the node types' declared inputs, so :func:`runner.ui_format.ui_to_api` reads the
graph back to the same API workflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.nodes import NodeType
from runner.ui_format import has_control_widget, widget_inputs

COLUMN_WIDTH = 360
"""Horizontal distance between columns (a node is NODE_WIDTH wide)."""
NODE_WIDTH = 315
ROW_GAP = 40
SLOT_HEIGHT = 22
WIDGET_HEIGHT = 26
TITLE_HEIGHT = 30
MULTILINE_HEIGHT = 90
ORIGIN = (50, 50)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _ui_id(node_id: str) -> int | str:
    return int(node_id) if node_id.isdigit() else node_id


def _depths(workflow: Mapping[str, Any]) -> dict[str, int]:
    """Column per node: the longest chain of links leading into it (cycles cut)."""
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(node_id: str) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in visiting:  # a cycle: validation reports it; just lay it out
            return 0
        visiting.add(node_id)
        best = 0
        for value in (workflow[node_id].get("inputs") or {}).values():
            if _is_link(value) and str(value[0]) in workflow:
                best = max(best, visit(str(value[0])) + 1)
        visiting.discard(node_id)
        depth[node_id] = best
        return best

    for node_id in workflow:
        visit(node_id)
    return depth


def _node_height(n_slots: int, widgets: list, multiline: int) -> int:
    return TITLE_HEIGHT + SLOT_HEIGHT * n_slots + WIDGET_HEIGHT * len(widgets) + multiline


def api_to_ui(workflow: Mapping[str, Any], node_types: Mapping[str, NodeType]) -> dict[str, Any]:
    """The UI-format graph (version 0.4) for an API-format ``workflow``.

    Each node gets ``pos``/``size``, its link inputs (declared non-widget inputs, and
    widget inputs that are linked, marked with ``widget``), its declared outputs with the
    links leaving them, and ``widgets_values`` for its widget inputs in the frontend's
    order (a ``"fixed"`` control value after seed widgets, as the frontend stores it).
    Node types easel does not know keep their literal inputs as a widgets dict."""
    ids = [str(k) for k in workflow]
    entries = {str(k): v for k, v in workflow.items()}
    links: list[list[Any]] = []
    link_ids: dict[tuple[str, int], list[int]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    heights: dict[str, int] = {}
    for node_id in ids:
        entry = entries[node_id] if isinstance(entries[node_id], dict) else {}
        class_type = str(entry.get("class_type", ""))
        given = entry.get("inputs") if isinstance(entry.get("inputs"), dict) else {}
        node_type = node_types.get(class_type)
        slots: list[dict[str, Any]] = []
        widgets_values: list[Any] | dict[str, Any]
        multiline = 0
        if node_type is not None:
            widget_specs = widget_inputs(node_type)
            widget_names = {w.name for w in widget_specs}
            for spec in node_type.inputs:
                value = given.get(spec.name)
                if spec.name in widget_names and not _is_link(value):
                    continue
                slot: dict[str, Any] = {"name": spec.name, "type": spec.type, "link": None}
                if spec.name in widget_names:
                    slot["widget"] = {"name": spec.name}
                slots.append(slot)
            widgets_values = []
            for spec in widget_specs:
                value = given.get(spec.name, spec.default)
                if _is_link(value):
                    value = spec.default
                widgets_values.append(value)
                if has_control_widget(spec):
                    widgets_values.append("fixed")
                if spec.multiline:
                    multiline += MULTILINE_HEIGHT
            outputs = list(node_type.outputs)
            names = list(node_type.output_names or [o for o in node_type.outputs])
            n_widgets = len(widgets_values)
        else:
            for name, value in given.items():
                if _is_link(value):
                    slots.append({"name": name, "type": "*", "link": None})
            widgets_values = {k: v for k, v in given.items() if not _is_link(v)}
            outputs, names = [], []
            n_widgets = len(widgets_values)
        for slot in slots:
            value = given.get(slot["name"])
            if _is_link(value) and str(value[0]) in entries:
                source, index = str(value[0]), value[1]
                link_id = len(links) + 1
                source_type = _output_type(entries[source], index, node_types)
                links.append(
                    [
                        link_id,
                        _ui_id(source),
                        index,
                        _ui_id(node_id),
                        slots.index(slot),
                        source_type or slot["type"],
                    ]
                )
                slot["link"] = link_id
                link_ids.setdefault((source, index), []).append(link_id)
        ui_node: dict[str, Any] = {
            "id": _ui_id(node_id),
            "type": class_type,
            "pos": [0, 0],
            "size": [NODE_WIDTH, 0],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": slots,
            "outputs": [
                {"name": name, "type": kind, "links": [], "slot_index": i}
                for i, (name, kind) in enumerate(zip(names, outputs, strict=False))
            ],
            "properties": {"Node name for S&R": class_type},
            "widgets_values": widgets_values,
        }
        meta = entry.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("title"), str):
            ui_node["title"] = meta["title"]
        nodes[node_id] = ui_node
        heights[node_id] = _node_height(max(len(slots), len(outputs)), [0] * n_widgets, multiline)
    for (source, index), ids_out in link_ids.items():
        outs = nodes[source]["outputs"]
        if index < len(outs):
            outs[index]["links"] = ids_out
    _place(entries, nodes, heights)
    order = sorted(nodes, key=lambda n: (nodes[n]["pos"][0], nodes[n]["pos"][1]))
    for i, node_id in enumerate(order):
        nodes[node_id]["order"] = i
    numeric = [int(n) for n in ids if n.isdigit()]
    return {
        "last_node_id": max(numeric, default=len(ids)),
        "last_link_id": len(links),
        "nodes": [nodes[n] for n in ids],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}, "generator": "easel"},
        "version": 0.4,
    }


def _output_type(entry: Any, index: int, node_types: Mapping[str, NodeType]) -> str | None:
    if not isinstance(entry, dict):
        return None
    node_type = node_types.get(str(entry.get("class_type", "")))
    if node_type is None or index >= len(node_type.outputs):
        return None
    return node_type.outputs[index]


def _place(
    workflow: Mapping[str, Any], nodes: dict[str, dict[str, Any]], heights: dict[str, int]
) -> None:
    """Columns by depth; within a column, rows follow the average row of the consumers
    (right to left), so links stay short and do not cross much."""
    depth = _depths(workflow)
    columns: dict[int, list[str]] = {}
    for node_id in nodes:
        columns.setdefault(depth.get(node_id, 0), []).append(node_id)
    consumers: dict[str, list[str]] = {n: [] for n in nodes}
    for node_id, entry in workflow.items():
        for value in (entry.get("inputs") or {}).values() if isinstance(entry, dict) else []:
            if _is_link(value) and str(value[0]) in consumers:
                consumers[str(value[0])].append(str(node_id))
    rank: dict[str, float] = {}
    for col in sorted(columns, reverse=True):
        members = columns[col]
        for i, node_id in enumerate(members):
            placed = [rank[c] for c in consumers[node_id] if c in rank]
            rank[node_id] = (sum(placed) / len(placed)) if placed else float(i)
        members.sort(key=lambda n: (rank[n], _sort_id(n)))
        for i, node_id in enumerate(members):
            rank[node_id] = float(i)
    for col, members in columns.items():
        y = ORIGIN[1]
        for node_id in members:
            nodes[node_id]["pos"] = [ORIGIN[0] + col * COLUMN_WIDTH, y]
            nodes[node_id]["size"] = [NODE_WIDTH, heights[node_id]]
            y += heights[node_id] + ROW_GAP


def _sort_id(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
