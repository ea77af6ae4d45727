"""ComfyUI's UI format (what its Save writes) converted to the API format easel runs.

The UI format is LiteGraph's serialised graph: ``nodes`` (each with ``id``, ``type``,
``mode``, ``inputs`` holding link ids, ``outputs``, ``widgets_values``) and ``links``
(``[id, from_node, from_slot, to_node, to_slot, type]`` in version 0.4, objects in
version 1). ComfyUI's frontend turns it into the API format when it queues a prompt
(``graphToPrompt`` in ComfyUI_frontend's ``src/utils/executionUtil.ts`` and the link
resolution of ``ExecutableNodeDTO``); this module does the same, on its own code:

- widget values are matched to the node type's declared widget inputs (INT, FLOAT,
  STRING, BOOLEAN, COMBO), required inputs first, in declaration order; the
  ``control_after_generate`` value ("fixed", "randomize"...) that the frontend stores
  after a seed widget is skipped, and so are trailing values of widgets that are not
  inputs (LoadImage's upload button);
- links override widget values (a widget converted to an input and linked);
- muted nodes (mode 2) are dropped, and inputs linked to them removed;
- bypassed nodes (mode 4) are dropped and their consumers linked to the bypassed node's
  input of the matching type (the same slot first, then the first input of exactly that
  type, then the first compatible one);
- virtual nodes: ``Reroute`` passes its input through, ``PrimitiveNode`` gives its value
  to the widget input it feeds, ``Note`` / ``MarkdownNote`` are skipped.

A node type easel lacks is named in the error with its id, title and position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner import types as T
from runner.errors import WorkflowError
from runner.nodes import Input, NodeType

MODE_NEVER = 2
"""LiteGraph's mode for a muted node: never runs, left out of the prompt."""
MODE_BYPASS = 4
"""LiteGraph's mode for a bypassed node: its inputs pass to its outputs."""

WIDGET_TYPES = frozenset({T.INT, T.FLOAT, T.STRING, T.BOOLEAN, T.COMBO})
"""Input types the frontend draws as widgets (their values live in ``widgets_values``)."""

CONTROL_VALUES = frozenset({"fixed", "randomize", "increment", "decrement"})
"""Values of the ``control_after_generate`` widget the frontend adds after seed widgets."""

SEED_WIDGET_NAMES = frozenset({"seed", "noise_seed"})
"""INT inputs that get a ``control_after_generate`` widget: ComfyUI's core nodes declare
it on these, and older frontends added it by name (``INT:seed``, ``INT:noise_seed``)."""

REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
VIRTUAL_TYPES = frozenset({REROUTE, PRIMITIVE}) | NOTE_TYPES
"""Frontend-only node types: never sent to the backend."""


def is_ui_workflow(data: Any) -> bool:
    """Whether ``data`` looks like ComfyUI's UI format (a graph with a ``nodes`` list)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def widget_inputs(node_type: NodeType) -> list[Input]:
    """The inputs a node type shows as widgets, in the frontend's order: required inputs
    first, then optional ones, each group in declaration order."""
    widgets = [i for i in node_type.inputs if i.type in WIDGET_TYPES]
    return [i for i in widgets if i.required] + [i for i in widgets if not i.required]


def has_control_widget(spec: Input) -> bool:
    """Whether the frontend adds a ``control_after_generate`` widget after this input."""
    flag = getattr(spec, "control_after_generate", None)
    if flag is not None:
        return bool(flag)
    return spec.type == T.INT and spec.name in SEED_WIDGET_NAMES


def map_widget_values(node_type: NodeType, values: Any) -> dict[str, Any]:
    """``widgets_values`` (a list, or a dict keyed by widget name) -> ``{input: value}``.

    In a list, a control value ("fixed"...) after a widget is skipped when that widget
    has a control widget (seeds), or when it follows a number or combo widget and the list
    holds more values than there are widgets (a control widget a newer ComfyUI added on
    another input).
    Values left over at the end (widgets that are not inputs) are ignored."""
    widgets = widget_inputs(node_type)
    if isinstance(values, dict):
        return {w.name: values[w.name] for w in widgets if w.name in values}
    if not isinstance(values, list):
        return {}
    out: dict[str, Any] = {}
    pos = 0
    for index, spec in enumerate(widgets):
        if pos >= len(values):
            break
        out[spec.name] = values[pos]
        pos += 1
        if pos < len(values) and _is_control(values[pos], spec):
            spare = (len(values) - pos) > (len(widgets) - index - 1)
            if has_control_widget(spec) or (spare and not isinstance(values[pos], bool)):
                pos += 1
    return out


def _is_control(value: Any, spec: Input) -> bool:
    """Whether ``value`` can be the control widget's value after ``spec``'s widget: one of
    CONTROL_VALUES after a number or combo widget, or a boolean after a seed widget
    (frontends before 2023-08 stored "randomize" as ``true``, as ComfyUI's default graph
    still shows)."""
    if isinstance(value, bool):
        return has_control_widget(spec)
    return (
        isinstance(value, str)
        and value in CONTROL_VALUES
        and spec.type in (T.INT, T.FLOAT, T.COMBO)
    )


@dataclass(frozen=True)
class _Link:
    id: int
    origin: Any
    origin_slot: int
    target: Any
    target_slot: int
    type: Any


@dataclass(frozen=True)
class _Resolved:
    """What an input resolves to: a link to a real node's output, or a literal value."""

    origin: str | None = None
    slot: int = 0
    value: Any = None
    is_value: bool = False


