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
    from runner.environment import Environment

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


def handle_errors(fn: Callable) -> Callable:
    """Turn easel's errors into one clear message on stderr and a non-zero exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from runner.errors import (
            EaselError,
            JobCancelled,
            ModelError,
            NodeExecutionError,
            TemplateError,
            WorkflowError,
            WorkflowInvalid,
        )

        try:
            return fn(*args, **kwargs)
        except WorkflowInvalid as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (WorkflowError, TemplateError, ModelError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except NodeExecutionError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except JobCancelled as exc:
            click.echo(f"cancelled: {exc}", err=True)
            sys.exit(EXIT_CANCELLED)
        except EaselError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_CANCELLED)

    return wrapper


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose == 0:
        # Node failures are reported once, as a sentence; the traceback is for -v.
        logging.getLogger("runner.executor").setLevel(logging.CRITICAL)
