"""Operator commands for stored data: ``easel users``, ``easel history``, ``easel lora
add|list|remove``, ``easel export``, ``easel forget`` and ``easel db upgrade``.

Each opens the database of the settings in force and applies migrations first, and
works through the services (never ``db`` directly). Errors become one sentence on
stderr and exit code 2 (bad input) or 1 (failure): :func:`bot.cli.common.handle_errors`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bot.cli.common import EXIT_FAILED, handle_errors, load_settings

USER_ID = click.IntRange(0, 2**63 - 1)


@contextmanager
def opened_database(settings: Any) -> Iterator[Any]:
    """The database of ``settings``, migrated to the newest schema, closed afterwards."""
    from bot.services.database import open_database

    db = open_database(settings)
    try:
        yield db
    finally:
        db.close()


def _short(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


# ----------------------------------------------------------------------------- users


@click.command()
@click.option("--page", type=click.IntRange(1, None), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def users(page: int, per_page: int, as_json: bool) -> None:
    """List the users the bot knows, with how much each has stored."""
    from bot.services.userdata import list_users

    with opened_database(load_settings()) as db:
        total, items = list_users(db, page=page, per_page=per_page)
    if as_json:
        click.echo(json.dumps({"total": total, "page": page, "users": items}, indent=2))
        return
    if not items:
        click.echo("no users" if total == 0 else f"no users on page {page} ({total} in all)")
        return
    for item in items:
        name = f" ({item['display_name']})" if item["display_name"] else ""
        click.echo(
            f"{item['id']}{name}: {item['loras']} LoRA(s), {item['generations']} generation(s), "
            f"{item['jobs']} job(s), last seen {item['last_seen_at'] or '-'}"
        )
    shown_to = (page - 1) * per_page + len(items)
    if shown_to < total:
        click.echo(f"({total} users in all; next: --page {page + 1})")


# --------------------------------------------------------------------------- history


@click.command()
@click.option("--user", "user_id", type=USER_ID, required=True, help="Discord user id.")
@click.option("--query", help="Only generations whose prompt contains this text.")
@click.option("--page", type=click.IntRange(1, None), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the full workflows).")
@handle_errors
def history(user_id: int, query: str | None, page: int, per_page: int, as_json: bool) -> None:
    """Show one user's generations, newest first."""
    from bot.services.history import History
    from bot.services.userdata import row_to_dict

    settings = load_settings()
    with opened_database(settings) as db:
        result = History(db, settings).history(user_id, query=query, page=page, per_page=per_page)
    if as_json:
        items = [
            {**row_to_dict(g), "outputs": [row_to_dict(o) for o in g.outputs]} for g in result.items
        ]
        click.echo(
            json.dumps({"total": result.total, "page": page, "generations": items}, indent=2)
        )
        return
    if not result.items:
        what = f" matching {query!r}" if query else ""
        click.echo(
            f"no generations{what} for user {user_id}" + (f" on page {page}" if page > 1 else "")
        )
        return
    for g in result.items:
        seed = g.seed if g.seed is not None else "-"
        click.echo(
            f"#{g.id}  {_when(g.created_at)}  {g.status.value:9}  seed {seed}  {g.model or '-'}  "
            f"{_short(g.prompt)}"
        )
        for output in g.outputs:
            click.echo(f"      {output.path}  {output.width}x{output.height}")
        if g.error:
            click.echo(f"      error: {_short(g.error, 100)}")
    last = (page - 1) * per_page + len(result.items)
    click.echo(f"({last - len(result.items) + 1}-{last} of {result.total})")


# ----------------------------------------------------------------------------- loras


@click.group()
def lora() -> None:
    """Manage users' LoRA libraries."""


@lora.command("add")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--user", "user_id", type=USER_ID, required=True, help="Discord user id of the owner."
)
@click.option("--name", required=True, help="The name the user will type (letters, digits, _ - .).")
@click.option("--trigger", "triggers", multiple=True, help="A trigger word; repeatable.")
@click.option("--weight", type=float, default=1.0, show_default=True, help="Default weight.")
@click.option("--shared", is_flag=True, help="Let every user use it.")
@click.option("--model", help="The checkpoint it is for: a LoRA of another family is refused.")
@handle_errors
def lora_add(
    file: Path,
    user_id: int,
    name: str,
    triggers: tuple[str, ...],
    weight: float,
    shared: bool,
    model: str | None,
) -> None:
    """Check FILE (a .safetensors LoRA) and add it to a user's library."""
    from bot.services.loras import LoraLibrary

    if not file.is_file():
        raise click.BadParameter(f"{file}: no such file", param_hint="FILE")
    settings = load_settings()
    with opened_database(settings) as db:
        row = LoraLibrary(db, settings).add_file(
            user_id,
            file,
            name=name,
            trigger_words=triggers,
            default_weight=weight,
            shared=shared,
            model=model,
        )
    visibility = "shared" if row.shared else "private"
    click.echo(
        f"added {row.name!r} for user {user_id}: {row.family.value}, {row.key_format} keys, "
        f"{visibility}, weight {row.default_weight:g}, sha256 {row.sha256[:12]}"
    )


