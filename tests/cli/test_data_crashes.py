"""Nothing of a user's is left behind by a crash: real ``easel`` processes are SIGKILLed at
the worst moment, and the next start (the real console script) finishes the job.

- ``easel forget`` killed after the rows' deletion committed, before the files went: the
  next start deletes the files (and a second ``forget`` is harmless).
- ``easel lora add`` killed while the upload waits in ``lora-library/.incoming/``: the next
  start removes the staging file, but never one a live upload is using.

The killed process is the real command line, run by a small script that first replaces
one internal function with one that says "here" and sleeps, so the kill lands exactly
there.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cli.test_data_commands import ALICE, BOB, _record_generations
from tests.services.lora_factory import fake_lora, files_under

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"

FORGET_PAUSED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import bot.services.userdata as userdata

    def paused(*args, **kwargs):  # the file deletion, after the rows' commit
        Path(sys.argv[1]).write_text("rows committed")
        time.sleep(600)

    userdata.delete_unreferenced = paused
    from bot.cli import cli
    cli(["forget", "--user", sys.argv[2], "--yes"])
    """
)

LORA_ADD_PAUSED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import bot.services.lora_files as lora_files

    def paused(path, **kwargs):  # the upload is staged; its inspection starts
        Path(sys.argv[1]).write_text(str(path))
        time.sleep(600)

    lora_files.inspect_lora_file = paused
    from bot.cli import cli
    cli(["lora", "add", sys.argv[2], "--user", sys.argv[3], "--name", "style"])
    """
)


@pytest.fixture
def data_dir(tmp_path, cache_folder, monkeypatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("EASEL_DATA_DIR", str(folder))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    monkeypatch.setenv("EASEL_CONFIG", os.devnull)
    monkeypatch.delenv("EASEL_DATABASE_URL", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return folder


def easel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EASEL, *map(str, args)], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


def start_paused(script: str, marker: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(marker), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited before the pause: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "never reached the pause"
        time.sleep(0.05)
    return proc


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def rows_of(data_dir: Path, user_id: int) -> int:
    conn = sqlite3.connect(f"{(data_dir / 'easel.sqlite3').as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM users WHERE id = ?", (user_id,)).fetchone()[0]
    finally:
        conn.close()


def stored_files(data_dir: Path) -> set[str]:
    return {
        p.relative_to(data_dir).as_posix()
        for folder in ("images", "lora-library")
        for p in files_under(data_dir / folder)
        if ".incoming" not in p.parts
    }


def test_forget_killed_between_commit_and_file_deletion_is_finished_at_next_start(
    data_dir, tmp_path
):
    _record_generations(data_dir)  # three images of Alice's, one of Bob's
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(fake_lora("sd1"))
    added = easel("lora", "add", lora, "--user", ALICE, "--name", "style")
    assert added.returncode == 0, added.stderr
    before = stored_files(data_dir)
    assert len(before) == 5  # 4 images + 1 LoRA

    proc = start_paused(FORGET_PAUSED, tmp_path / "paused", ALICE)
    assert rows_of(data_dir, ALICE) == 0  # the deletion is committed...
    sigkill(proc)
    assert stored_files(data_dir) == before  # ...and the killed process left her files

    started = easel("users")  # the next start of anything that opens the data
    assert started.returncode == 0, started.stderr
    assert "4001" not in started.stdout and str(BOB) in started.stdout
    left = stored_files(data_dir)
    assert len(left) == 1 and left < before  # Bob's image only
    assert not any((data_dir / ".pending-deletions").glob("*.json"))

    again = easel("forget", "--user", ALICE, "--yes")
    assert again.returncode == 0, again.stderr
    assert "0 row(s), 0 file(s) deleted" in again.stdout
    assert stored_files(data_dir) == left


def test_killed_lora_add_leaves_no_staging_file_after_next_start(data_dir, tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(fake_lora("sd1"))
    assert easel("users").returncode == 0  # the database exists

    proc = start_paused(LORA_ADD_PAUSED, tmp_path / "paused", lora, ALICE)
    staged = Path((tmp_path / "paused").read_text())
    assert staged.parent == data_dir / "lora-library" / ".incoming" and staged.is_file()
    time.sleep(3)  # older than any grace period
    # A start while the upload is alive leaves its file alone.
    assert easel("users").returncode == 0
    assert staged.is_file()

    sigkill(proc)
    assert staged.is_file()  # what the killed process left
    started = easel("lora", "list")
    assert started.returncode == 0, started.stderr
    assert not staged.exists()
    assert list((data_dir / "lora-library" / ".incoming").iterdir()) == []
    # And the library works as before.
    assert easel("lora", "add", lora, "--user", ALICE, "--name", "style").returncode == 0