class _Graph:
    def __init__(self, data: dict[str, Any]):
        self.nodes: dict[str, dict[str, Any]] = {}
        for raw in data.get("nodes") or []:
            if not isinstance(raw, dict) or "id" not in raw:
                raise WorkflowError(f"UI-format workflow: a node without an id: {_short(raw)}")
            node_id = str(raw["id"])
            if node_id in self.nodes:
                raise WorkflowError(f"UI-format workflow: node id {node_id} is given twice")
            if not isinstance(raw.get("type"), str):
                raise WorkflowError(f"UI-format workflow: node {node_id} has no type")
            self.nodes[node_id] = raw
        self.links: dict[int, _Link] = {}
        for raw in data.get("links") or []:
            link = _parse_link(raw)
            self.links[link.id] = link

    def inputs(self, node: dict[str, Any]) -> list[dict[str, Any]]:
        slots = node.get("inputs") or []
        if not isinstance(slots, list):
            raise WorkflowError(f"UI-format workflow: node {node['id']} has malformed inputs")
        return [s if isinstance(s, dict) else {} for s in slots]

    def outputs(self, node: dict[str, Any]) -> list[dict[str, Any]]:
        slots = node.get("outputs") or []
        return [s if isinstance(s, dict) else {} for s in slots] if isinstance(slots, list) else []

    def resolve_input(
        self, node: dict[str, Any], slot: int, seen: set[str], wanted: Any = None
    ) -> _Resolved | None:
        """Where input ``slot`` of ``node`` really comes from (through reroutes, bypassed
        nodes and primitives), or None when nothing real is connected."""
        key = f"{node['id']}[I]{slot}"
        if key in seen:
            raise WorkflowError(
                f"UI-format workflow: the links into node {node['id']} go round in a circle"
            )
        seen.add(key)
        slots = self.inputs(node)
        if slot >= len(slots):
            return None
        link_id = slots[slot].get("link")
        if link_id is None:
            return None
        link = self.links.get(_as_int(link_id))
        if link is None:
            raise WorkflowError(
                f"UI-format workflow: input {slots[slot].get('name')!r} of node {node['id']} "
                f"uses link {link_id}, which is not in 'links'"
            )
        origin = self.nodes.get(str(link.origin))
        if origin is None:
            raise WorkflowError(
                f"UI-format workflow: link {link.id} comes from node {link.origin}, which is not in 'nodes'"
            )
        return self.resolve_output(
            origin,
            link.origin_slot,
            wanted if wanted is not None else slots[slot].get("type"),
            seen,
        )

    def resolve_output(
        self, node: dict[str, Any], slot: int, wanted: Any, seen: set[str]
    ) -> _Resolved | None:
        key = f"{node['id']}[O]{slot}"
        if key in seen:
            raise WorkflowError(
                f"UI-format workflow: the links out of node {node['id']} go round in a circle"
            )
        seen.add(key)
        if node.get("mode") == MODE_BYPASS:
            index = self.bypass_slot(node, slot, wanted)
            return None if index < 0 else self.resolve_input(node, index, seen)
        kind = node["type"]
        if kind == PRIMITIVE:
            values = node.get("widgets_values")
            if isinstance(values, list) and values:
                return _Resolved(value=values[0], is_value=True)
            return None
        if kind == REROUTE:
            return self.resolve_input(node, slot, seen, wanted)
        if kind in NOTE_TYPES:
            return None
        return _Resolved(origin=str(node["id"]), slot=slot)

    def bypass_slot(self, node: dict[str, Any], slot: int, wanted: Any) -> int:
        """The input of a bypassed node that stands in for its output ``slot`` (-1: none)."""
        inputs = self.inputs(node)
        outputs = self.outputs(node)
        if wanted in ("*", "", None):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        out_type = outputs[slot].get("type") if slot < len(outputs) else wanted
        if (
            slot < len(inputs)
            and _compatible(inputs[slot].get("type"), out_type)
            and _compatible(inputs[slot].get("type"), wanted)
        ):
            return slot
        for index, spec in enumerate(inputs):
            if spec.get("type") == wanted:
                return index
        for index, spec in enumerate(inputs):
            if _compatible(spec.get("type"), out_type) and _compatible(spec.get("type"), wanted):
                return index
        return -1


def _compatible(a: Any, b: Any) -> bool:
    """LiteGraph's rule for whether two slot types connect: equal, a wildcard, or
    comma-separated lists that share a type (case-insensitive)."""
    if a in ("", "*", None, 0) or b in ("", "*", None, 0) or a == b:
        return True
    left = {p.strip().lower() for p in str(a).split(",")}
    right = {p.strip().lower() for p in str(b).split(",")}
    return bool(left & right)


