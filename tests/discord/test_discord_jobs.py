"""The bot on the durable job service, in process and without Discord: a status follows
one job's events from ``JobService.subscribe`` (its place as other jobs move, throttled
progress, the end), and the bot's poster posts each finished job once, with the job's
nonce. A stub worker stands in for the GPU so the timings are the test's own."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from bot.discord.reporting import Reporter, Status, job_events
from bot.services.generation import Destination, GenerationService, Submission
from bot.services.history import History
from bot.services.jobs import JobResult, JobService
from bot.settings import Settings
from db import jobs as db_jobs
from db.engine import Database
from runner import events as ev
from runner.jobs import DONE, FAILED, EventBus, JobEnded, JobOutcome, JobRunner, OutputImage
from runner.templates import GenerationRequest

INTERVAL = 0.3


class RecordingStatus(Status):
    """Keeps what it showed, and when."""

    def __init__(self, interval: float = INTERVAL, on_edit=None):
        super().__init__(interval)
        self.shown: list[tuple[float, str]] = []
        self.on_edit = on_edit

    async def _edit(self, text, file=None):
        if self.on_edit is not None:
            await self.on_edit(text)
        self.shown.append((time.monotonic(), text))

    @property
    def texts(self) -> list[str]:
        return [t for _, t in self.shown]


def progress_gaps(status: RecordingStatus) -> list[float]:
    """Time between progress edits, but the last (the finished job's full bar, which
    always goes through)."""
    times = [at for at, text in status.shown if "Generating" in text][:-1]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_a_status_follows_its_job_its_place_and_throttled_progress():
    """Other jobs starting and ending move the job up; 60 progress events in 1.2 s give a
    few edits at least INTERVAL apart; the last step shows once the job is finished."""
    positions = {"7": 3}
    bus = EventBus()

    def publish_all() -> None:
        time.sleep(0.1)
        bus.publish(ev.Queued("7", position=3))
        bus.publish(ev.Queued("9", position=4))  # behind it: no move
        positions["7"] = 2
        bus.publish(ev.Started("5"))
        bus.publish(ev.Progress("5", step=1, total=2))  # another job's progress: not shown
        time.sleep(INTERVAL + 0.05)
        positions["7"] = 1
        bus.publish(JobEnded("5", status=DONE))
        time.sleep(INTERVAL + 0.05)
        positions["7"] = 0
        bus.publish(ev.Started("7"))
        for step in range(1, 61):
            bus.publish(ev.NodeStarted("7", node_id="3"))  # never takes a progress turn
            bus.publish(ev.Progress("7", step=step, total=60))
            time.sleep(0.02)
        bus.publish(ev.Finished("7"))
        bus.publish(JobEnded("7", status=DONE))

    bot = SimpleNamespace(
        settings=SimpleNamespace(progress_interval_s=INTERVAL),
        generations=SimpleNamespace(
            position=lambda job_id: positions[str(job_id)], estimate_wait=lambda job_id: None
        ),
        jobs=SimpleNamespace(paused=False),
    )
    reporter = Reporter(bot)
    status = RecordingStatus()

    async def scenario():
        subscription = bus.subscribe(None)
        thread = threading.Thread(target=publish_all)
        thread.start()
        await asyncio.wait_for(
            reporter._follow(subscription, SimpleNamespace(job_id=7), status), 10
        )
        thread.join()

    asyncio.run(scenario())
    texts = status.texts
    assert texts[:3] == [
        "⏳ Queued: position 3. Job #7.",
        "⏳ Queued: position 2. Job #7.",
        "⏳ Queued: you are next. Job #7.",
    ], texts
    assert not any("Queued" in t for t in texts[3:])
    progress = [t for t in texts if "Generating" in t]
    assert 3 <= len(progress) < 15, texts  # of 60 progress events
    assert all(gap >= INTERVAL * 0.6 for gap in progress_gaps(status)), progress_gaps(status)
    assert progress[-1].startswith("🎨 Generating: step 60 of 60")


def test_job_events_keep_one_job_and_end_with_it():
    async def scenario():
        bus = EventBus()
        subscription = bus.subscribe(None)
        for event in (
            ev.Queued("1", position=1),
            ev.NodeStarted("1", node_id="4"),
            ev.Progress("2", step=1, total=1),
            ev.Progress("1", step=1, total=1),
            JobEnded("1", status=FAILED, error="boom"),
            ev.Progress("1", step=1, total=1),
        ):
            bus.publish(event)
        return [e.type async for e in job_events(subscription, 1)]

    assert asyncio.run(scenario()) == ["queued", "progress", "job_ended"]


# -- the bot's status and poster on a real JobService ---------------------------------


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


class StubWorker:
    """Runs a job as 40 quick steps; a prompt containing "fail" fails."""

    name = "stub"

    def __init__(self):
        self.started = threading.Event()

    def run(self, jobs, emit, tokens):
        outcomes = []
        for job in jobs:
            self.started.set()
            emit(ev.Started(job.job_id))
            prompt = next(
                n["inputs"]["text"]
                for n in job.workflow.values()
                if n.get("class_type") == "CLIPTextEncode"
            )
            for step in range(1, 41):
                emit(ev.Progress(job.job_id, step=step, total=40))
                time.sleep(0.02)
            if "fail" in prompt:
                emit(ev.Failed(job.job_id, message="the sampler fell over"))
                outcomes.append(JobOutcome(job.job_id, FAILED, error="the sampler fell over"))
                continue
            emit(ev.Finished(job.job_id))
            outcomes.append(
                JobOutcome(
                    job.job_id, DONE, images=[OutputImage("x.png", png_bytes())], seconds=0.8
                )
            )
        return outcomes

    def cancel(self, job_id):
        pass

    def affinity(self, job):
        return 0

    def close(self):
        pass


class Channel:
    def __init__(self):
        self.sent: list[dict] = []

    async def send(self, **kwargs):
        self.sent.append(kwargs)
        message_id = 9000 + len(self.sent)
        return SimpleNamespace(
            id=message_id, jump_url=f"https://discord.com/channels/1/99/{message_id}"
        )


@pytest.fixture
def stub_bot(tmp_path, cache_folder):
    from runner.environment import Environment

    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        cache_folder=cache_folder,
        progress_interval_s=INTERVAL,
        safety="off",
        owner_ids=[1],
    )
    db = Database(f"sqlite:///{tmp_path / 'easel.sqlite3'}")
    db.upgrade()
    env = Environment(settings)
    worker = StubWorker()
    service = JobService(
        db, settings, JobRunner([worker]), history=History.for_environment(db, env)
    )
    channel = Channel()
    bot = SimpleNamespace(
        settings=settings,
        jobs=service,
        generations=GenerationService(env, db, settings, service),
        database=db,
        get_channel=lambda channel_id: channel if channel_id == 99 else None,
        get_partial_messageable=lambda channel_id, guild_id=None: channel,
        get_guild=lambda guild_id: None,
    )
    bot.reporter = Reporter(bot)
    service.poster = bot.reporter.post_result
    bot.channel, bot.worker = channel, worker
    yield bot
    service.stop(timeout=10)
    env.close()
    db.close()


def request(prompt: str) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        negative="",
        seed=5,
        steps=40,
        cfg=7.0,
        sampler="euler",
        scheduler="normal",
        width=64,
        height=64,
        batch_size=1,
        model="tiny-random",
        strength=0.75,
    )


def test_the_bot_posts_each_result_once_and_shows_a_stored_job(stub_bot):
    bot = stub_bot
    seen_in_db: list[tuple] = []

    async def check_stored(text):
        match = re.search(r"Job #(\d+)", text)
        if match and not seen_in_db:  # the first time the job is shown, it is stored
            job = await bot.database.read(db_jobs.get_job, int(match[1]))
            seen_in_db.append((job.id, job.user_id))

    async def scenario():
        await asyncio.to_thread(bot.jobs.start, loop=asyncio.get_running_loop())
        bot.jobs.pause(1)  # so the status shows a place in the queue first
        status = RecordingStatus(on_edit=check_stored)
        dest = Destination(user_id=42, channel_id=99, guild_id=1)
        task = asyncio.create_task(
            bot.reporter.run(Submission(request("a heron at dusk")), dest, status)
        )
        await asyncio.sleep(0.5)
        bot.jobs.resume(1)
        message = await asyncio.wait_for(task, 30)
        failed = RecordingStatus()
        await asyncio.wait_for(
            bot.reporter.run(Submission(request("please fail")), dest, failed), 30
        )
        return status, message, failed

    status, message, failed = asyncio.run(scenario())
    texts = status.texts
    assert texts[0].startswith("⏳ Queued: you are next (the queue is paused by an owner).")
    job_id = int(re.search(r"Job #(\d+)", texts[0])[1])
    assert seen_in_db == [(job_id, 42)]
    progress = [t for t in texts if "Generating" in t]
    assert 2 <= len(progress) < 10, texts  # of 40 progress events
    assert all(gap >= INTERVAL * 0.6 for gap in progress_gaps(status))
    assert texts[-1] == f"✅ Done: {message.jump_url}"
    # Posted once, with the job's nonce; marked posted before "Done" was shown.
    (sent,) = bot.channel.sent[:1]
    assert sent["nonce"] == f"easel-job-{job_id}"
    assert sent["content"].startswith("<@42> **a heron at dusk** · seed 5 · 40 steps")
    assert [u.id for u in sent["allowed_mentions"].users] == [42]
    job = bot.database.read_sync(db_jobs.get_job, job_id)
    assert (job.status.value, job.posted, job.posted_message_id) == ("done", True, message.id)
    # A failure is one sentence in the status, and nothing in the channel.
    assert failed.texts[-1] == "⚠️ The generation failed: the sampler fell over."
    assert len(bot.channel.sent) == 1


def test_a_failure_after_a_restart_is_told_in_the_channel(stub_bot):
    """With no status to show it (the job ran after a restart), a failed job gets a
    one-line notice in its channel, mentioning the user, with the job's nonce."""
    result = JobResult(
        job_id=12,
        user_id=42,
        generation_id=3,
        status=FAILED,
        error="out of memory",
        channel_id=99,
        prompt="a heron",
    )
    message_id = asyncio.run(stub_bot.reporter.post_result(result))
    (sent,) = stub_bot.channel.sent
    assert message_id == 9001 and sent["nonce"] == "easel-job-12"
    assert sent["content"] == "<@42> a heron (#3): ⚠️ The generation failed: out of memory."
