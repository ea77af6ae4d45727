"""Cancellation: a CancelToken set from an event handler or another thread stops the job
between sampling steps, emits ``cancelled``, raises JobCancelled; the next job runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from runner_testlib import image_of, txt2img_workflow

from runner.context import CancelToken
from runner.errors import JobCancelled


def reference_image(make_env, tmp_path, **overrides):
    env = make_env(data_dir=tmp_path / "reference")
    return image_of(env.run(txt2img_workflow(env, **overrides)))


def test_cancel_from_the_progress_handler_stops_between_steps(env, make_env, tmp_path):
    token = CancelToken()
    events = []

    def handler(event):
        events.append(event)
        if event.type == "progress" and event.step == 2:
            token.cancel()

    with pytest.raises(JobCancelled):
        env.run(txt2img_workflow(env, steps=4), on_event=handler, cancel=token)
    types = [e.type for e in events]
    assert types[-1] == "cancelled" and "finished" not in types
    assert events[-1].node_id == "3"
    assert [(e.step, e.total) for e in events if e.type == "progress"] == [(1, 4), (2, 4)]
    assert [e.node_id for e in events if e.type == "node_finished"] == ["4", "6", "7", "5"]
    assert not env.settings.output_dir.exists() or not list(env.settings.output_dir.iterdir())

    # The next job (a new token) runs normally, reusing what was cached before the cancel.
    result = env.run(txt2img_workflow(env, steps=4))
    assert result.executed == ["3", "8", "9"] and len(result.images) == 1
    assert np.array_equal(image_of(result), reference_image(make_env, tmp_path, steps=4))


def test_cancel_from_another_thread(env):
    token = CancelToken()
    in_progress = threading.Event()
    cancelled = threading.Event()
    events = []

    def canceller():
        in_progress.wait(timeout=30)
        token.cancel()
        cancelled.set()

    def handler(event):
        events.append(event)
        if event.type == "progress" and event.step == 1:
            in_progress.set()
            assert cancelled.wait(timeout=30)  # hold the job until the other thread has cancelled

    thread = threading.Thread(target=canceller)
    thread.start()
    try:
        with pytest.raises(JobCancelled):
            env.run(txt2img_workflow(env, steps=4), on_event=handler, cancel=token)
    finally:
        thread.join(timeout=30)
    assert [e.step for e in events if e.type == "progress"] == [1]
    assert events[-1].type == "cancelled"
    assert len(env.run(txt2img_workflow(env, steps=2)).images) == 1


def test_a_token_cancelled_before_the_job_runs_nothing(env):
    token = CancelToken()
    token.cancel()
    events = []
    with pytest.raises(JobCancelled):
        env.run(txt2img_workflow(env), on_event=events.append, cancel=token)
    assert [e.type for e in events] == ["started", "cancelled"]
    assert env.models.loaded() == []


def test_cancel_between_nodes(env):
    token = CancelToken()
    events = []

    def handler(event):
        events.append(event)
        if event.type == "node_finished" and event.node_id == "6":
            token.cancel()

    with pytest.raises(JobCancelled):
        env.run(txt2img_workflow(env), on_event=handler, cancel=token)
    assert [e.node_id for e in events if e.type == "node_started"] == ["4", "6"]
    assert events[-1].type == "cancelled"


def test_cancelling_a_second_order_sampler_stops_between_steps(env):
    token = CancelToken()
    events = []

    def handler(event):
        events.append(event)
        if event.type == "progress" and event.step == 1:
            token.cancel()

    workflow = txt2img_workflow(env, steps=3, sampler="heun")
    with pytest.raises(JobCancelled):
        env.run(workflow, on_event=handler, cancel=token)
    assert [(e.step, e.total) for e in events if e.type == "progress"] == [(1, 3)]
