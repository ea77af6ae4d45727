"""``easel queue``: what runs and waits, read from the database."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from bot.cli import cli
from db import generations as db_generations
from db import jobs as db_jobs
from db.engine import Database


def test_easel_queue_lists_running_and_waiting_jobs_in_fair_order(
    tmp_path, cache_folder, monkeypatch
):
    data = tmp_path / "data"
    for key, value in {
        "EASEL_DATA_DIR": str(data),
        "EASEL_CACHE_FOLDER": str(cache_folder),
        "EASEL_CONFIG": os.devnull,
    }.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    result = runner.invoke(cli, ["queue"])
    assert result.exit_code == 0, result.output
    assert "the queue is empty" in result.output

    db = Database(f"sqlite:///{(data / 'easel.sqlite3').resolve()}")
    try:
        ids = []
        for user, prompt in ((1, "a1"), (1, "a2"), (2, "b1"), (3, "c1")):

            def create(session, user=user, prompt=prompt):
                gen = db_generations.record_generation(
                    session, user, prompt=prompt, workflow={"x": {}}
                )
                return db_jobs.create_job(
                    session,
                    user,
                    request={"request": {"prompt": prompt, "steps": 3}},
                    generation_id=gen.id,
                ).id

            ids.append(db.run_sync(create))
        db.run_sync(db_jobs.set_job_status, ids[0], "running", worker="local:cpu")
    finally:
        db.close()

    result = runner.invoke(cli, ["queue"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "1 running, 3 waiting"
    assert "running" in lines[1] and f"job {ids[0]}" in lines[1] and "local:cpu" in lines[1]
    # a2 waits behind b1 and c1: round robin between users.
    assert [line.split()[2] for line in lines[2:]] == [str(ids[1] + 1), str(ids[3]), str(ids[1])]

    result = runner.invoke(cli, ["queue", "--json", "--user", "1"])
    rows = json.loads(result.output)
    assert [(r["job_id"], r["status"], r["position"]) for r in rows] == [
        (ids[0], "running", None),
        (ids[1], "queued", 3),
    ]
