"""The durable job service on a real SQLite file: storing before acknowledging, the
per-user cap, cancellation, admin controls, posting once, estimates, async use."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.services.jobs import (
    JobAlreadyFinished,
    JobNotFound,
    JobService,
    NotAllowed,
    QueueFull,
    queue_from_database,
)
from db import jobs as db_jobs
from db import users as db_users
from db.engine import Database
from db.models import Generation, Job, JobStatus
from runner.jobs import throttled
from runner.templates import GenerationRequest

OWNER = 1


def request(prompt: str, **options) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, **{"steps": 3, "width": 64, "height": 64, "cfg": 5.0, **options}
    )


@pytest.fixture
def database(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'easel.sqlite3'}")
    db.upgrade()
    yield db
    db.close()


@pytest.fixture
def bot_settings(tmp_path, cache_folder):
    from bot.settings import Settings

    return Settings(
        data_dir=tmp_path / "data",
        cache_folder=cache_folder,
        owner_ids=[OWNER],
        max_queued_per_user=2,
        role_priorities={"patron": 5},
        max_batch_jobs=1,
    )


class Posts:
    """A poster that records what it posts (thread-safe), returning message ids."""

    def __init__(self, fail_for: set[int] = frozenset()):
        self.posted: list[tuple[int, str, int]] = []
        self.fail_for = set(fail_for)
        self._lock = threading.Lock()

    def __call__(self, result):
        with self._lock:
            if result.job_id in self.fail_for:
                self.fail_for.discard(result.job_id)
                raise ConnectionError("Discord is down")
            self.posted.append((result.job_id, result.status, len(result.images)))
            assert all(p.is_file() for p in result.images)
            return 1000 + result.job_id


@pytest.fixture
def make_service(database, bot_settings, jobs_env):
    made = []

    def factory(poster=None, **overrides):
        settings = bot_settings.model_copy(update=overrides) if overrides else bot_settings
        service = JobService.create(database, settings, jobs_env, poster=poster)
        made.append(service)
        return service

    yield factory
    for service in made:
        service.stop(timeout=10)


def test_submit_stores_the_job_and_its_generation_before_answering(make_service, database):
    database.run_sync(db_users.get_or_create_user, 7)
    database.run_sync(db_users.update_settings, 7, seed_policy="fixed", fixed_seed=1234)
    service = make_service(Posts())
    service.start()
    service.pause(OWNER)
    first = service.submit(7, request("a fox"))
    second = service.submit(8, request("a cat", seed=5))
    with database.session() as session:
        job = session.get(Job, first.job_id)
        generation = session.get(Generation, first.generation_id)
        assert job.status is JobStatus.QUEUED and job.generation_id == generation.id
        assert generation.seed == 1234 == first.seed  # the user's fixed seed policy
        assert generation.workflow["3"]["inputs"]["seed"] == 1234
        assert session.get(Generation, second.generation_id).seed == 5
    assert (first.position, second.position) == (1, 2)
    assert service.job_info(first.job_id, 7).position == 1
    with pytest.raises(JobNotFound):
        service.job_info(first.job_id, 8)


def test_per_user_cap_refuses_politely_and_stores_nothing(make_service, database):
    service = make_service()
    service.start()
    service.pause(OWNER)
    service.submit(7, request("one"))
    service.submit(7, request("two"))
    with pytest.raises(QueueFull) as info:
        service.submit(7, request("three"))
    assert "You already have 2 jobs waiting or running, and the limit is 2" in str(info.value)
    assert database.read_sync(db_jobs.count_active_jobs, 7) == 2
    service.submit(8, request("another user is not limited by 7's jobs"))


def test_jobs_run_fairly_are_recorded_and_posted_once(make_service, database):
    posts = Posts()
    service = make_service(posts)
    service.start()
    service.pause(OWNER)
    subs = [service.submit(u, request(f"{u}-{i}")) for u, i in ((7, 1), (7, 2), (8, 1), (9, 1))]
    service.resume(OWNER)
    assert service.wait_idle(120)
    with database.session() as session:
        jobs = [session.get(Job, s.job_id) for s in subs]
        assert all(j.status is JobStatus.DONE and j.posted and j.attempts == 1 for j in jobs)
        order = sorted(jobs, key=lambda j: j.started_at)
        assert [j.id for j in order] == [
            subs[0].job_id,
            subs[2].job_id,
            subs[3].job_id,
            subs[1].job_id,
        ]
        generation = session.get(Generation, subs[0].generation_id)
        assert (
            generation.status is JobStatus.DONE and generation.message_id == 1000 + subs[0].job_id
        )
        assert generation.outputs[0].path.startswith("images/")
    assert sorted(p[0] for p in posts.posted) == sorted(s.job_id for s in subs)
    assert all(status == "done" and n == 1 for _, status, n in posts.posted)
    assert service.seconds_per_step() > 0


def test_cancel_queued_running_and_finished(make_service, database):
    posts = Posts()
    service = make_service(posts)
    service.start()
    service.pause(OWNER)
    queued = service.submit(7, request("wait"))
    with pytest.raises(JobNotFound):
        service.cancel(queued.job_id, 8)  # not theirs
    assert service.cancel(queued.job_id, 7) == "queued"
    with pytest.raises(JobAlreadyFinished, match="cancelled"):
        service.cancel(queued.job_id, 7)

    running = service.submit(7, request("long", steps=60))
    started = threading.Event()
    service.runner.bus.add_listener(
        lambda e: e.type == "progress" and e.job_id == str(running.job_id) and started.set()
    )
    service.resume(OWNER)
    assert started.wait(60)
    assert service.cancel(running.job_id, 7) == "running"
    assert service.wait_idle(60)
    with database.session() as session:
        assert session.get(Job, queued.job_id).status is JobStatus.CANCELLED
        assert session.get(Generation, queued.generation_id).started_at is None
        job = session.get(Job, running.job_id)
        assert job.status is JobStatus.CANCELLED and job.attempts == 1
        assert session.get(Generation, running.generation_id).status is JobStatus.CANCELLED
    # Each user is told, once, that their job was cancelled.
    assert sorted((j, s) for j, s, _ in posts.posted) == [
        (queued.job_id, "cancelled"),
        (running.job_id, "cancelled"),
    ]


def test_only_owners_pause_resume_and_clear_and_a_pause_survives_a_restart(make_service, database):
    service = make_service()
    service.start()
    with pytest.raises(NotAllowed, match="owners may pause"):
        service.pause(42)
    service.pause(OWNER)
    subs = [service.submit(u, request(f"c{u}")) for u in (7, 8)]
    with pytest.raises(NotAllowed):
        service.clear(42)
    assert service.clear(OWNER) == 2
    with database.session() as session:
        assert all(session.get(Job, s.job_id).status is JobStatus.CANCELLED for s in subs)
    service.stop()

    again = make_service()
    assert again.start().paused and again.paused
    again.resume(None, force=True)
    third = make_service()
    assert not third.start().paused


def test_priority_by_role_and_wait_estimates(make_service):
    service = make_service()
    service.start()
    warm = service.submit(9, request("warm up the timings"))
    assert service.wait_idle(120) and service.estimate_wait() == 0
    service.pause(OWNER)
    plain = service.submit(7, request("plain"))
    vip = service.submit(8, request("vip"), roles=["patron", 123])
    assert service.job_info(vip.job_id, 8).position == 1
    assert service.job_info(plain.job_id, 7).position == 2
    assert vip.estimated_wait_s == 0
    assert service.estimate_wait(plain.job_id) == pytest.approx(3 * service.seconds_per_step())
    assert [i.job_id for i in service.queue()] == [vip.job_id, plain.job_id]
    assert [i.job_id for i in queue_from_database(service.db)] == [vip.job_id, plain.job_id]
    assert warm.job_id not in [i.job_id for i in service.queue()]


def test_a_result_whose_post_failed_is_posted_at_the_next_start(make_service, database):
    posts = Posts()
    service = make_service(posts)
    service.start()
    sub = service.submit(7, request("post me"))
    posts.fail_for.add(sub.job_id)
    assert service.wait_idle(120)
    assert posts.posted == [] and not database.read_sync(db_jobs.get_job, sub.job_id).posted
    service.stop()

    again = make_service(posts)
    report = again.start()
    assert report.reposted == [sub.job_id]
    assert again.wait_idle(30)
    assert posts.posted == [(sub.job_id, "done", 1)]
    third = make_service(posts)
    assert third.start().reposted == []
    assert third.wait_idle(30) and len(posts.posted) == 1


def test_async_submit_events_and_async_poster(make_service, database):
    posted = []

    async def poster(result):
        await asyncio.sleep(0)
        posted.append(result.job_id)
        return 77

    async def main():
        service = make_service(poster)
        await asyncio.to_thread(service.start, loop=asyncio.get_running_loop())
        sub = await asyncio.to_thread(service.submit, 7, request("async", steps=8))
        types = [e.type async for e in throttled(service.subscribe(sub.job_id), 0.0)]
        while not posted:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(service.stop)
        return sub, types

    sub, types = asyncio.run(main())
    assert posted == [sub.job_id]
    assert "progress" in types and types[-1] == "job_ended"
    with database.session() as session:
        assert session.get(Job, sub.job_id).posted_message_id == 77
