"""pip in a subprocess and what it says: a time limit that stops the whole process group,
output cut to what an owner needs, the JSON installation report read, install specs
classified, the bot's own packages listed as constraints. How easel uses pip for the plugin
packages folder is :mod:`bot.services.plugins.installer`."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.services.plugins.errors import PipFailed, PipTimedOut, SpecRefused
from bot.services.plugins.results import PackageChange
from runner.plugin_host import normalize_name

log = logging.getLogger(__name__)

MAX_SUMMARY_CHARS = 1500


@dataclass
class PipRun:
    """One pip subprocess: its arguments, exit code and captured output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """stderr and stdout together."""
        return "\n".join(part for part in (self.stdout, self.stderr) if part)

    def summary(self) -> str:
        """The lines that matter, for an owner (see :func:`summarize_pip`): a dependency
        conflict first, in words (:func:`explain_conflict`)."""
        summary = summarize_pip(self.output)
        conflict = explain_conflict(self.output)
        return f"{conflict}\n{summary}" if conflict else summary

    @property
    def warnings(self) -> str:
        """pip's warning lines (from stderr)."""
        return "\n".join(line for line in self.stderr.splitlines() if line.startswith("WARNING"))

    def check(self, spec: str) -> None:
        """:class:`PipFailed` with the summary when pip failed."""
        if self.returncode != 0:
            from bot.services.plugins.pip_words import pip_in_words

            log.warning("pip failed for %s (exit %s):\n%s", spec, self.returncode, self.output)
            raise PipFailed(spec, self.returncode, self.summary(), pip_in_words(self.output))


_KEEP = re.compile(
    r"^(ERROR|WARNING|Successfully installed|Would install|Requirement already satisfied: \S+ in \S*plugin)"
)
_CREATED_WHEEL = re.compile(
    r"Created wheel for (?P<name>[^:]+): filename=(?P<file>\S+) size=\d+ sha256=(?P<sha>[0-9a-f]{64})"
)


def summarize_pip(output: str, *, max_lines: int = 12) -> str:
    """pip's output cut to what an owner needs: errors (with their indented details),
    warnings and the final "Successfully installed" line; else its last lines."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    kept: list[str] = []
    follow = False
    for line in lines:
        if _KEEP.match(line):
            kept.append(line)
            follow = line.startswith("ERROR")
        elif follow and (line.startswith((" ", "\t")) or line.startswith("The conflict")):
            kept.append(line)
        else:
            follow = False
    if not kept:
        kept = lines[-max_lines:]
    text = "\n".join(kept[:max_lines])
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[: MAX_SUMMARY_CHARS - 1] + "…"
    return text


_DEPENDS = re.compile(r"^\s*(?P<who>\S+ \S+) depends on (?P<req>.+?)\s*$")
_REQUESTED = re.compile(r"^\s*The user requested (?P<constraint>\(constraint\) )?(?P<req>.+?)\s*$")


def _wanted(text: str) -> tuple[str | None, str]:
    """``(normalised name, "name 1.0" or "name<2")`` of a requirement pip printed."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return None, text
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "==="):
        return normalize_name(requirement.name), f"{requirement.name} {specs[0].version}"
    return normalize_name(requirement.name), f"{requirement.name}{requirement.specifier}"


def explain_conflict(output: str) -> str | None:
    """pip's "The conflict is caused by:" block in one sentence naming the packages, e.g.
    ``dependency conflict: easel-plugin-x 0.1.0 wants torch 2.0.0, easel needs torch
    2.13.0`` (the constraints are the bot's own packages); None when there is no block."""
    lines = output.splitlines()
    try:
        start = next(
            i for i, line in enumerate(lines) if line.startswith("The conflict is caused by")
        )
    except StopIteration:
        return None
    depends: list[tuple[str, str]] = []
    pinned: dict[str, str] = {}
    requested: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if match := _DEPENDS.match(line):
            depends.append((match["who"], match["req"]))
        elif match := _REQUESTED.match(line):
            name, shown = _wanted(match["req"])
            if match["constraint"] and name:
                pinned[name] = shown
            else:
                requested.append(shown)
    parts = []
    for who, req in depends:
        name, shown = _wanted(req)
        if name in pinned:
            parts.append(f"{who} wants {shown}, easel needs {pinned[name]}")
    if not parts:  # a conflict among the plugin's own dependencies
        parts = [f"{who} wants {_wanted(req)[1]}" for who, req in depends] + [
            f"you asked for {r}" for r in requested
        ]
    return ("dependency conflict: " + "; ".join(parts)) if parts else None


