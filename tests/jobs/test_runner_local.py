"""The job runner with a local worker: events, cancellation, pause, hooks, routing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runner import hookimpl
from runner.jobs import (
    EventBus,
    JobOutcome,
    JobRunner,
    JobSpec,
    LocalWorker,
    MemoryStore,
    Throttle,
    UnknownJob,
    make_job,
    throttled,
)
from runner.jobs.events import JobEnded


def run_all(runner: JobRunner, timeout: float = 120) -> None:
    assert runner.wait_idle(timeout), "jobs did not finish in time"


def test_jobs_run_and_report_events(jobs_env, make_workflow):
    store = MemoryStore()
    seen: list[tuple[str, str]] = []
    with JobRunner([LocalWorker(jobs_env)], store=store) as runner:
        runner.bus.add_listener(lambda e: seen.append((e.job_id, e.type)))
        assert runner.submit(make_job("a", make_workflow("a red fox", 1), user_id=1)) == 1
        run_all(runner)
    outcome = store.outcomes["a"]
    assert outcome.status == "done" and outcome.worker == "local"
    assert len(outcome.images) == 1 and outcome.images[0].data.startswith(b"\x89PNG")
    types = [t for j, t in seen if j == "a"]
    assert types[0] == "queued" and types[1] == "started"
    assert "progress" in types and types[-2:] == ["finished", "job_ended"]
    assert store.starts["a"] == ["local"]


def test_cancel_while_queued(jobs_env, make_workflow):
    store = MemoryStore()
    runner = JobRunner([LocalWorker(jobs_env)], store=store, paused=True).start()
    try:
        runner.submit(make_job("keep", make_workflow("keep", 2), user_id=1))
        runner.submit(make_job("drop", make_workflow("drop", 3), user_id=2))
        assert runner.position("drop") == 2
        assert runner.cancel("drop") == "queued"
        with pytest.raises(UnknownJob, match="drop"):
            runner.cancel("drop")
        runner.resume()
        run_all(runner)
    finally:
        runner.stop()
    assert store.outcomes["drop"].status == "cancelled"
    assert "drop" not in store.starts  # never started
    assert store.outcomes["keep"].status == "done"


def test_cancel_while_running_stops_between_steps(jobs_env, make_workflow):
    store = MemoryStore()
    steps: list[int] = []
    runner = JobRunner([LocalWorker(jobs_env)], store=store).start()

    def listener(event):
        if event.job_id == "long" and event.type == "progress":
            steps.append(event.step)
            if event.step == 2:
                assert runner.cancel("long") == "running"

    runner.bus.add_listener(listener)
    try:
        runner.submit(make_job("long", make_workflow("a long one", 4, steps=40), user_id=1))
        run_all(runner)
        outcome = store.outcomes["long"]
        assert outcome.status == "cancelled" and outcome.images == []
        assert max(steps) <= 3  # stopped at the next step, not at the end
        # The worker goes on with the next job.
        runner.submit(make_job("next", make_workflow("next", 5), user_id=1))
        run_all(runner)
        assert store.outcomes["next"].status == "done"
    finally:
        runner.stop()


def test_a_failing_job_is_reported_and_the_worker_goes_on(jobs_env, make_workflow):
    store = MemoryStore()
    bad = make_workflow("x", 1)
    bad["4"]["inputs"]["ckpt_name"] = "no-such-model"
    with JobRunner([LocalWorker(jobs_env)], store=store) as runner:
        runner.submit(make_job("bad", bad, user_id=1))
        runner.submit(make_job("good", make_workflow("y", 1), user_id=1))
        run_all(runner)
    assert (
        store.outcomes["bad"].status == "failed" and "no-such-model" in store.outcomes["bad"].error
    )
    assert store.outcomes["good"].status == "done"


class _Hooks:
    def __init__(self):
        self.finished: list[tuple[str, str]] = []

    @hookimpl
    def easel_job_started(self, job_id, user_id, workflow):
        raise RuntimeError("broken plugin")

    @hookimpl
    def easel_job_finished(self, job_id, user_id, status, images, error):
        self.finished.append((job_id, status))


def test_job_hooks_are_called_and_a_raising_plugin_does_not_stop_the_worker(
    jobs_env, make_workflow, caplog
):
    plugin = _Hooks()
    jobs_env.pm.register(plugin, name="test-job-hooks")
    try:
        store = MemoryStore()
        with JobRunner([LocalWorker(jobs_env)], store=store) as runner:
            runner.submit(make_job("h1", make_workflow("hooks", 6), user_id=1))
            run_all(runner)
    finally:
        jobs_env.pm.unregister(plugin)
    assert store.outcomes["h1"].status == "done"
    assert plugin.finished == [("h1", "done")]
    assert "test-job-hooks raised in easel_job_started" in caplog.text


def test_pause_resume_clear_and_steps_ahead(jobs_env, make_workflow):
    store = MemoryStore()
    runner = JobRunner([LocalWorker(jobs_env)], store=store, paused=True).start()
    try:
        for i in range(3):
            runner.submit(make_job(f"p{i}", make_workflow(f"p{i}", i, steps=3), user_id=i))
        time.sleep(0.2)
        assert not store.starts  # paused: nothing starts
        assert runner.steps_ahead("p2") == 6 and runner.steps_ahead() == 9
        assert [j.job_id for j in runner.clear()] == ["p0", "p1", "p2"]
        assert all(store.outcomes[f"p{i}"].status == "cancelled" for i in range(3))
        runner.submit(make_job("after", make_workflow("after", 9), user_id=1))
        runner.resume()
        run_all(runner)
        assert store.outcomes["after"].status == "done"
    finally:
        runner.stop()


class _FakeWorker:
    def __init__(self, name: str, models: set[str]):
        self.name = name
        self.models = models
        self.ran: list[str] = []

    def run(self, jobs, emit, tokens):
        self.ran.extend(j.job_id for j in jobs)
        return [JobOutcome(j.job_id, "done", worker=self.name) for j in jobs]

    def cancel(self, job_id):
        pass

    def affinity(self, job):
        return sum(2 for m in job.models if m in self.models)

    def close(self):
        pass


def _wf(model: str) -> dict:
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}}}


def test_jobs_go_to_a_worker_that_holds_their_model():
    a, b = _FakeWorker("a", {"m1"}), _FakeWorker("b", {"m2"})
    runner = JobRunner([a, b], paused=True).start()
    try:
        time.sleep(0.1)  # both idle
        runner.submit(make_job("x", _wf("m2"), user_id=1))
        runner.submit(make_job("y", _wf("m1"), user_id=2))
        runner.resume()
        run_all(runner, 10)
    finally:
        runner.stop()
    assert b.ran == ["x"] and a.ran == ["y"]


def test_throttle_delivers_at_most_one_per_interval_and_always_the_end():
    now = [0.0]
    throttle = Throttle(2.0, clock=lambda: now[0])
    from runner.events import Progress

    assert throttle.offer(Progress("j", step=1, total=9))
    now[0] = 1.0
    assert not throttle.offer(Progress("j", step=2, total=9))
    assert throttle.due_in() == pytest.approx(1.0)
    now[0] = 1.5
    assert not throttle.offer(Progress("j", step=3, total=9))
    assert throttle.pending.step == 3
    now[0] = 2.5
    assert throttle.offer(Progress("j", step=4, total=9))
    assert throttle.offer(JobEnded("j", status="done"))  # terminal: always, at once
    assert throttle.flush() is None
    with pytest.raises(ValueError, match="-1"):
        Throttle(-1)


def test_async_subscribers_get_throttled_events_without_blocking_the_loop(jobs_env, make_workflow):
    bus = EventBus()
    store = MemoryStore()

    async def main():
        runner = JobRunner([LocalWorker(jobs_env)], store=store, bus=bus).start()
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        everything = bus.subscribe("s")
        slow = throttled(bus.subscribe("s"), 60.0)
        await asyncio.to_thread(
            runner.submit, make_job("s", make_workflow("sub", 11, steps=12), user_id=1)
        )
        got_all = [e.type async for e in everything]
        got_slow = [e.type async for e in slow]
        stop.set()
        await tick_task
        await asyncio.to_thread(runner.stop)
        return got_all, got_slow, ticks

    got_all, got_slow, ticks = asyncio.run(main())
    assert got_all.count("progress") == 12 and got_all[-1] == "job_ended"
    # One update per minute: the first event, then only the terminal ones.
    assert got_slow[0] == "queued" and got_slow[-2:] == ["finished", "job_ended"]
    assert "progress" not in got_slow
    assert ticks > 0  # the loop kept running while the job generated


def test_make_job_reads_steps_models_and_loras(make_workflow):
    wf = make_workflow("p", 1, steps=7, loras=[("style.safetensors", 0.5)])
    spec = make_job("j", wf, user_id=3)
    assert (
        spec.steps == 7 and spec.models == ("tiny-random",) and spec.loras == ("style.safetensors",)
    )
    assert isinstance(spec, JobSpec) and spec.batch_key


def test_runner_threads_stop(jobs_env):
    runner = JobRunner([LocalWorker(jobs_env)]).start()
    runner.stop(timeout=5)
    assert not any(
        t.name.startswith("easel-worker-") and t.is_alive() for t in threading.enumerate()
    )
