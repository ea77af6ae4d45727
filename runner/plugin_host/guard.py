"""Isolation: what stands between a third-party plugin and the rest of the process.

A third-party plugin is never registered as itself: the host registers a stand-in
(:meth:`Guard.stand_in`) whose hook implementations call the plugin's through
:meth:`Guard.hook`. The guard runs the call on a helper thread and waits at most
``timeout_s``; a hook that raises, or that has not returned by then, is reported (the
host disables its plugin, its node types and templates gone, with the reason recorded
and sent to listeners), and the call counts as "no answer" (None), so the caller and
every other plugin go on. Python cannot stop a thread: a hung call is abandoned on its
daemon thread and its plugin is never called again. Node functions and template builders
are guarded too (:meth:`Guard.callable`), without a time limit (a node may sample for
minutes; cancellation is the job's business): an exception that is not an
:class:`~runner.errors.EaselError` (a deliberate, readable failure) or an out-of-memory
error is reported, and the job fails as it would anyway.

Some callers handle a plugin's exception themselves and need to see it (the user-data
deletion must know which plugin failed; moderation fails closed). For the hooks in
:data:`PROPAGATING_HOOKS` the exception reaches the caller wrapped in
:class:`~runner.plugin_host.errors.PluginHookError` (naming the plugin) and the plugin is
not reported; a time-out is still reported and raises
:class:`~runner.plugin_host.errors.HookTimeout`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from runner.errors import EaselError, JobCancelled, is_out_of_memory
from runner.nodes import NodeType
from runner.plugin_host.breadcrumbs import Breadcrumbs
from runner.plugin_host.errors import HookTimeout, PluginHookError, describe_error
from runner.plugin_host.records import ENABLED, LOADING, PluginRecord
from runner.templates import WorkflowTemplate

PROPAGATING_HOOKS: frozenset[str] = frozenset(
    {"easel_forget_user", "easel_check_prompt", "easel_check_output"}
)
"""Hooks whose callers handle a plugin's exception themselves: it reaches them as a
:class:`PluginHookError` and the plugin is not disabled for it (moderation fails closed
rather than being switched off; the deletion report names the plugin)."""

Report = Callable[[PluginRecord, str], None]
"""``report(record, reason)``: a guarded plugin failed; the host switches it off."""

Notice = Callable[[PluginRecord, str], None]
"""``notice(record, details)``: a propagating hook raised; the plugin stays on, the owners
are told."""


class _GuardedPlugin:
    """What the host registers in place of a third-party plugin: the same hook
    implementations, each behind the host's guard."""

    def __init__(self, name: str, target: object):
        self._easel_name = name
        self._easel_target = target

    def __repr__(self) -> str:
        target = getattr(self._easel_target, "__name__", type(self._easel_target).__name__)
        return f"<plugin {self._easel_name} ({target})>"


