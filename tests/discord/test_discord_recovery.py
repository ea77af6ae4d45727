"""Restart recovery through the bot: the real ``easel bot`` is killed (SIGKILL, no
clean shutdown of any kind) while jobs are queued and running, or between posting a
result and recording that it did; the next ``easel bot`` on the same data runs what was
left and posts every result exactly once (the stand-in Discord's channel and the
database agree), also when Discord has long forgotten the message's nonce; a job that
takes the bot down every time fails after ``max_job_attempts``; and the private statuses
of the killed run say where their jobs went."""

from __future__ import annotations

import re
import sqlite3

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


def job_number(server, log) -> int:
    """The job number the status showed with its place in the queue."""

    def find():
        for edit in log.edits:
            match = re.search(r"Job #(\d+)", edit.get("content") or "")
            if match:
                return int(match[1])
        return None

    return server.wait_for(find, 30, "the job's number in its status")


def kill(bot) -> None:
    bot.proc.kill()  # SIGKILL
    bot.proc.wait(10)


def posted_once(server, data_dir, job: int, timeout: float = 90) -> dict:
    """The one channel message of ``job`` (by its nonce), once the database says it was
    posted as that message; fails if there is more than one."""
    nonce = f"easel-job-{job}"
    server.wait_for(lambda: server.messages_with_nonce(nonce), timeout, f"the result of job {job}")

    def recorded():
        return rows(data_dir, "select posted from jobs where id=?", job) == [(1,)]

    server.wait_for(recorded, 30, f"job {job} to be marked posted")
    (message,) = server.messages_with_nonce(nonce)
    assert rows(
        data_dir,
        "select j.status, j.posted_message_id, g.message_id, g.status from jobs j "
        "join generations g on g.id = j.generation_id where j.id=?",
        job,
    ) == [("done", int(message["id"]), int(message["id"]), "done")]
    return message


@pytest.fixture(scope="module")
def state():
    return {}


def test_jobs_queued_and_running_when_the_bot_is_killed_run_after_a_restart(
    server, make_bot, state
):
    bot = make_bot()
    ann, ben = server.user(6001, "ann"), server.user(6002, "ben")
    long = server.slash(
        "imagine", {"prompt": "a long night --steps 100 --size 256x256 --seed 1"}, user=ann
    )
    server.wait_for(lambda: "Generating: step" in long.last_text, 60, "the long job to sample")
    short = server.slash("imagine", {"prompt": "a short day --steps 3 --seed 2"}, user=ben)
    running, waiting = job_number(server, long), job_number(server, short)
    assert "Queued" in short.last_text
    kill(bot)
    assert rows(bot.data_dir, "select id, status, posted, attempts from jobs order by id") == [
        (running, "running", 0, 1),
        (waiting, "queued", 0, 0),
    ]
    assert not server.bot_messages()

    state["bot"] = make_bot()  # a new process on the same data folder
    first = posted_once(server, bot.data_dir, running)
    second = posted_once(server, bot.data_dir, waiting)
    assert first["content"].startswith("<@6001> **a long night** · seed 1 · 100 steps")
    assert second["content"].startswith("<@6002> **a short day** · seed 2 · 3 steps")
    assert [a["filename"] for a in first["attachments"]] == [
        f"easel_{rows(bot.data_dir, 'select generation_id from jobs where id=?', running)[0][0]}.png"
    ]
    # The interrupted job ran again from the start; the waiting one ran once.
    assert rows(bot.data_dir, "select id, attempts from jobs order by id") == [
        (running, 2),
        (waiting, 1),
    ]
    assert len(server.bot_messages()) == 2 and not server.nonce_repeats
    # The private statuses of the killed run say where the jobs went, not "Queued".
    for log, message in ((long, first), (short, second)):
        server.wait_for(
            lambda log=log, message=message: message["id"] in log.last_text,
            30,
            "the old status to link the result",
        )
        assert log.last_text.startswith("✅ Done:")
    assert any("The bot restarted" in (e.get("content") or "") for e in short.edits)


def test_a_result_posted_just_before_the_bot_is_killed_is_not_posted_again(server, make_bot, state):
    bot = state["bot"]
    server.hold_posts()  # the result reaches the channel, but the bot never hears back
    try:
        log = server.slash("imagine", {"prompt": "bad timing --seed 3"}, user=server.user(6003))
        job = job_number(server, log)
        nonce = f"easel-job-{job}"
        (message,) = server.wait_for(
            lambda: server.messages_with_nonce(nonce), 60, "the result to reach the channel"
        )
        kill(bot)
    finally:
        server.release_posts()
    assert rows(bot.data_dir, "select status, posted from jobs where id=?", job) == [("done", 0)]
    before = len(server.bot_messages())
    # The bot stays down longer than Discord remembers nonces: a repeat would post twice.
    server.forget_nonces()
    reads = server.history_reads

    state["bot"] = make_bot()
    # The restart looks for the message in the channel and adopts it: nothing is sent.
    server.wait_for(
        lambda: rows(bot.data_dir, "select posted from jobs where id=?", job) == [(1,)],
        60,
        f"job {job} to be marked posted",
    )
    assert server.history_reads > reads
    assert posted_once(server, bot.data_dir, job)["id"] == message["id"]
    assert len(server.bot_messages()) == before and not server.nonce_repeats
    sends = [r for r in server.requests_to("POST", "/messages") if (r.json or {}).get("nonce")]
    assert [r.json["nonce"] for r in sends].count(nonce) == 1


def test_a_job_that_dies_with_the_bot_every_time_fails_after_max_job_attempts(
    server, make_bot, state
):
    kill(state.pop("bot"))
    user = server.user(6004, "dora")
    bot = make_bot(easel_max_job_attempts="2")
    log = server.slash(
        "imagine", {"prompt": "a crash loop --steps 100 --size 256x256 --seed 4"}, user=user
    )
    server.wait_for(lambda: "Generating: step" in log.last_text, 60, "the job to sample")
    job = job_number(server, log)
    kill(bot)  # the job took the bot down (as a plugin that exits or an OOM kill would)

    bot = make_bot(easel_max_job_attempts="2")
    server.wait_for(
        lambda: (
            rows(bot.data_dir, "select status, attempts from jobs where id=?", job)
            == [("running", 2)]
        ),
        90,
        "the second attempt",
    )
    kill(bot)  # and again

    state["bot"] = make_bot(easel_max_job_attempts="2")
    # Not a third run: the job fails, saying why, and its user is told in the channel.
    notice = server.wait_for(
        lambda: [m for m in server.bot_messages() if m["content"].startswith("<@6004>")],
        60,
        "the failure notice",
    )
    (message,) = notice
    assert "started 2 times" in message["content"], message["content"]
    assert "not tried again" in message["content"]
    server.wait_for(
        lambda: (
            rows(bot.data_dir, "select status, attempts, posted from jobs where id=?", job)
            == [("failed", 2, 1)]
        ),
        30,
        "the failed job to be marked posted",
    )
    assert rows(
        bot.data_dir,
        "select g.status from jobs j join generations g on g.id = j.generation_id where j.id=?",
        job,
    ) == [("failed",)]
    server.wait_for(lambda: "not tried again" in log.last_text, 30, "the old status to say so")
