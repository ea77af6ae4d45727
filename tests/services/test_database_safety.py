"""Opening the database safely: from many threads and processes at once (migrations one
at a time), and never over an existing file that is empty, not SQLite, truncated or
damaged (only a missing file becomes a new database)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.services.database import open_database
from bot.settings import Settings
from db import migrate
from db.engine import DatabaseFileError

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["EASEL_CONFIG"] = os.devnull
    return env


THREADS_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from bot.services.database import open_database
    from bot.settings import Settings
    from db import migrate

    settings = Settings(data_dir=Path(sys.argv[1]))
    barrier = threading.Barrier(50)
    failures = []

    def worker():
        barrier.wait()
        try:
            with open_database(settings) as db:
                assert db.current() == migrate.head()
        except BaseException as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{len(failures)} failures")
    for f in sorted(set(failures))[:5]:
        print(f)
    sys.exit(1 if failures else 0)
    """
)


def test_fifty_threads_open_one_new_database(tmp_path):
    # In a child process: on the unfixed code some of these crashed the interpreter.
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT, str(data)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "0 failures" in result.stdout
    with open_database(Settings(data_dir=data)) as db:
        assert db.current() == migrate.head()
        assert migrate.schema_differences(db.engine) == []


PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bot.services.database import open_database
    from bot.settings import Settings
    from db import migrate

    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    with open_database(Settings(data_dir=Path(sys.argv[1]))) as db:
        print(db.current() == migrate.head())
    """
)


@pytest.mark.slow
def test_several_processes_open_one_new_database(tmp_path):
    data, go = tmp_path / "data", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_SCRIPT, str(data), str(go)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    time.sleep(3)  # all of them imported and waiting
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == "True"
    assert (data / "easel.sqlite3.lock").is_file()  # the lock file beside the database
    with open_database(Settings(data_dir=data)) as db:
        assert migrate.schema_differences(db.engine) == []


@pytest.fixture
def migrated(tmp_path) -> Path:
    """A database file made by an earlier run (this process never opened this path)."""
    made = tmp_path / "made"
    with open_database(Settings(data_dir=made)):
        pass
    path = tmp_path / "data" / "easel.sqlite3"
    path.parent.mkdir()
    shutil.copyfile(made / "easel.sqlite3", path)
    return path


def _refused(path: Path, match: str) -> DatabaseFileError:
    before = path.read_bytes()
    with pytest.raises(DatabaseFileError, match=match) as caught:
        open_database(Settings(data_dir=path.parent))
    assert str(path) in str(caught.value) and "restore it from a backup" in str(caught.value)
    assert path.read_bytes() == before  # left as it was, for the operator to restore
    return caught.value


def test_a_zero_byte_database_is_refused_not_migrated(tmp_path):
    path = tmp_path / "data" / "easel.sqlite3"
    path.parent.mkdir()
    path.touch()
    _refused(path, r"is empty \(0 bytes\)")
    with pytest.raises(DatabaseFileError):  # also without migrating
        open_database(Settings(data_dir=path.parent), upgrade=False)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "data" / "easel.sqlite3"
    path.parent.mkdir()
    path.write_bytes(os.urandom(8192))
    _refused(path, "is not a SQLite database")


def test_a_truncated_database_is_refused(migrated):
    data = migrated.read_bytes()
    migrated.write_bytes(data[: len(data) // 2])
    _refused(migrated, "is truncated")


def test_a_damaged_database_is_refused(migrated):
    data = bytearray(migrated.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)  # the header stays, every other page is noise
    migrated.write_bytes(bytes(data))
    _refused(migrated, r"is damaged \(SQLite says: .*malformed")


def test_a_missing_file_is_created_whole(tmp_path):
    data = tmp_path / "data"
    with open_database(Settings(data_dir=data)) as db:
        assert db.current() == migrate.head()
    assert sorted(p.name for p in data.iterdir() if "sqlite3" in p.name and "-" not in p.name) == [
        "easel.sqlite3",
        "easel.sqlite3.lock",
    ]
    assert not (data / ".easel.sqlite3.new").exists()


def test_a_good_copy_opens(migrated, tmp_path):
    copy = tmp_path / "copy" / "easel.sqlite3"
    copy.parent.mkdir()
    shutil.copyfile(migrated, copy)
    with open_database(Settings(data_dir=copy.parent)) as db:
        assert db.current() == migrate.head()
