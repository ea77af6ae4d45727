"""Job records, installed plugins and the audit log."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.orm import Session

from db import audit, generations, jobs, plugins
from db.engine import Database
from db.errors import InvalidName, InvalidTransition, InvalidValue, NotFound
from db.models import JobStatus

USER = 3001


def test_job_life_cycle(session: Session) -> None:
    g = generations.record_generation(session, USER, prompt="x", workflow={})
    job = jobs.create_job(session, USER, request={"prompt": "x"}, generation_id=g.id, priority=2)
    assert (job.status, job.attempts, job.posted) == (JobStatus.QUEUED, 0, False)
    assert job.queued_at is not None
    assert jobs.count_active_jobs(session, USER) == 1

    job = jobs.set_job_status(session, job.id, "running", worker="gpu0")
    assert (job.attempts, job.worker) == (1, "gpu0") and job.started_at is not None
    # Requeued after a restart, then run again: a second attempt.
    jobs.set_job_status(session, job.id, "queued")
    job = jobs.set_job_status(session, job.id, "running", worker="gpu1")
    assert (job.attempts, job.worker) == (2, "gpu1")
    job = jobs.set_job_status(session, job.id, "done")
    assert job.finished_at is not None
    assert jobs.count_active_jobs(session, USER) == 0
    with pytest.raises(InvalidTransition):
        jobs.set_job_status(session, job.id, "cancelled")
    assert jobs.get_job(session, job.id).generation_id == g.id


def test_job_errors(session: Session) -> None:
    with pytest.raises(NotFound):
        jobs.get_job(session, 999)
    with pytest.raises(NotFound):
        jobs.create_job(session, USER, request={}, generation_id=999)
    with pytest.raises(InvalidValue):
        jobs.create_job(session, USER, request=["not", "a", "dict"])  # type: ignore[arg-type]
    job = jobs.create_job(session, USER, request={})
    with pytest.raises(InvalidValue):
        jobs.set_job_status(session, job.id, "exploded")
    failed = jobs.set_job_status(session, job.id, "failed", error="boom")
    assert failed.error == "boom"


def test_list_jobs_orders_by_priority_then_age(session: Session) -> None:
    low = jobs.create_job(session, USER, request={"n": 1})
    high = jobs.create_job(session, USER + 1, request={"n": 2}, priority=5)
    later = jobs.create_job(session, USER, request={"n": 3})
    done = jobs.create_job(session, USER, request={"n": 4})
    jobs.set_job_status(session, done.id, "cancelled")
    active = jobs.list_jobs(session, statuses=jobs.ACTIVE_STATUSES)
    assert [j.id for j in active] == [high.id, low.id, later.id]
    assert [j.id for j in jobs.list_jobs(session, user_id=USER)] == [low.id, later.id, done.id]
    assert len(jobs.list_jobs(session, limit=2)) == 2


def test_posting_is_recorded_once(database: Database) -> None:
    job_id = database.run_sync(lambda s: jobs.create_job(s, USER, request={}).id)

    async def main() -> list[bool]:
        return await asyncio.gather(
            *(database.run(jobs.mark_job_posted, job_id, 500 + n) for n in range(10))
        )

    results = asyncio.run(main())
    assert results.count(True) == 1
    job = database.read_sync(jobs.get_job, job_id)
    assert job.posted and job.posted_message_id == 500 + results.index(True)
    with pytest.raises(NotFound):
        database.run_sync(jobs.mark_job_posted, 999, 1)


def test_plugins(session: Session, make_sha) -> None:
    p = plugins.record_plugin_install(
        session, "Easel_Upscale", source="easel-upscale==1.0", version="1.0"
    )
    assert (p.distribution, p.enabled, p.version) == ("easel-upscale", True, "1.0")
    p = plugins.set_plugin_enabled(
        session, "easel.upscale", False, error="ImportError: torchvision"
    )
    assert (p.enabled, p.error) == (False, "ImportError: torchvision")
    assert plugins.list_plugins(session, enabled=True) == []
    p = plugins.record_plugin_install(
        session, "easel-upscale", source="./wheel.whl", version="1.1", wheel_sha256=make_sha("w")
    )
    assert (p.enabled, p.error, p.version, p.source) == (True, None, "1.1", "./wheel.whl")
    assert [x.distribution for x in plugins.list_plugins(session)] == ["easel-upscale"]
    plugins.remove_plugin(session, "EASEL-UPSCALE")
    assert plugins.get_plugin(session, "easel-upscale") is None
    with pytest.raises(NotFound):
        plugins.remove_plugin(session, "easel-upscale")
    with pytest.raises(NotFound):
        plugins.set_plugin_enabled(session, "nope", True)
    with pytest.raises(InvalidName):
        plugins.record_plugin_install(session, "../evil", source="x")


def test_audit_log(session: Session) -> None:
    audit.log_action(session, 1, "plugin.install", target="easel-upscale", details={"v": "1"})
    audit.log_action(session, 2, "user.forget", target="user:3001")
    audit.log_action(session, 1, "plugin.disable", target="easel-upscale")
    entries = audit.list_audit(session)
    assert [e.action for e in entries] == ["plugin.disable", "user.forget", "plugin.install"]
    assert [e.action for e in audit.list_audit(session, actor_id=1)] == [
        "plugin.disable",
        "plugin.install",
    ]
    only = audit.list_audit(session, action="plugin.install")
    assert only[0].details == {"v": "1"} and only[0].created_at.tzinfo is not None
    with pytest.raises(InvalidValue):
        audit.log_action(session, 1, "")


def test_queue_pause_state_is_stored(session) -> None:
    from db.queue import queue_paused, set_queue_paused

    assert queue_paused(session) is False
    state = set_queue_paused(session, True, actor_id=7)
    assert queue_paused(session) is True and state.changed_by == 7
    set_queue_paused(session, False, actor_id=8)
    assert queue_paused(session) is False


def test_move_job_moves_its_generation_in_step(session: Session) -> None:
    g = generations.record_generation(session, USER, prompt="x", workflow={})
    job = jobs.create_job(session, USER, request={}, generation_id=g.id)
    jobs.move_job(session, job.id, "running", worker="gpu0")
    assert (job.status, g.status, job.attempts) == (JobStatus.RUNNING, JobStatus.RUNNING, 1)
    jobs.move_job(session, job.id, "queued", error="worker lost")
    assert (job.status, g.status) == (JobStatus.QUEUED, JobStatus.QUEUED)
    assert job.error == "worker lost" and g.error is None  # a requeue is the job's affair
    jobs.move_job(session, job.id, "cancelled", error="cancelled while waiting")
    assert (job.status, g.status) == (JobStatus.CANCELLED, JobStatus.CANCELLED)
    assert g.error == "cancelled while waiting" and g.finished_at == job.finished_at
    with pytest.raises(InvalidTransition):
        jobs.move_job(session, job.id, "done")
    alone = jobs.create_job(session, USER, request={})
    assert jobs.move_job(session, alone.id, "running").status is JobStatus.RUNNING


def test_unposted_and_recent_done_jobs(session: Session) -> None:
    done = jobs.create_job(session, USER, request={})
    failed = jobs.create_job(session, USER, request={})
    waiting = jobs.create_job(session, USER, request={})
    for job, end in ((done, "done"), (failed, "failed")):
        jobs.set_job_status(session, job.id, "running")
        jobs.set_job_status(session, job.id, end)
    assert jobs.unposted_job_ids(session) == [done.id, failed.id]
    jobs.mark_job_posted(session, done.id, 1)
    assert jobs.unposted_job_ids(session) == [failed.id]
    assert [j.id for j in jobs.recent_done_jobs(session)] == [done.id]
    assert waiting.id not in jobs.unposted_job_ids(session)