@lora.command("list")
@click.option("--user", "user_id", type=USER_ID, help="Only what this user may use (own + shared).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def lora_list(user_id: int | None, as_json: bool) -> None:
    """List LoRAs: every user's, or those one user may use."""
    from bot.services.loras import LoraLibrary
    from bot.services.userdata import row_to_dict

    settings = load_settings()
    with opened_database(settings) as db:
        library = LoraLibrary(db, settings)
        rows = library.list_all() if user_id is None else library.list_visible(user_id)
    if as_json:
        click.echo(json.dumps([row_to_dict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no LoRAs" + (f" for user {user_id}" if user_id is not None else ""))
        return
    for r in rows:
        owner = "" if r.owner_id == user_id else f"  owner {r.owner_id}"
        triggers = f"  triggers: {', '.join(r.trigger_words)}" if r.trigger_words else ""
        click.echo(
            f"{r.name}  {r.family.value}  {r.key_format}  weight {r.default_weight:g}  "
            f"{'shared' if r.shared else 'private'}{owner}  {r.size_bytes / 1e6:.2f} MB  "
            f"sha256 {r.sha256[:12]}{triggers}"
        )


@lora.command("remove")
@click.argument("name")
@click.option(
    "--user", "user_id", type=USER_ID, required=True, help="Discord user id of the owner."
)
@handle_errors
def lora_remove(name: str, user_id: int) -> None:
    """Remove LoRA NAME from a user's library (the file goes when no one else has it)."""
    from bot.services.loras import LoraLibrary

    settings = load_settings()
    with opened_database(settings) as db:
        deleted = LoraLibrary(db, settings).remove(user_id, name)
    note = "file deleted" if deleted else "file kept: other users have it too"
    click.echo(f"removed {name!r} from user {user_id}'s library ({note})")


# ------------------------------------------------------------------- data rights


@click.command("export")
@click.option("--user", "user_id", type=USER_ID, required=True, help="Discord user id.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A new or empty folder.",
)
@handle_errors
def export(user_id: int, out_dir: Path) -> None:
    """Export everything stored about a user: a JSON document and copies of their files."""
    from bot.services.userdata import export_user

    settings = load_settings()
    with opened_database(settings) as db:
        report = export_user(db, settings, user_id, out_dir)
    click.echo(
        f"exported user {user_id} to {report.folder}: {report.document.name}, {len(report.files)} file(s)"
    )
    for path in report.missing:
        click.echo(f"warning: {path} is recorded but missing from the data folder", err=True)


def plugin_runtime(settings: Any, db: Any) -> Any:
    """The plugins the bot would run (built-ins, installed and drop-in plugins, minus
    those recorded as disabled), in an environment of their own: whoever stores data
    about users must hear of ``easel forget``. Returns a runtime with ``env`` and
    ``close()``."""
    from bot.cli.common import quiet_libraries
    from bot.services.plugins import environment_with_plugins

    quiet_libraries()
    return environment_with_plugins(settings, db)


@click.command()
@click.option("--user", "user_id", type=USER_ID, required=True, help="Discord user id.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def forget(user_id: int, yes: bool) -> None:
    """Delete everything stored about a user: rows, files no one else uses, and plugin data."""
    from bot.services.userdata import forget_user, stored_rows

    settings = load_settings()
    with opened_database(settings) as db:
        counts = stored_rows(db, user_id)
        stored = ", ".join(f"{n} {table}" for table, n in counts.items() if n) or "no rows"
        if not yes:
            click.confirm(
                f"Delete all data of user {user_id} ({stored}) and ask the plugins to do the same?",
                abort=True,
            )
        runtimes: list[Any] = []

        def load_plugins() -> Any:
            runtime = plugin_runtime(settings, db)
            runtimes.append(runtime)
            return runtime.env.pm

        try:
            report = forget_user(db, settings, user_id, load_plugins=load_plugins)
        finally:
            for runtime in runtimes:
                runtime.close()
    deleted = sum(report.rows.values())
    click.echo(
        f"forgot user {user_id}: {deleted} row(s), {len(report.files_deleted)} file(s) deleted"
        + (
            f", {len(report.files_kept)} file(s) kept (other users have them)"
            if report.files_kept
            else ""
        )
        + (f"; plugins asked: {', '.join(report.plugins_called)}" if report.plugins_called else "")
    )
    for plugin, error in report.plugin_errors.items():
        click.echo(f"error: plugin {plugin} failed to forget user {user_id}: {error}", err=True)
    if report.plugin_errors:
        sys.exit(EXIT_FAILED)


# ------------------------------------------------------------------------ database


@click.group("db")
def db_group() -> None:
    """The database: migrations."""


@db_group.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply the database migrations up to the newest (also done at every start)."""
    from sqlalchemy.engine import make_url

    from bot.services.database import database_url, open_database

    settings = load_settings()
    url = make_url(database_url(settings)).render_as_string(hide_password=True)
    db = open_database(settings, upgrade=False)
    try:
        before = db.current()
        db.upgrade()
        after = db.current()
    finally:
        db.close()
    if before == after:
        click.echo(f"{url}: already at revision {after}")
    else:
        click.echo(f"{url}: upgraded from {before or 'an empty database'} to revision {after}")


DATA_COMMANDS: tuple[click.Command, ...] = (users, history, lora, export, forget, db_group)
"""The commands this module adds to ``easel``."""
