"""Shared pieces of the command line: settings, the environment, quiet libraries, errors."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def quiet_libraries() -> None:
    """Silence the progress bars and advice that diffusers and transformers print."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")


def load_settings(**overrides: Any):
    """The bot's settings (file + environment), with command-line overrides applied."""
    from pydantic import ValidationError

    from bot.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"configuration is invalid: {problems}") from None


def make_environment(settings):
    """An Environment for the command line, with torch threads and logging set."""
    quiet_libraries()
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    from bot.services.storage import ensure_folder
    from runner.environment import Environment

    # A data folder that cannot be made is said at once, not after sampling.
    ensure_folder(settings.data_dir)
    ensure_folder(settings.output_dir, what="the output folder")
    if _database_exists(settings):
        # Plugins installed by owners (pip into the data folder, drop-ins) and their
        # enabled/disabled state live with the database: load them as the bot does.
        from bot.services.database import open_database
        from bot.services.plugins import environment_with_plugins

        runtime = environment_with_plugins(settings, open_database(settings))
        runtime.env.plugin_runtime = runtime
        return runtime.env
    return Environment(settings)


def close_environment(env) -> None:
    """Close an environment from :func:`make_environment` (and its plugin runtime)."""
    runtime = getattr(env, "plugin_runtime", None)
    if runtime is not None:
        runtime.close()
    else:
        env.close()


def _database_exists(settings) -> bool:
    """Whether the bot's database is there (a configured URL, or the default SQLite file);
    ``easel generate`` must not create one."""
    if settings.database_url:
        return True
    return (settings.data_dir / "easel.sqlite3").is_file()


def explain_error(exc: BaseException) -> tuple[str, int] | None:
    """The one mapping of easel's errors (runner, services, data layer) to a line for
    stderr and an exit code: bad input 2, a failure 1, cancelled 130. None for an error
    that is not easel's (click's own, or a bug: let it propagate)."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.services.database import DatabaseFileError
    from bot.services.errors import DbError, Forbidden, NameTaken, NotFound, ServiceError
    from bot.services.lora_files import FamilyUnknown, LoraFileError
    from bot.services.storage import DataFolderError
    from runner.errors import (
        EaselError,
        JobCancelled,
        ModelError,
        NodeExecutionError,
        TemplateError,
        WorkflowError,
        WorkflowInvalid,
    )

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_CANCELLED
    if isinstance(exc, JobCancelled):
        return f"cancelled: {exc}", EXIT_CANCELLED
    if isinstance(exc, WorkflowInvalid | WorkflowError | TemplateError | ModelError):
        return f"error: {exc}", EXIT_BAD_INPUT
    if isinstance(exc, NodeExecutionError):
        return f"error: {exc}", EXIT_FAILED
    if isinstance(exc, DatabaseFileError | DataFolderError):
        return f"error: {exc}", EXIT_FAILED
    if isinstance(exc, SQLAlchemyError):
        # The driver's message, without the SQL statement and parameters.
        detail = getattr(exc, "orig", None) or exc
        return f"error: database problem: {detail}", EXIT_FAILED
    if isinstance(exc, NotFound):
        return f"error: no {exc.kind} {exc.value!r} found", EXIT_BAD_INPUT
    if isinstance(exc, NameTaken):
        owner = f"user {exc.owner_id}" if exc.owner_id is not None else "the owner"
        return f"error: {owner} already has a {exc.kind} named {exc.name!r}", EXIT_BAD_INPUT
    if isinstance(exc, Forbidden):
        return (
            f"error: {exc.kind} {exc.value!r} is another user's shared {exc.kind}; only its "
            f"owner may {exc.action} it",
            EXIT_BAD_INPUT,
        )
    if isinstance(exc, FamilyUnknown):
        return f"error: LoRA refused: {exc} (with --model)", EXIT_BAD_INPUT
    if isinstance(exc, LoraFileError):
        return f"error: LoRA refused: {exc}", EXIT_BAD_INPUT
    if isinstance(exc, DbError | ServiceError):
        return f"error: {exc}", EXIT_BAD_INPUT
    if isinstance(exc, EaselError):
        return f"error: {exc}", EXIT_FAILED
    return None


def handle_errors(fn: Callable) -> Callable:
    """Turn easel's errors into one clear message on stderr and a non-zero exit code
    (:func:`explain_error`); every command uses it."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as exc:
            explained = explain_error(exc)
            if explained is None:
                raise
            message, code = explained
            click.echo(message, err=True)
            sys.exit(code)

    return wrapper


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose == 0:
        # Node failures are reported once, as a sentence; the traceback is for -v.
        logging.getLogger("runner.executor").setLevel(logging.CRITICAL)
