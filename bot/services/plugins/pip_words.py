"""pip's failure output in words for an owner: what went wrong, naming the package,
without pip's progress lines, index URLs or local paths (those stay in the log and the
audit record)."""

from __future__ import annotations

import re

from bot.services.plugins.pip import explain_conflict

_NO_MATCH = re.compile(r"No matching distribution found for (?P<req>\S+)")
_VERSIONS = re.compile(r"\(from versions: (?P<versions>[^)]*)\)")
_BUILD = re.compile(r"Failed to build (?P<names>.+)$", re.MULTILINE)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w.])(?:/[^\s/'\"]+){2,}/?|[A-Za-z]:\\\S+")
_NETWORK = (
    "Could not fetch URL",
    "ConnectionError",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
)

MAX_WORDS_CHARS = 240


def scrub(text: str) -> str:
    """``text`` with URLs and local paths left out (an index or a folder is the
    operator's business, not the message's)."""
    text = _URL.sub("the package index", text)
    return _PATH.sub("a local file", text)


def pip_in_words(output: str) -> str:
    """Why pip failed, in one clause: no such package, no version that fits (with the
    versions there are), a dependency conflict, a build failure, the index unreachable,
    else pip's own first error line, scrubbed."""
    if match := _NO_MATCH.search(output):
        requirement = match["req"]
        versions = _VERSIONS.search(output)
        listed = versions["versions"].strip() if versions else ""
        if listed and listed != "none":
            shown = ", ".join(v.strip() for v in listed.split(",")[-5:])
            return f"no version of {requirement} fits (the index has {shown})"
        return (
            f"no package {requirement} was found on the package index "
            f"(pip: No matching distribution found for {requirement})"
        )
    conflict = explain_conflict(output)
    if conflict:
        return scrub(conflict)[:MAX_WORDS_CHARS]
    if match := _BUILD.search(output):
        return f"{match['names'].strip()} failed to build"
    if any(marker in output for marker in _NETWORK):
        return "the package index could not be reached"
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("ERROR:"):
            words = scrub(line.removeprefix("ERROR:").strip())
            return words[:MAX_WORDS_CHARS] or "pip failed"
    return "pip failed; the details are in the bot's log"