class Guard:
    """Wraps a plugin's hooks, node functions and template builders so that its failures
    are reported (``report``) instead of reaching the caller.

    ``timeout_s``: the longest a hook may run (0 = no limit); read at every call.
    ``marker``: the attribute pluggy's implementation marker sets (``easel_impl``).
    """

    def __init__(
        self,
        report: Report,
        timeout_s: float,
        marker: str,
        notice: Notice | None = None,
        crumbs: Breadcrumbs | None = None,
    ):
        self.report = report
        self.notice = notice
        self.crumbs = crumbs
        """Breadcrumbs left in the data folder around every call (None: none)."""
        self.timeout_s = timeout_s
        self.marker = marker
        self.abandoned_calls = 0
        """How many hung hook calls were left running on their threads."""

    def stand_in(self, record: PluginRecord, target: object, label: str) -> _GuardedPlugin:
        """An object to register instead of ``target``: its hook implementations, guarded
        (hook wrappers are copied as they are: they must stay generators). Adds the hooks
        to ``record.hooks``."""
        stand_in = _GuardedPlugin(label, target)
        for attr in dir(target):
            if attr.startswith("__"):
                continue
            try:
                value = getattr(target, attr)
            except Exception:
                continue
            if not inspect.isroutine(value):
                continue
            opts = getattr(value, self.marker, None)
            if not isinstance(opts, dict):
                continue
            hook = opts.get("specname") or attr
            if opts.get("hookwrapper") or opts.get("wrapper"):
                setattr(stand_in, attr, value)  # wrappers must stay generators; not guarded
            else:
                setattr(stand_in, attr, self.hook(record, hook, value))
            if hook not in record.hooks:
                record.hooks.append(hook)
        return stand_in

    def call(self, record: PluginRecord, hook: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """``fn(*args, **kwargs)`` on a helper thread (in the caller's context), waiting at
        most ``timeout_s``: its result, its exception, or :class:`HookTimeout`."""
        timeout = self.timeout_s
        crumbs = self.crumbs
        if not timeout or timeout <= 0:
            if crumbs is None:
                return fn(*args, **kwargs)
            with crumbs.leave(record.name, f"hook {hook}"):
                return fn(*args, **kwargs)
        box: dict[str, Any] = {}
        done = threading.Event()
        context = contextvars.copy_context()
        # Left before the call and removed when it returns (on its own thread: a hung call
        # keeps its breadcrumb): a hook that ends the process is known at the next start.
        crumb = crumbs.drop(record.name, f"hook {hook}") if crumbs is not None else None

        def target() -> None:
            try:
                box["result"] = context.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                if crumb is not None:
                    crumbs.pick_up(crumb)
                done.set()

        thread = threading.Thread(
            target=target, name=f"easel-hook-{record.name}-{hook}", daemon=True
        )
        thread.start()
        if not done.wait(timeout):
            self.abandoned_calls += 1
            raise HookTimeout(record.name, hook, timeout)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def hook(self, record: PluginRecord, hook: str, fn: Callable) -> Callable:
        """``fn``, the plugin's implementation of ``hook``, behind the guard; node types and
        templates it returns are checked and their functions guarded too."""
        guard = self

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if record.status not in (ENABLED, LOADING):
                return None
            try:
                result = guard.call(record, hook, fn, args, kwargs)
            except HookTimeout as exc:
                guard.report(record, f"{hook} {exc.message}")
                if hook in PROPAGATING_HOOKS:
                    raise
                return None
            except Exception as exc:
                message = describe_error(exc)
                if hook in PROPAGATING_HOOKS:
                    if guard.notice is not None:
                        guard.notice(record, f"raised in {hook}: {message}")
                    raise PluginHookError(record.name, hook, message) from exc
                guard.report(record, f"raised in {hook}: {message}")
                return None
            if hook == "easel_node_types":
                return guard._adopt_node_types(record, result)
            if hook == "easel_workflow_templates":
                return guard._adopt_templates(record, result)
            return result

        return guarded

    def _adopt_node_types(self, record: PluginRecord, result: Any) -> list[NodeType] | None:
        if result is None:
            return None
        items = list(result) if isinstance(result, (list, tuple)) else None
        if items is None or not all(isinstance(i, NodeType) for i in items):
            self.report(
                record, f"easel_node_types returned {type(result).__name__}, not a list of NodeType"
            )
            return None
        return [
            replace(
                i,
                plugin=record.name,
                function=self.callable(record, f"node {i.name}", i.function),
            )
            for i in items
        ]

    def _adopt_templates(self, record: PluginRecord, result: Any) -> list[WorkflowTemplate] | None:
        if result is None:
            return None
        items = list(result) if isinstance(result, (list, tuple)) else None
        if items is None or not all(isinstance(i, WorkflowTemplate) for i in items):
            self.report(
                record,
                f"easel_workflow_templates returned {type(result).__name__}, not a list of WorkflowTemplate",
            )
            return None
        return [
            replace(
                i,
                plugin=record.name,
                build=self.callable(record, f"template {i.name}", i.build),
            )
            for i in items
        ]

    def callable(self, record: PluginRecord, what: str, fn: Callable) -> Callable:
        """A node function or template builder: no time limit; a bug is reported, the
        exception still fails the job or the request."""
        guard = self

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (JobCancelled, EaselError):
                raise
            except Exception as exc:
                if not is_out_of_memory(exc):
                    guard.report(record, f"{what} raised {describe_error(exc)}")
                raise

        return guarded


__all__ = ["PROPAGATING_HOOKS", "Guard", "Notice", "Report"]
