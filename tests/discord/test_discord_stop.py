"""A stop request (SIGTERM) always stops ``easel bot`` within a few seconds, also while
Discord does not answer (here: the stand-in holds every channel post, as an unreachable
Discord would); jobs not finished stay queued in the database for the next start, and a
result not posted is posted then."""

from __future__ import annotations

import sqlite3
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def rows(data_dir, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_sigterm_stops_the_bot_while_discord_does_not_answer(server, make_bot):
    bot = make_bot(easel_max_batch_jobs="1", easel_shutdown_timeout_s="2")
    server.hold_posts()  # from now on no channel post gets an answer
    try:
        held = server.slash("imagine", {"prompt": "a held fox --seed 1"})
        server.wait_for(
            lambda: rows(bot.data_dir, "select status, posted from jobs") == [("done", 0)],
            120,
            "the first job to finish (its post hangs)",
        )
        paused = server.slash("queue", {"action": "pause"}, user=server.owner)
        server.wait_for(lambda: "paused" in paused.last_text, 30, "the pause")
        waiting = server.slash("imagine", {"prompt": "waits for the next start --seed 2"})
        server.wait_for(lambda: "paused by an owner" in waiting.last_text, 30, "queued")
        assert held.original is not None
        started = time.monotonic()
        bot.proc.terminate()  # SIGTERM
        try:
            bot.proc.wait(20)
        except Exception:
            bot.proc.kill()
            bot.proc.wait(10)
            raise AssertionError(
                f"SIGTERM did not stop the bot within 20 s:\n{bot.output()[-4000:]}"
            ) from None
        took = time.monotonic() - started
    finally:
        server.release_posts()
    assert bot.proc.returncode == 0, bot.output()[-4000:]
    assert took < 12, f"the bot took {took:.1f} s to stop"
    statuses = rows(bot.data_dir, "select status, posted from jobs order by id")
    assert statuses == [("done", 0), ("queued", 0)], statuses
