"""Running a validated workflow: only the nodes the outputs need, in dependency order,
with each node's outputs cached under ComfyUI's key (class, literal inputs, ancestors'
keys). When only the seed changes, only the sampler and what follows it run again."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner import events as ev
from runner.cache import cache_key
from runner.context import CancelToken, NodeContext
from runner.errors import (
    EaselError,
    JobCancelled,
    NodeExecutionError,
    WorkflowInvalid,
    is_out_of_memory,
)
from runner.validation import ResolvedNode, ValidationResult, validate

if TYPE_CHECKING:
    from runner.environment import Environment

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished job produced."""

    job_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per output node, what it reported (SaveImage: ``{"images": [...]}``)."""
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0
    values: dict[str, tuple] = field(default_factory=dict)
    """Every needed node's outputs, by node id (for callers that want tensors)."""

    @property
    def images(self) -> list[str]:
        """Paths of every image the output nodes wrote, in node order."""
        paths: list[str] = []
        for out in self.outputs.values():
            for image in out.get("images", []):
                if "path" in image:
                    paths.append(image["path"])
        return paths


def execution_order(result: ValidationResult) -> list[str]:
    """Node ids the outputs need, each after everything it links to."""
    order: list[str] = []
    state: dict[str, int] = {}
    for output in result.outputs:
        stack: list[tuple[str, bool]] = [(output, False)]
        while stack:
            node_id, done = stack.pop()
            if done:
                if state.get(node_id) != 2:
                    state[node_id] = 2
                    order.append(node_id)
                continue
            if state.get(node_id):
                continue
            state[node_id] = 1
            stack.append((node_id, True))
            for source, _ in reversed(list(result.nodes[node_id].links.values())):
                if not state.get(source):
                    stack.append((source, False))
    return order


class Executor:
    """Runs workflows for one :class:`Environment`, sharing its node cache."""

    def __init__(self, env: Environment):
        self.env = env

    def run(
        self,
        workflow: dict[str, Any],
        *,
        job_id: str | None = None,
        on_event: ev.EventHandler = ev.no_events,
        cancel: CancelToken | None = None,
        previews: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> RunResult:
        """Validate and run ``workflow``. Raises WorkflowInvalid, NodeExecutionError or JobCancelled
        (after emitting ``failed`` or ``cancelled``)."""
        job_id = job_id or uuid.uuid4().hex[:12]
        cancel = cancel or CancelToken()
        started = time.perf_counter()
        result = validate(workflow, self.env.node_types, self.env)
        if not result.ok:
            error = WorkflowInvalid(result.issues)
            on_event(ev.Failed(job_id, message=str(error)))
            raise error
        order = execution_order(result)
        on_event(ev.Started(job_id, nodes=order))
        run = RunResult(job_id)
        keys: dict[str, str] = {}
        job_extra = {"workflow": workflow, **(extra or {})}
        current: ResolvedNode | None = None
        try:
            for node_id in order:
                if cancel.cancelled:
                    raise JobCancelled(f"job {job_id} cancelled before node {node_id}")
                current = node = result.nodes[node_id]
                ctx = NodeContext(
                    self.env,
                    job_id,
                    node_id,
                    node.node_type.name,
                    on_event,
                    cancel,
                    previews,
                    job_extra,
                )
                keys[node_id] = self._key(node, keys, ctx)
                cached = self.env.node_cache.get(keys[node_id])
                if cached is not None:
                    run.values[node_id], ui = cached
                    run.cached.append(node_id)
                    on_event(ev.NodeCached(job_id, node_id=node_id, class_type=node.node_type.name))
                else:
                    on_event(
                        ev.NodeStarted(job_id, node_id=node_id, class_type=node.node_type.name)
                    )
                    t0 = time.perf_counter()
                    outputs, ui = self._call(node, run.values, ctx)
                    self.env.node_cache.put(keys[node_id], (outputs, ui))
                    run.values[node_id] = outputs
                    run.executed.append(node_id)
                    on_event(
                        ev.NodeFinished(
                            job_id,
                            node_id=node_id,
                            class_type=node.node_type.name,
                            seconds=time.perf_counter() - t0,
                        )
                    )
                if node.node_type.output_node:
                    run.outputs[node_id] = ui
        except JobCancelled:
            on_event(ev.Cancelled(job_id, node_id=current.node_id if current else None))
            raise
        except NodeExecutionError as exc:
            on_event(
                ev.Failed(
                    job_id, message=exc.message, node_id=exc.node_id, class_type=exc.class_type
                )
            )
            raise
        run.seconds = time.perf_counter() - started
        on_event(
            ev.Finished(
                job_id,
                outputs=run.outputs,
                executed=run.executed,
                cached=run.cached,
                seconds=run.seconds,
            )
        )
        return run

    def _key(self, node: ResolvedNode, keys: dict[str, str], ctx: NodeContext) -> str:
        extra = None
        if node.node_type.is_changed is not None:
            try:
                extra = node.node_type.is_changed(ctx, **node.literals)
            except Exception as exc:  # a failing check must not break keying; it fails at run time
                extra = f"is_changed failed: {exc!r}"
        links = {name: (keys[src], idx) for name, (src, idx) in node.links.items()}
        return cache_key(node.node_type.name, node.literals, links, extra)

    def _call(
        self, node: ResolvedNode, values: dict[str, tuple], ctx: NodeContext
    ) -> tuple[tuple, dict]:
        """Run one node; a node returns a tuple of outputs, or ``{"ui": {...}, "result": (...)}``
        as ComfyUI's output nodes do."""
        kwargs = dict(node.literals)
        for name, (source, index) in node.links.items():
            kwargs[name] = values[source][index]
        name = node.node_type.name
        for attempt in (1, 2):
            try:
                returned = node.node_type.function(ctx, **kwargs)
                break
            except JobCancelled:
                raise
            except Exception as exc:
                if attempt == 1 and is_out_of_memory(exc):
                    log.warning(
                        "out of memory in node %s (%s); freeing caches and retrying once",
                        node.node_id,
                        name,
                    )
                    self.env.free_memory()
                    continue
                log.exception("node %s (%s) failed", node.node_id, name)
                raise NodeExecutionError(node.node_id, name, _readable(exc)) from exc
        ui: dict[str, Any] = {}
        outputs = returned
        if isinstance(returned, dict) and "ui" in returned:
            ui = returned["ui"]
            outputs = tuple(returned.get("result", ()))
        if not isinstance(outputs, tuple) or len(outputs) != len(node.node_type.outputs):
            raise NodeExecutionError(
                node.node_id,
                name,
                f"returned {type(returned).__name__} but must return a tuple of {len(node.node_type.outputs)} output(s)",
            )
        return outputs, ui


def _readable(exc: BaseException) -> str:
    if is_out_of_memory(exc):
        return "out of memory even after freeing the model caches; try a smaller size or batch, or enable low_vram"
    if isinstance(exc, EaselError):
        return str(exc)
    text = str(exc).strip() or type(exc).__name__
    return (
        f"{type(exc).__name__}: {text}"
        if not isinstance(exc, (ValueError, FileNotFoundError))
        else text
    )
