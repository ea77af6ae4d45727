"""File safety, in one place: writing files atomically (and, as later helpers land here,
refusing pickles, checking safetensors headers and keeping names inside their folders).

Everything in easel that writes a file a user or the operator relies on goes through
:func:`write_atomic`, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def ordinary_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what a plain ``open()`` would have given."""
    return mode & ~_UMASK


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, ordinary_mode())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
