"""Breadcrumbs: what a process was doing with a plugin when it died.

A plugin can end the whole process (``os._exit`` at import, a segfault in a hook): no
exception, no log line, and the next start imports it again and dies again. So before
importing a plugin, and before each guarded hook call, the host leaves a small file in the
data folder (``DATA_DIR/.plugin-breadcrumbs/``) naming the plugin and what it was doing,
written and fsync'd before the plugin's code runs, and removed when it returns (raising is
returning). A breadcrumb whose process is gone (not this one, and no live process with that
id and start time) is one the plugin never came back from: the next start disables that
plugin with the reason (:meth:`PluginHost.load_all`), and ``easel doctor`` shows it.

A process that exits normally removes its own breadcrumbs (a hung hook's included: that
plugin was already switched off for hanging). A SIGKILL that lands while a hook runs looks
the same as a plugin that killed the process: the plugin is disabled and an owner enables it
again; a false alarm is cheaper than a crash loop.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER = ".plugin-breadcrumbs"
"""The breadcrumbs' folder, in the data folder."""


@dataclass(frozen=True)
class Crumb:
    """One breadcrumb read back: the plugin, what was being done (``import`` or
    ``hook easel_x``), the process and when."""

    path: Path
    plugin: str
    what: str
    pid: int
    started: str | None
    at: float

    def reason(self) -> str:
        """Why the plugin is switched off, for the record and the owners."""
        doing = "while it was being imported" if self.what == "import" else f"in its {self.what}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return (
            f"the process ({self.pid}) ended {doing} at {when} and the plugin never returned: "
            "it may have crashed or exited the process; enable it again once it is fixed"
        )


def _process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), to tell a reused id apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return stat.rsplit(")", 1)[1].split()[19]
    except IndexError:
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    now = _process_start(pid)
    return started is None or now is None or now == started


class Breadcrumbs:
    """The breadcrumbs of one process in ``folder`` (see the module's docstring). Never
    raises: a data folder that cannot be written only loses the breadcrumbs (logged once)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.pid = os.getpid()
        self.started = _process_start(self.pid)
        self._seq = itertools.count()
        self._mine: set[Path] = set()
        self._lock = threading.Lock()
        self._warned = False
        _LIVE.add(self)

    def drop(self, plugin: str, what: str) -> Path | None:
        """Leave a breadcrumb (fsync'd) before calling ``plugin``'s code; its path, or None
        when it could not be written."""
        if os.getpid() != self.pid:  # a forked child: its own process, its own id
            self.pid, self.started = os.getpid(), _process_start(os.getpid())
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", plugin)[:80]
        path = self.folder / f"{self.pid}-{next(self._seq)}-{safe}.json"
        data = {
            "plugin": plugin,
            "what": what,
            "pid": self.pid,
            "started": self.started,
            "at": time.time(),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, json.dumps(data).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot leave plugin breadcrumbs in %s: %s", self.folder, exc)
            return None
        with self._lock:
            self._mine.add(path)
        return path

    def pick_up(self, path: Path | None) -> None:
        """Remove a breadcrumb: the plugin's code returned."""
        if path is None:
            return
        with self._lock:
            self._mine.discard(path)
        with contextlib.suppress(OSError):
            path.unlink()

    @contextlib.contextmanager
    def leave(self, plugin: str, what: str) -> Iterator[None]:
        """A breadcrumb for the duration of the block."""
        path = self.drop(plugin, what)
        try:
            yield
        finally:
            self.pick_up(path)

    def clear_own(self) -> None:
        """Remove this process's breadcrumbs (at a normal exit)."""
        with self._lock:
            mine, self._mine = self._mine, set()
        for path in mine:
            with contextlib.suppress(OSError):
                path.unlink()

    def stale(self) -> list[Crumb]:
        """Breadcrumbs left by processes that are gone: plugins that never returned."""
        return stale_crumbs(self.folder, own=(self.pid, self.started))


_LIVE: weakref.WeakSet[Breadcrumbs] = weakref.WeakSet()


@atexit.register
def _clear_at_exit() -> None:
    """A normal exit: every host's breadcrumbs of this process go (hung calls' included)."""
    for crumbs in list(_LIVE):
        crumbs.clear_own()


def stale_crumbs(folder: Path, own: tuple[int, str | None] | None = None) -> list[Crumb]:
    """The breadcrumbs in ``folder`` whose process is gone (``own``, this process's id and
    start time, is never gone). An unreadable breadcrumb (cut short while written, before the
    plugin ran) is removed."""
    try:
        paths = sorted(Path(folder).glob("*.json"))
    except OSError:
        return []
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            crumb = Crumb(
                path,
                str(data["plugin"]),
                str(data["what"]),
                int(data["pid"]),
                data.get("started"),
                float(data.get("at") or 0),
            )
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if own is not None and (crumb.pid, crumb.started) == own:
            continue
        if _alive(crumb.pid, crumb.started) and not (
            own is not None and crumb.pid == own[0]  # our id, another start: a previous life
        ):
            continue
        out.append(crumb)
    return out


def forget(crumb: Crumb) -> None:
    """Remove a stale breadcrumb once its plugin is recorded as failed."""
    with contextlib.suppress(OSError):
        crumb.path.unlink()


__all__ = ["FOLDER", "Breadcrumbs", "Crumb", "forget", "stale_crumbs"]