def _parse_link(raw: Any) -> _Link:
    try:
        if isinstance(raw, list) and len(raw) >= 6:
            return _Link(_as_int(raw[0]), raw[1], _as_int(raw[2]), raw[3], _as_int(raw[4]), raw[5])
        if isinstance(raw, dict):
            return _Link(
                _as_int(raw["id"]),
                raw["origin_id"],
                _as_int(raw["origin_slot"]),
                raw["target_id"],
                _as_int(raw["target_slot"]),
                raw.get("type"),
            )
    except (KeyError, TypeError, ValueError):
        pass
    raise WorkflowError(
        f"UI-format workflow: a link must be [id, from_node, from_slot, to_node, to_slot, type], got {_short(raw)}"
    )


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    return int(value)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_node(node: dict[str, Any]) -> str:
    """``node 12 'My loader' (UpscaleModelLoader) at (100, 250)`` for error messages."""
    title = node.get("title")
    pos = node.get("pos")
    where = ""
    if isinstance(pos, (list, tuple)) and len(pos) >= 2:
        where = f" at ({_coord(pos[0])}, {_coord(pos[1])})"
    elif isinstance(pos, dict) and "0" in pos and "1" in pos:
        where = f" at ({_coord(pos['0'])}, {_coord(pos['1'])})"
    named = f" {title!r}" if isinstance(title, str) and title else ""
    return f"node {node.get('id')}{named} ({node.get('type')}){where}"


def _coord(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def ui_to_api(data: dict[str, Any], node_types: Mapping[str, NodeType]) -> dict[str, Any]:
    """Convert a UI-format workflow to the API format, as ComfyUI's frontend does when it
    queues it. Raises :class:`WorkflowError` naming every node whose type easel lacks
    (with its id, title and position), and for a graph that is not a graph."""
    if not is_ui_workflow(data):
        raise WorkflowError("not a UI-format workflow: it needs a 'nodes' list")
    definitions = data.get("definitions")
    if isinstance(definitions, dict) and definitions.get("subgraphs"):
        raise WorkflowError(
            "this UI-format workflow uses subgraphs, which easel does not convert yet; "
            "unpack them in ComfyUI (right-click the subgraph node, 'Unpack Subgraph') and save again"
        )
    graph = _Graph(data)
    if not graph.nodes:
        raise WorkflowError("this workflow in ComfyUI's UI format has no nodes")
    missing = []
    output: dict[str, dict[str, Any]] = {}
    for node_id, node in graph.nodes.items():
        kind = node["type"]
        if kind in VIRTUAL_TYPES or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        node_type = node_types.get(kind)
        if node_type is None:
            missing.append(node)
            continue
        inputs: dict[str, Any] = {
            name: _wrap(value)
            for name, value in map_widget_values(node_type, node.get("widgets_values")).items()
        }
        for slot, spec in enumerate(graph.inputs(node)):
            name = spec.get("name")
            if not isinstance(name, str):
                continue
            if isinstance(spec.get("widget"), dict) and isinstance(spec["widget"].get("name"), str):
                name = spec["widget"]["name"]
            resolved = graph.resolve_input(node, slot, set())
            if resolved is None:
                continue
            if resolved.is_value:
                inputs[name] = _wrap(resolved.value)
            else:
                inputs[name] = [resolved.origin, resolved.slot]
        entry: dict[str, Any] = {"inputs": inputs, "class_type": kind}
        if isinstance(node.get("title"), str):
            entry["_meta"] = {"title": node["title"]}
        output[node_id] = entry
    if missing:
        lines = [f"{describe_node(n)}: easel has no node type {n['type']!r}" for n in missing]
        raise WorkflowError(
            "this UI-format workflow uses node types easel lacks (a plugin may provide them):\n  - "
            + "\n  - ".join(lines)
        )
    for entry in output.values():  # inputs linked to dropped (muted) nodes go, as in ComfyUI
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and str(value[0]) not in output:
                del entry["inputs"][name]
    return _in_execution_order(output)


def _wrap(value: Any) -> Any:
    """A list widget value is wrapped so it is not read as a link (as the frontend does)."""
    return {"__value__": value} if isinstance(value, list) else value


def _in_execution_order(workflow: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The nodes reordered so each comes after the nodes it links to (ties by id)."""
    deps = {
        nid: {
            str(v[0])
            for v in node["inputs"].values()
            if isinstance(v, list) and len(v) == 2 and str(v[0]) in workflow
        }
        for nid, node in workflow.items()
    }
    ordered: list[str] = []
    done: set[str] = set()
    pending = sorted(workflow, key=_id_key)
    while pending:
        ready = [n for n in pending if deps[n] <= done] or pending[:1]  # a cycle: keep going
        first = ready[0]
        ordered.append(first)
        done.add(first)
        pending.remove(first)
    return {nid: workflow[nid] for nid in ordered}


def _id_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
