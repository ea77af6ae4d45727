"""Damaged databases and unusable data folders, as an operator meets them with the real
``easel`` console script: ``doctor`` says what is wrong and how to restore; ``bot``,
``generate`` and ``users`` say it in one sentence and exit 1, never with a traceback.

The tests run as root, where ``chmod`` does not stop writes: a data folder that cannot be
created is one under a regular file, and a full disk is a file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored) in the child process, so writes fail with
``EFBIG`` as they fail with ``ENOSPC`` on a full disk.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"


@pytest.fixture
def env(tmp_path, cache_folder) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "EASEL_DATA_DIR": str(tmp_path / "data"),
            "EASEL_CACHE_FOLDER": str(cache_folder),
            "EASEL_CONFIG": os.devnull,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
    )
    env.pop("EASEL_DATABASE_URL", None)
    return env


def easel(env, *args, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run(
        [EASEL, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit if limit_file_bytes is not None else None,
    )


def one_sentence(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("seed ")), lines
    return lines[-1]


@pytest.fixture
def database(env) -> Path:
    assert easel(env, "users").returncode == 0
    path = Path(env["EASEL_DATA_DIR"]) / "easel.sqlite3"
    conn = sqlite3.connect(path)
    with conn:  # enough rows for many pages
        conn.executemany(
            "INSERT INTO users (id, display_name, created_at, last_seen_at) VALUES (?, ?, ?, ?)",
            [(i, "x" * 200, "2026-01-01", "2026-01-01") for i in range(1, 2000)],
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "random bytes":
        path.write_bytes(os.urandom(len(data)))
    elif how == "zero bytes":
        path.write_bytes(b"")
    elif how == "pages overwritten":
        data[len(data) // 2 : len(data) // 2 + 8192] = os.urandom(8192)
        path.write_bytes(bytes(data))


def test_doctor_on_a_good_database(env, database):
    result = easel(env, "doctor", "--no-settings")
    assert f"database {database}: consistent" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("truncated", "is truncated"),
        ("random bytes", "is not a SQLite database"),
        ("zero bytes", "is empty (0 bytes)"),
        ("pages overwritten", "is damaged"),
    ],
)
def test_doctor_says_what_is_wrong_and_how_to_restore(env, database, how, said):
    damage(database, how)
    result = easel(env, "doctor", "--no-settings")
    assert result.returncode == 1, result.stdout
    assert f"[FAIL] database {database}: {said}" in result.stdout, result.stdout
    assert "restore easel.sqlite3 from a backup" in result.stdout
    assert "everything easel needs is in place" not in result.stdout


@pytest.mark.parametrize("how", ["truncated", "random bytes", "zero bytes"])
def test_users_on_a_damaged_database_is_one_sentence(env, database, how):
    damage(database, how)
    before = database.read_bytes()
    line = one_sentence(easel(env, "users"))
    assert line.startswith(f"error: the database file {database} ")
    assert "restore it from a backup" in line
    assert database.read_bytes() == before


def test_bot_on_a_corrupt_database_is_one_sentence(env, database):
    damage(database, "random bytes")
    env = {**env, "DISCORD_TOKEN": "x" * 20}
    # Nothing listens there: the bot must stop at the database, before any connection.
    env["EASEL_DISCORD_API_BASE"] = "http://127.0.0.1:9/api/v10"
    line = one_sentence(easel(env, "bot"))
    assert line.startswith(f"error: the database file {database} is not a SQLite database")


def test_users_when_the_data_folder_cannot_be_created(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**env, "EASEL_DATA_DIR": str(blocker / "data")}
    line = one_sentence(easel(env, "users"))
    assert f"cannot create the database's folder {blocker / 'data'}" in line
    assert "set data_dir (EASEL_DATA_DIR)" in line


GENERATE = ("generate", "a fox", "--steps", "1", "--width", "64", "--height", "64", "--seed", "1")


def test_generate_with_a_data_folder_that_cannot_be_created(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**env, "EASEL_DATA_DIR": str(blocker / "data")}
    line = one_sentence(easel(env, *GENERATE))
    assert line == (
        f"error: cannot create the data folder {blocker / 'data'} (a part of the path is a "
        "file, not a folder); set data_dir (EASEL_DATA_DIR) to a folder easel can write"
    )


def _full_disk_prefix() -> list[str]:
    """A command prefix that runs the rest in a private mount namespace where the folder
    ``$0`` is a 64 KiB tmpfs filled to the last byte: a real full disk (ENOSPC)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    flags = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    probe = subprocess.run([unshare, *flags, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    script = (
        'mount -t tmpfs -o size=64k easel-full "$0" || exit 99; '
        'head -c 1000000 /dev/zero > "$0/fill" 2>/dev/null; exec "$@"'
    )
    return [unshare, *flags, "sh", "-c", script]


def test_generate_on_a_full_disk(env, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    assert easel(env, *GENERATE, "--out", tmp_path / "warm.png").returncode == 0  # model cached
    out = full / "fox.png"
    result = subprocess.run(
        [*_full_disk_prefix(), str(full), EASEL, *GENERATE, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 99, result.stderr
    line = one_sentence(result)
    assert line == f"Error: cannot write the image {out}: No space left on device"
    assert not out.exists()


def test_generate_over_the_file_size_limit(env, tmp_path):
    # RLIMIT_FSIZE: every write past 2 KiB fails (EFBIG), the data folder's included.
    assert easel(env, *GENERATE, "--out", tmp_path / "warm.png").returncode == 0
    out = tmp_path / "fox.png"
    line = one_sentence(easel(env, *GENERATE, "--out", out, limit_file_bytes=2048))
    assert line.startswith("error: ") and "File too large" in line
    assert not out.exists()
