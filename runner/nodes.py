"""Node types: what a node takes, what it gives, and the function that computes it.

A plugin declares node types with :class:`NodeType` and :class:`Input` and returns them
from the ``easel_node_types`` hook. Names, defaults and ranges follow ComfyUI's core
nodes so that workflows exported from ComfyUI run unchanged.

A node function receives a :class:`NodeContext` first and its inputs as keyword
arguments (already converted to the declared types, defaults of optional inputs filled in), and returns a
tuple with one value per declared output. It must not mutate its inputs: outputs are
cached and shared between jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner import types as T

if TYPE_CHECKING:
    from runner.environment import Environment

ChoicesFn = Callable[["Environment"], Sequence[str]]
CheckFn = Callable[[Any, "Environment"], str | None]


@dataclass(frozen=True)
class Input:
    """One input of a node type.

    ``choices`` (a sequence, or a function of the environment returning one) makes it a
    COMBO input: the value must be one of them, unless ``check`` is given, which then
    decides alone (choices are still listed, e.g. checkpoint names when hub ids are allowed). ``limit`` names an engine setting (``max_width``...) that tightens
    ``max``; on a STRING input ``max`` is the longest text allowed (``max_prompt_chars``).
    ``check`` is an extra test returning an error message or None; its failures are
    reported as ``value_not_in_list`` on a COMBO input, ``custom_validation_failed`` on others.

    As in ComfyUI, a ``required`` input must be given in every workflow even when it has a
    ``default`` (validation reports ``required_input_missing``); the default is filled in
    only for an input with ``required=False``. ``default`` is also what front ends offer.
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: Sequence[str] | ChoicesFn | None = None
    required: bool = True
    limit: str | None = None
    check: CheckFn | None = None
    multiline: bool = False
    tooltip: str = ""

    def allowed(self, env: Environment | None) -> list[str] | None:
        """The allowed values of a COMBO input, or None for other inputs."""
        if self.choices is None:
            return None
        if callable(self.choices):
            return list(self.choices(env)) if env is not None else None
        return list(self.choices)

    def effective_max(self, env: Environment | None) -> float | None:
        """``max``, lowered to the configured limit when ``limit`` names one."""
        if self.limit and env is not None:
            configured = getattr(env.settings, self.limit)
            return configured if self.max is None else min(self.max, configured)
        return self.max

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description, for ``easel nodes``."""
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        for key in ("default", "min", "max", "step"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.choices is not None and not callable(self.choices):
            out["choices"] = list(self.choices)
        if self.limit:
            out["limit"] = self.limit
        if self.tooltip:
            out["tooltip"] = self.tooltip
        return out


@dataclass(frozen=True)
class NodeType:
    """A node type: ComfyUI's ``class_type`` with its inputs, outputs and function.

    ``output_node`` marks nodes that produce results (SaveImage): a workflow needs at
    least one. ``is_changed`` returns a value that joins the cache key, for nodes whose
    result depends on something outside their inputs (a file's content). ``validate``
    checks combinations of literal inputs and returns ``(input_name, message)`` pairs.
    ``validate_graph`` does the same with the whole workflow (API format) as its second
    argument, for inputs that refer to other nodes (SaveImage's ``%Node.widget%`` tokens);
    both run before anything executes and report ``custom_validation_failed``.
    """

    name: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    function: Callable[..., tuple]
    output_names: tuple[str, ...] = ()
    output_node: bool = False
    category: str = ""
    description: str = ""
    is_changed: Callable[..., Any] | None = None
    validate: Callable[[dict[str, Any]], Iterable[tuple[str, str]]] | None = None
    validate_graph: (
        Callable[[dict[str, Any], Mapping[str, Any]], Iterable[tuple[str, str]]] | None
    ) = None
    plugin: str = field(default="", compare=False)

    def input(self, name: str) -> Input | None:
        """The declared input called ``name``, or None."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description, for ``easel nodes``."""
        names = self.output_names or tuple(o.lower() for o in self.outputs)
        return {
            "class_type": self.name,
            "category": self.category,
            "description": self.description,
            "inputs": {i.name: i.describe() for i in self.inputs},
            "outputs": [{"name": n, "type": t} for n, t in zip(names, self.outputs, strict=True)],
            "output_node": self.output_node,
            "plugin": self.plugin,
        }


def node(
    name: str,
    *,
    inputs: Sequence[Input],
    outputs: Sequence[str] = (),
    output_names: Sequence[str] = (),
    output_node: bool = False,
    category: str = "",
    is_changed: Callable[..., Any] | None = None,
    validate: Callable[[dict[str, Any]], Iterable[tuple[str, str]]] | None = None,
    validate_graph: (
        Callable[[dict[str, Any], Mapping[str, Any]], Iterable[tuple[str, str]]] | None
    ) = None,
) -> Callable[[Callable[..., tuple]], NodeType]:
    """Decorator turning a function into a :class:`NodeType`; its docstring describes it."""

    def wrap(fn: Callable[..., tuple]) -> NodeType:
        return NodeType(
            name=name,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            output_names=tuple(output_names),
            function=fn,
            output_node=output_node,
            category=category,
            description=(fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
            is_changed=is_changed,
            validate=validate,
            validate_graph=validate_graph,
        )

    return wrap


__all__ = ["Input", "NodeType", "node", "T"]
