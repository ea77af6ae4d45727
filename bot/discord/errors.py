"""Turning any error into one short sentence for the user; details go to the log.

:func:`friendly` chooses the sentence and :func:`tell` shows it. :class:`reported` is
the error handler of the commands, buttons, modals and mentions
(``async with reported(interaction) as attempt: ...``); :func:`command_error`, the
command tree's ``on_error``, catches what an application command left unhandled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("bot.discord")

GENERIC = "Something went wrong on my side; the details are in the bot's log."


def sentence(text: str, limit: int = 300, *, capitalise: bool = True) -> str:
    """One line, capitalised (unless it starts with a name that must stay as typed:
    ``capitalise=False``), ending with a full stop, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    if not text:
        return GENERIC
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    if capitalise:
        text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def problem_list(problems: list[str]) -> str:
    """Several problems of one request: a count, then one line each."""
    lines = [f"That request has {len(problems)} problems:"]
    lines += [f"• {sentence(p, 200)}" for p in problems[:10]]
    if len(problems) > 10:
        lines.append(f"• … and {len(problems) - 10} more.")
    return "\n".join(lines)


def generation_number(value) -> str:
    """How a missing generation is named: ``#5``, or the bad value in words."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return repr(value)
    return f"#{number}" if number >= 1 else f"{number} (results are numbered from 1)"


def friendly(exc: BaseException) -> str:
    """The sentence a user sees for ``exc``. Unexpected errors are logged with their
    traceback and shown as a generic sentence."""
    from bot.services.errors import DbError, NotFound, ServiceError
    from bot.services.lora_file_errors import LoraFileError
    from bot.services.moderation import Refused
    from bot.services.parsing import ParseError, ParseErrors
    from runner.errors import EaselError, JobCancelled, NodeExecutionError, WorkflowInvalid
    from runner.images import BadImage

    if isinstance(exc, ParseErrors) and len(exc.problems) > 1:
        return problem_list(exc.problems)
    if isinstance(exc, ParseError | Refused):
        return sentence(str(exc))
    if isinstance(exc, LoraFileError):
        return sentence(str(exc), capitalise=False)  # the file name as the user typed it
    if isinstance(exc, NotFound):
        if exc.kind == "generation":
            return f"There is no result {generation_number(exc.value)}."
        return sentence(f"No {exc.kind} named {exc.value!r} was found")
    if isinstance(exc, DbError):
        return sentence(str(exc))
    if isinstance(exc, BadImage):
        return sentence(str(exc))
    if isinstance(exc, JobCancelled):
        return "The job was cancelled."
    if isinstance(exc, WorkflowInvalid):
        first = exc.issues[0] if exc.issues else exc
        return sentence(f"That request cannot run: {first}")
    if isinstance(exc, NodeExecutionError):
        return sentence(f"The generation failed: {exc.message}")
    if isinstance(exc, EaselError):
        return sentence(str(exc))
    if isinstance(exc, ServiceError):
        return sentence(str(exc))
    import discord

    if isinstance(exc, discord.Forbidden):
        log.warning("Discord refused an action: %s", exc)
        return "I don't have permission to do that in this channel."
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return GENERIC


class reported:
    """``async with reported(target) as attempt:`` runs the block; an error raised in it
    reaches the user as ``⚠️`` and :func:`friendly`'s sentence (unexpected ones are
    logged there), is not raised further, and ``attempt.failed`` is True after it.

    ``target`` is an interaction (answered ephemerally, ``say_kwargs`` go with the
    answer, e.g. ``view=None``) or an async callable that shows a text (a status
    message's ``close``, a text command's reply).
    """

    def __init__(self, target: Any, **say_kwargs: Any):
        self.target = target
        self.say_kwargs = say_kwargs
        self.error: Exception | None = None

    @property
    def failed(self) -> bool:
        """Whether the block raised (and the user was told)."""
        return self.error is not None

    async def __aenter__(self) -> reported:
        return self

    async def __aexit__(self, kind, error, traceback) -> bool:
        if not isinstance(error, Exception):
            return False
        self.error = error
        await tell(self.target, f"⚠️ {friendly(error)}", **self.say_kwargs)
        return True


async def command_error(interaction: Any, error: Exception) -> None:
    """The command tree's ``on_error``: an application command's error that its callback
    did not handle (``reported``) reaches the user as one sentence."""
    from discord import app_commands

    original = getattr(error, "original", error)
    if isinstance(error, app_commands.CheckFailure):
        text = "You are not allowed to use that command."
    elif isinstance(error, app_commands.TransformerError | app_commands.CommandSignatureMismatch):
        text = "That command's options were not understood; the commands may need a sync."
        log.warning("app command error: %s", error)
    else:
        text = friendly(original)
    await tell(interaction, f"⚠️ {text}")


async def tell(target: Any, text: str, **say_kwargs: Any) -> None:
    """Show ``text`` on ``target``: an interaction (see :func:`bot.discord.actions.say`)
    or an async callable taking the text."""
    import discord

    if isinstance(target, discord.Interaction):
        from bot.discord.actions import say

        await say(target, text, **say_kwargs)
        return
    show: Callable[[str], Awaitable[Any]] = target
    await show(text)
