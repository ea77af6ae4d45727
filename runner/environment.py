"""The environment: settings, plugins, node types, templates, models and caches in one
object. The command line and the bot each build one and run workflows through it."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from runner.cache import NodeCache
from runner.errors import EaselError, TemplateError
from runner.executor import Executor, RunResult
from runner.nodes import NodeType
from runner.plugin_manager import build_plugin_manager, plugin_name
from runner.settings import EngineSettings
from runner.templates import GenerationRequest, WorkflowTemplate, rank_with_clip

log = logging.getLogger(__name__)


class PluginConflict(EaselError):
    """Two plugins declared the same node type or template name."""


class Environment:
    """Everything a workflow run needs. Build one per process and reuse it: models and node
    outputs stay cached inside it between jobs."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
    ):
        from runner.models.manager import ModelManager  # heavy: torch

        self.settings = settings or EngineSettings()
        self.pm = plugin_manager or build_plugin_manager()
        self.node_types: dict[str, NodeType] = {}
        self.templates: dict[str, WorkflowTemplate] = {}
        self.node_cache = NodeCache(
            self.settings.node_cache_size, max_bytes=int(self.settings.node_cache_mb * 1024**2)
        )
        self.models = ModelManager(self.settings)
        self.executor = Executor(self)
        self.refresh()
        self.pm.hook.easel_startup(env=self)

    def refresh(self) -> None:
        """Collect node types and templates again from every registered plugin."""
        node_types: dict[str, NodeType] = {}
        templates: dict[str, WorkflowTemplate] = {}
        for plugin, types in _results_by_plugin(self.pm, "easel_node_types"):
            owner = plugin_name(self.pm, plugin)
            for node_type in types or []:
                if node_type.name in node_types:
                    raise PluginConflict(
                        f"node type {node_type.name!r} is declared by both {node_types[node_type.name].plugin} and {owner}"
                    )
                node_types[node_type.name] = _with_plugin(node_type, owner)
        for plugin, items in _results_by_plugin(self.pm, "easel_workflow_templates"):
            owner = plugin_name(self.pm, plugin)
            for template in items or []:
                if template.name in templates:
                    raise PluginConflict(
                        f"template {template.name!r} is declared by both {templates[template.name].plugin} and {owner}"
                    )
                templates[template.name] = _with_plugin(template, owner)
        self.node_types = node_types
        self.templates = templates

    def run(self, workflow: dict[str, Any], **kwargs: Any) -> RunResult:
        """Validate and run a workflow; see :meth:`runner.executor.Executor.run`."""
        return self.executor.run(workflow, **kwargs)

    def build_workflow(self, request: GenerationRequest) -> dict[str, Any]:
        """The workflow for ``request`` from its template (which must have a seed)."""
        template = self.templates.get(request.template_name)
        if template is None:
            raise TemplateError(
                f"unknown template {request.template_name!r}; available: {', '.join(sorted(self.templates))}"
            )
        return rank_with_clip(lambda r: template.build(r, self.settings.default_model), request)

    def free_memory(self) -> None:
        """Drop cached node outputs and loaded models (after an out-of-memory error)."""
        self.node_cache.clear()
        self.models.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            log.debug("could not empty the CUDA cache", exc_info=True)

    def close(self) -> None:
        """Call the shutdown hook and drop caches."""
        self.pm.hook.easel_shutdown(env=self)
        self.node_cache.clear()
        self.models.clear()


def _results_by_plugin(pm: pluggy.PluginManager, hook_name: str) -> Iterable[tuple[object, Any]]:
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        yield impl.plugin, impl.function()


def _with_plugin(item: Any, owner: str) -> Any:
    from dataclasses import replace

    return replace(item, plugin=owner) if not item.plugin else item