def run_pip(args: list[str], *, timeout_s: float, spec: str, cwd: Path | None = None) -> PipRun:
    """Run ``python -m pip ARGS`` in a subprocess of its own session, capturing its output;
    past ``timeout_s`` the whole process group is killed and :class:`PipTimedOut` raised."""
    command = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ)
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"})
    started = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(cwd) if cwd else None,
        env=env,
        **kwargs,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise PipTimedOut(spec, timeout_s) from None
    return PipRun(command, proc.returncode, stdout, stderr, time.perf_counter() - started)


def _kill(proc: subprocess.Popen) -> None:
    """Stop pip and whatever it started (builds run in subprocesses of their own)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except ProcessLookupError:
        pass


def classify_spec(spec: str) -> str:
    """``requirement`` (a name with optional extras, version and markers), ``url`` or
    ``path``; :class:`SpecRefused` for anything else, pip options above all."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = spec.strip()
    if not text:
        raise SpecRefused(spec, "give a requirement such as name==1.0")
    if text.startswith("-"):
        raise SpecRefused(spec, "pip options are not accepted")
    if any(c in text for c in "\r\n\t\0"):
        raise SpecRefused(spec, "one requirement on one line, please")
    if "://" in text or text.startswith(("git+", "hg+", "svn+", "bzr+", "file:")):
        return "url"
    if text.endswith((".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")):
        return "path"
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        if text.startswith((".", "~", "/")) or os.sep in text or Path(text).exists():
            return "path"
        raise SpecRefused(spec, "not a requirement (name or name==version), URL or path") from None
    return "url" if requirement.url else "requirement"


def environment_constraints(exclude: list[Path]) -> str:
    """``name==version`` for every distribution in the bot's own environment (``sys.path``
    without the ``exclude`` folders): pip may add packages, never change these."""
    excluded = {str(p.resolve()) for p in exclude}
    paths = [p for p in sys.path if p and str(Path(p).resolve()) not in excluded]
    seen: set[str] = set()
    lines: list[str] = []
    for dist in importlib.metadata.distributions(path=paths):
        try:
            raw, version = dist.metadata["Name"], dist.version
        except Exception:
            continue
        if not raw or not version:
            continue
        name = normalize_name(raw)
        if name in seen or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            continue
        seen.add(name)
        lines.append(f"{name}=={version}")
    return "\n".join(sorted(lines)) + "\n"


def packages_from_report(report: dict[str, Any], output: str = "") -> tuple[PackageChange, ...]:
    built = {normalize_name(m["name"]): m["sha"] for m in _CREATED_WHEEL.finditer(output)}
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = normalize_name(meta.get("name", "?"))
        info = item.get("download_info", {}) or {}
        archive = info.get("archive_info")
        sha = built.get(name)
        if sha is None and archive is not None:
            sha = (archive.get("hashes") or {}).get("sha256")
            if sha is None and str(archive.get("hash", "")).startswith("sha256="):
                sha = archive["hash"].split("=", 1)[1]
        source = info.get("url", "") if item.get("is_direct") else "index"
        out.append(
            PackageChange(
                name, str(meta.get("version", "?")), source, bool(item.get("requested")), sha
            )
        )
    return tuple(out)


def read_report(text: str, run: PipRun, spec: str) -> tuple[PackageChange, ...]:
    """The packages in pip's JSON installation report ``text`` (of ``run``, for ``spec``);
    :class:`PipFailed` when it cannot be read."""
    try:
        report = json.loads(text)
    except json.JSONDecodeError:
        raise PipFailed(spec, run.returncode, "pip's report could not be read") from None
    return packages_from_report(report, run.output)


__all__ = [
    "MAX_SUMMARY_CHARS",
    "PipRun",
    "classify_spec",
    "environment_constraints",
    "explain_conflict",
    "packages_from_report",
    "read_report",
    "run_pip",
    "summarize_pip",
]
