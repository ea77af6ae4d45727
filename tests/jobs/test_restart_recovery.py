"""Restart recovery with a real process killed mid-job: what was queued or running runs
after the next start, and every result is recorded and posted exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from db.engine import Database
from db.models import Generation, Job, JobStatus

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("recovery_process.py")
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["EASEL_CONFIG"] = os.devnull
    return env


def test_jobs_survive_a_killed_process_and_are_posted_once(tmp_path, cache_folder):
    db_url = f"sqlite:///{tmp_path / 'easel.sqlite3'}"
    data, posts, marker = tmp_path / "data", tmp_path / "posts.txt", tmp_path / "marker.json"
    common = [db_url, str(data), str(cache_folder), str(posts)]
    first = subprocess.Popen(
        [sys.executable, str(SCRIPT), "first", *common, str(marker)],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None, (
                f"the first process ended early: {first.communicate()[1][-3000:]}"
            )
            assert time.monotonic() < deadline, (
                "the first process never reached the middle of its job"
            )
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # no clean shutdown of any kind
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    ids = json.loads(marker.read_text())
    interrupted = ids[2]

    db = Database(db_url)
    try:
        with db.session() as session:
            assert session.get(Job, interrupted).status is JobStatus.RUNNING  # as the crash left it
            assert session.get(Job, ids[0]).status is JobStatus.DONE

        second = subprocess.run(
            [sys.executable, str(SCRIPT), "second", *common],
            env=_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert second.returncode == 0, second.stderr[-3000:]
        report = json.loads(second.stdout.strip().splitlines()[-1])
        assert report["requeued"] == [interrupted]
        assert sorted(report["resumed"]) == sorted([interrupted, ids[1], ids[3]])

        lines = posts.read_text().splitlines()
        counts = Counter(line.split()[0] for line in lines)
        assert counts == Counter({str(i): 1 for i in ids}), lines  # each posted exactly once
        assert all(line.split()[1:] == ["done", "1"] for line in lines)
        with db.session() as session:
            for job_id in ids:
                job = session.get(Job, job_id)
                assert (
                    job.status is JobStatus.DONE
                    and job.posted
                    and job.posted_message_id == 5000 + job_id
                )
                generation = session.get(Generation, job.generation_id)
                assert generation.status is JobStatus.DONE and len(generation.outputs) == 1
            assert session.get(Job, interrupted).attempts == 2  # ran again from the start
            assert (
                session.get(Job, ids[0]).attempts == 1
            )  # finished before the crash: not run again
    finally:
        db.close()
