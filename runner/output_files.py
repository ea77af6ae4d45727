"""Output file names: ComfyUI's ``filename_prefix`` tokens, the checks that keep a prefix
inside the output folder, and numbered names ``{stem}_{NNNNN}_{suffix}`` claimed atomically
(what SaveImage, SaveAnimatedWEBP/PNG, SaveLatent and CheckpointSave write)."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

_PREFIX_OK = re.compile(r"^[\w\-. /]{1,120}$")
_TOKEN = re.compile(r"%([^%]*)%")
_DATE_PART = re.compile(r"yyyy|yy|dd?|MM?|hh?|mm?|ss?")
_CLOCK_TOKENS = ("year", "month", "day", "hour", "minute", "second")
_UNSAFE_IN_VALUE = re.compile(r"[^\w\-. ]")


def format_date(pattern: str, when: datetime) -> str:
    """ComfyUI's ``%date:...%`` format: yyyy, yy, M/MM (month), d/dd, h/hh (0-23), m/mm,
    s/ss; a doubled letter pads to two digits; other characters stay as they are."""

    def part(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "yyyy":
            return f"{when.year:04d}"
        if token == "yy":
            return f"{when.year % 100:02d}"
        value = {
            "d": when.day,
            "M": when.month,
            "h": when.hour,
            "m": when.minute,
            "s": when.second,
        }[token[0]]
        return f"{value:02d}" if len(token) == 2 else str(value)

    return _DATE_PART.sub(part, pattern)


def _node_widget(workflow: dict[str, Any], ref: str) -> str:
    """The literal value behind ``%Node.widget%``: the node by id, else by title
    (``_meta.title``), else by class type (ComfyUI's "Node name for S&R")."""
    name, _, widget = ref.rpartition(".")
    nodes = [n for n in workflow.values() if isinstance(n, dict)]
    candidates = [workflow[name]] if isinstance(workflow.get(name), dict) else []
    candidates = candidates or [n for n in nodes if (n.get("_meta") or {}).get("title") == name]
    candidates = candidates or [n for n in nodes if n.get("class_type") == name]
    if not candidates:
        raise ValueError(
            f"filename_prefix token %{ref}%: no node with id, title or type {name!r} in the workflow"
        )
    inputs = candidates[0].get("inputs") or {}
    if widget not in inputs:
        raise ValueError(f"filename_prefix token %{ref}%: node {name!r} has no input {widget!r}")
    value = inputs[widget]
    if isinstance(value, list):
        raise ValueError(
            f"filename_prefix token %{ref}%: input {widget!r} of node {name!r} is a link, not a value"
        )
    return _UNSAFE_IN_VALUE.sub("_", str(value))


def expand_prefix(
    filename_prefix: str,
    *,
    workflow: dict[str, Any] | None,
    width: int | None,
    height: int | None,
    when: datetime | None = None,
) -> str:
    """``filename_prefix`` with ComfyUI's tokens replaced: ``%date:yyyy-MM-dd%``,
    ``%width%``, ``%height%``, ``%year%`` ... ``%second%``, and ``%NodeTitle.widget%`` or
    ``%node_id.widget%`` (the literal input of that node; characters that cannot be in a
    file name become ``_``). ``%batch_num%`` is left for the caller (one per image).
    With ``workflow`` None, node references become ``x`` (for checks before a run)."""
    when = when or datetime.now()

    def token(match: re.Match[str]) -> str:
        body = match.group(1)
        if body.startswith("date:"):
            return format_date(body[5:], when)
        if body in ("width", "height"):
            value = width if body == "width" else height
            return "x" if value is None else str(value)
        if body in _CLOCK_TOKENS:
            value = getattr(when, body)
            return str(value) if body == "year" else f"{value:02d}"
        if body == "batch_num":
            return match.group(0)
        if "." in body and not body.startswith(".") and not body.endswith("."):
            return "x" if workflow is None else _node_widget(workflow, body)
        raise ValueError(
            f"filename_prefix {filename_prefix!r}: unknown token %{body}%; use %date:yyyy-MM-dd%, "
            "%width%, %height%, %year%..%second%, %batch_num% or %NodeTitle.widget%"
        )

    return _TOKEN.sub(token, filename_prefix)


def prefix_problem(filename_prefix: str, folder: Path) -> str | None:
    """Why ``filename_prefix`` (tokens already expanded) cannot name files inside
    ``folder``, or None."""
    if filename_prefix.startswith("/") or re.match(r"^[A-Za-z]:", filename_prefix):
        return f"filename_prefix {filename_prefix!r} is an absolute path; give a name (and subfolders) inside the output folder"
    if ".." in filename_prefix.split("/"):
        return f"filename_prefix {filename_prefix!r} goes up a folder with '..'; give a name (and subfolders) inside the output folder"
    if not _PREFIX_OK.match(filename_prefix) or filename_prefix.endswith("/"):
        return (
            f"filename_prefix {filename_prefix!r} may hold only letters, digits, '-', '_', '.', "
            "spaces and '/' between subfolders, and must end in a name (at most 120 characters)"
        )
    sub = filename_prefix.rpartition("/")[0]
    base = folder.resolve()
    target = (base / sub).resolve() if sub else base
    if target != base and base not in target.parents:  # a subfolder that is a symlink out
        return f"filename_prefix {filename_prefix!r} points outside the output folder"
    return None


def output_folder(folder: Path, filename_prefix: str) -> tuple[Path, str, str]:
    """``(folder to write in, subfolder, file stem)`` for a checked ``filename_prefix``
    (tokens expanded): its subfolders under ``folder``, created when missing."""
    sub, _, stem = filename_prefix.rpartition("/")
    target = (folder / sub).resolve() if sub else folder.resolve()
    target.mkdir(parents=True, exist_ok=True)
    return target, sub, stem


class NumberedNames:
    """New file names ``{stem}_{NNNNN}_{suffix}`` in ``folder`` (ComfyUI's numbering): the
    counter starts after the highest number ``stem`` already has there and is shared by
    every name claimed, whatever its stem (a batch's images take consecutive numbers)."""

    def __init__(self, folder: Path, stem: str, suffix: str):
        self.folder, self.suffix = folder, suffix
        pattern = re.compile(re.escape(stem) + r"_(\d{5})_" + re.escape(suffix) + "$")
        numbers = (int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name)))
        self.counter = 1 + max(numbers, default=0)

    def claim(self, stem: str) -> Path:
        """The next free name for ``stem``, created empty with O_EXCL so that no other
        writer takes it."""
        while True:
            path = self.folder / f"{stem}_{self.counter:05d}_{self.suffix}"
            self.counter += 1
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.close(fd)
            return path
