"""``easel workflows list|show|add|remove``: the operator's ComfyUI workflows in
``DATA_DIR/workflows/`` (see :mod:`bot.services.operator_workflows`), and the
``--workflow NAME`` request of ``easel generate`` (:func:`workflow_request`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bot.cli.common import (
    EXIT_BAD_INPUT,
    close_environment,
    handle_errors,
    load_settings,
    make_environment,
)


@contextmanager
def operator_workflows() -> Iterator[Any]:
    """The workflows folder of the settings in force, with an environment's node types
    (needed to read UI-format files and to validate)."""
    from bot.services.operator_workflows import OperatorWorkflows

    settings = load_settings()
    env = make_environment(settings)
    try:
        yield OperatorWorkflows(settings, env)
    finally:
        close_environment(env)


def _refused(exc: Exception) -> None:
    from bot.services.operator_workflows import WorkflowRejected

    if isinstance(exc, WorkflowRejected):
        click.echo(
            f"error: workflow {exc.name!r} refused, {len(exc.problems)} problem(s):", err=True
        )
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group("workflows")
def workflows() -> None:
    """The operator's ComfyUI workflows (DATA_DIR/workflows), used as /imagine workflow:NAME."""


@workflows.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per workflow.")
@handle_errors
def list_workflows(as_json: bool) -> None:
    """Every workflow with its description (or why it cannot be read)."""
    from bot.services.operator_workflows import OperatorWorkflow

    with operator_workflows() as folder:
        items = folder.list()
    if not items:
        click.echo(f"no workflows yet; add one with `easel workflows add FILE` ({folder.folder})")
        return
    for item in items:
        if isinstance(item, OperatorWorkflow):
            if as_json:
                click.echo(
                    json.dumps({"name": item.name, "description": item.description, "ok": True})
                )
            else:
                click.echo(f"{item.name}\t{item.description or '-'}")
        elif as_json:
            click.echo(json.dumps({"name": item.name, "ok": False, "problems": item.problems}))
        else:
            click.echo(f"{item.name}\tUNREADABLE: {'; '.join(item.problems)}")


@workflows.command("show")
@click.argument("name")
@handle_errors
def show_workflow(name: str) -> None:
    """What NAME binds (option -> node, class, input, value), what members may change,
    the node types and models it needs."""
    from bot.services.operator_workflows import UnknownWorkflow, WorkflowRejected

    with operator_workflows() as folder:
        try:
            workflow = folder.get(name)
        except (UnknownWorkflow, WorkflowRejected) as exc:
            _refused(exc)
            return
        problems = _problems(workflow, folder.env)
    for line in workflow.describe():
        click.echo(line)
    for problem in problems:
        click.echo(f"problem: {problem}")


def _problems(workflow, env) -> list[str]:
    from bot.services.operator_workflows import validation_problems

    return validation_problems(workflow, env)


@workflows.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Workflow name (default: the file's stem).")
@click.option("--replace", is_flag=True, help="Replace a workflow of the same name.")
@click.option(
    "--sidecar",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .easel.toml/.easel.json file with bindings, allow and limits.",
)
@handle_errors
def add_workflow(file: Path, name: str | None, replace: bool, sidecar: Path | None) -> None:
    """Validate FILE (API JSON, UI JSON or a PNG carrying a workflow) and add it; every
    problem (unknown node types, missing models...) is named and nothing is stored."""
    from bot.services.operator_workflows import WorkflowRejected, read_sidecar
    from runner.errors import WorkflowError

    with operator_workflows() as folder:
        try:
            table = read_sidecar(sidecar) if sidecar else None
            workflow = folder.add(
                file.read_bytes(), file.name, name=name, sidecar=table, replace=replace
            )
        except (WorkflowRejected, WorkflowError) as exc:
            _refused(exc)
            return
    click.echo(f"added workflow {workflow.name} ({workflow.path})")
    for line in workflow.describe()[1:]:
        click.echo(line)


@workflows.command("remove")
@click.argument("name")
@handle_errors
def remove_workflow(name: str) -> None:
    """Delete workflow NAME (and its sidecar)."""
    from bot.services.operator_workflows import OperatorWorkflows, UnknownWorkflow

    settings = load_settings()
    folder = OperatorWorkflows(settings, env=None)
    try:
        gone = folder.remove(name)
    except UnknownWorkflow as exc:
        _refused(exc)
        return
    click.echo(f"removed workflow {name}: {', '.join(p.name for p in gone)}")


def workflow_request(env, settings, name: str, given: Mapping[str, Any]):
    """``(workflow, request)`` for ``easel generate --workflow NAME``: the workflow's
    own values, with the options ``given`` on the command line (request field names)
    over them. Raises :class:`click.ClickException` naming every problem."""
    from pydantic import ValidationError

    from bot.services.operator_workflows import OperatorWorkflows, UnknownWorkflow, WorkflowRejected
    from runner.templates import GenerationRequest

    try:
        workflow = OperatorWorkflows(settings, env).get(name)
    except (UnknownWorkflow, WorkflowRejected) as exc:
        raise click.ClickException(str(exc)) from None
    fields = workflow.request_defaults()
    fields["batch_size"] = fields.pop("count", 1)
    fields.pop("strength", None)
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        request = GenerationRequest(template=workflow.template, **fields).with_seed()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(problems) from None
    return workflow, request


WORKFLOW_COMMANDS = (workflows,)
