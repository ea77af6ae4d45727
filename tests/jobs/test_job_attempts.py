"""A job whose worker dies is tried again, at most ``max_job_attempts`` times: then it
fails with a sentence saying why and its user is told (the poster gets the failure);
and a job that succeeds after a lost worker keeps no trace of the loss as its error.

The dying worker runs each batch in a real child process and SIGKILLs it, as the OOM
killer would (the runner sees :class:`~runner.jobs.WorkerLost`, as from a Ray actor).
The database is a real SQLite file and the surviving worker is the real local one.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from bot.services.jobs import JobService
from db import jobs as db_jobs
from db.engine import Database
from db.models import Generation, Job, JobStatus
from runner.jobs import WorkerLost
from runner.jobs.backend_driver import UNREACHABLE
from runner.templates import GenerationRequest


class DyingWorker:
    """A worker whose process is killed while it runs a batch."""

    def __init__(self, name: str):
        self.name = name
        self.ran: list[str] = []

    def run(self, jobs, emit, tokens):
        self.ran += [job.job_id for job in jobs]
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        proc.kill()  # SIGKILL, mid-batch
        proc.wait(10)
        raise WorkerLost(self.name, f"its process was killed (exit code {proc.returncode})")

    def cancel(self, job_id: str) -> None:
        pass

    def affinity(self, job) -> int:
        return 0

    def close(self) -> None:
        pass


class Posts:
    def __init__(self):
        self.posted: list[tuple[int, str, str | None]] = []
        self._lock = threading.Lock()

    def __call__(self, result):
        with self._lock:
            self.posted.append((result.job_id, result.status, result.error))
        return 1000 + result.job_id


@pytest.fixture
def database(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'easel.sqlite3'}")
    db.upgrade()
    yield db
    db.close()


@pytest.fixture
def make_service(database, tmp_path, cache_folder, jobs_env):
    from bot.settings import Settings

    made = []

    def factory(poster, **overrides):
        settings = Settings(
            data_dir=tmp_path / "data", cache_folder=cache_folder, max_batch_jobs=1, **overrides
        )
        service = JobService.create(database, settings, jobs_env, poster=poster)
        local = list(service.runner.workers)
        for worker in local:  # only the workers each test adds
            service.runner.remove_worker(worker.name)
        made.append(service)
        return service, local

    yield factory
    for service in made:
        service.stop(timeout=10)


def request(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, steps=2, width=64, height=64, cfg=5.0)


def test_max_job_attempts_defaults_to_three():
    from bot.settings import Settings

    assert Settings.model_fields["max_job_attempts"].default == 3


def test_a_job_whose_worker_keeps_dying_fails_after_max_job_attempts(make_service, database):
    posts = Posts()
    service, _ = make_service(posts)
    dying = [DyingWorker(f"doomed-{i}") for i in range(4)]
    for worker in dying:
        service.runner.add_worker(worker)
    service.start()
    job_id = service.submit(7, request("the crash loop")).job_id
    assert service.wait_idle(60), "the job went back to the queue for ever"

    # Three attempts (the default), on three workers; the fourth never saw it.
    assert [w.ran for w in dying] == [[str(job_id)]] * 3 + [[]]
    job = database.read_sync(db_jobs.get_job, job_id)
    assert (job.status, job.attempts, job.posted) == (JobStatus.FAILED, 3, True)
    assert job.error.startswith("it was started 3 times and each time its worker stopped")
    assert "its process was killed" in job.error and job.error.endswith("not tried again")
    with database.session() as session:
        generation = session.get(Generation, job.generation_id)
        assert generation.status is JobStatus.FAILED and generation.error == job.error
    # The user is told: the poster got the failure with the sentence.
    assert posts.posted == [(job_id, "failed", job.error)]


def test_a_job_that_succeeds_after_a_lost_worker_keeps_no_error(make_service, database):
    posts = Posts()
    service, local = make_service(posts)
    service.runner.add_worker(DyingWorker("doomed"))
    # The real worker joins once the first is lost (a replacement actor, say).
    service.runner.on_worker_lost = lambda worker, exc: [
        service.runner.add_worker(w) for w in local
    ]
    service.start()
    job_id = service.submit(8, request("second time lucky")).job_id
    assert service.wait_idle(120)
    with database.session() as session:
        job = session.get(Job, job_id)
        generation = session.get(Generation, job.generation_id)
        assert (job.status, job.attempts, job.posted) == (JobStatus.DONE, 2, True)
        assert job.error is None  # the lost worker's reason is no longer true
        assert generation.status is JobStatus.DONE and generation.error is None
    assert posts.posted == [(job_id, "done", None)]


class OutageWorker(DyingWorker):
    """A worker lost because the whole Ray cluster became unreachable."""

    def run(self, jobs, emit, tokens):
        self.ran += [job.job_id for job in jobs]
        raise WorkerLost(self.name, UNREACHABLE)


def test_cluster_outages_do_not_use_up_a_jobs_attempts(make_service, database):
    posts = Posts()
    service, local = make_service(posts)
    outages = [OutageWorker(f"outage-{i}") for i in range(4)]
    for worker in outages:
        service.runner.add_worker(worker)
    lost: list[str] = []

    def on_lost(worker, exc):  # after four outages the cluster is back
        lost.append(worker.name)
        if len(lost) == len(outages):
            for w in local:
                service.runner.add_worker(w)

    service.runner.on_worker_lost = on_lost
    service.start()
    job_id = service.submit(9, request("through four outages")).job_id
    assert service.wait_idle(120)
    assert [w.ran for w in outages] == [[str(job_id)]] * 4  # more than max_job_attempts
    job = database.read_sync(db_jobs.get_job, job_id)
    assert (job.status, job.attempts, job.error) == (JobStatus.DONE, 1, None)
    assert posts.posted == [(job_id, "done", None)]
