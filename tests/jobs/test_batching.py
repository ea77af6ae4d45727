"""Batching: compatible jobs share one sampler call, and each gets the image it would get
alone on the same device."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runner.jobs import JobRunner, LocalWorker, MemoryStore, SamplerBatch, batch_key, make_job


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_batch_key_ignores_prompts_seeds_and_file_names_only(make_workflow):
    a = make_workflow("a fox", 1)
    b = make_workflow("a lighthouse", 2, negative="blurry", filename_prefix="other")
    assert batch_key(a) == batch_key(b)
    for different in (
        make_workflow("a fox", 1, steps=4),
        make_workflow("a fox", 1, width=128),
        make_workflow("a fox", 1, cfg=3.0),
        make_workflow("a fox", 1, sampler="euler_ancestral"),
        make_workflow("a fox", 1, scheduler="karras"),
        make_workflow("a fox", 1, loras=[("x.safetensors", 0.5)]),
        make_workflow("a fox", 1, model="other"),
    ):
        assert batch_key(different) != batch_key(a)
    two_samplers = dict(a, **{"30": dict(a["3"])})
    assert batch_key(two_samplers) is None


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_each_job_in_a_batch_gets_the_image_it_gets_alone(jobs_env, make_workflow, sampler):
    requests = [("a red fox", 11, 1), ("a lighthouse at dawn", 2**40 + 3, 2), ("three cats", 99, 3)]
    workflows = [make_workflow(p, s, sampler=sampler, negative=f"neg {u}") for p, s, u in requests]

    batched = MemoryStore()
    runner = JobRunner([LocalWorker(jobs_env)], store=batched, max_batch=3, paused=True).start()
    for i, (wf, (_, _, user)) in enumerate(zip(workflows, requests, strict=True)):
        runner.submit(make_job(f"b{i}", wf, user_id=user))
    runner.resume()
    assert runner.wait_idle(120)
    runner.stop()
    assert [batched.outcomes[f"b{i}"].batch_size for i in range(3)] == [3, 3, 3]

    jobs_env.node_cache.clear()  # run every node again, alone
    alone = MemoryStore()
    with JobRunner([LocalWorker(jobs_env)], store=alone, max_batch=1) as runner:
        for i, (wf, (_, _, user)) in enumerate(zip(workflows, requests, strict=True)):
            runner.submit(make_job(f"a{i}", wf, user_id=user))
        assert runner.wait_idle(120)
    images = []
    for i in range(3):
        together, by_itself = batched.outcomes[f"b{i}"], alone.outcomes[f"a{i}"]
        assert together.status == by_itself.status == "done" and by_itself.batch_size == 1
        a, b = pixels(together.images[0].data), pixels(by_itself.images[0].data)
        assert np.abs(a - b).max() <= 1, f"job {i}: batched image differs from the image alone"
        images.append(a)
    # ...and the jobs did not get each other's image.
    assert np.abs(images[0] - images[1]).max() > 10 and np.abs(images[1] - images[2]).max() > 10


def test_incompatible_jobs_are_not_batched_and_a_cancelled_member_drops_out(
    jobs_env, make_workflow
):
    store = MemoryStore()
    runner = JobRunner([LocalWorker(jobs_env)], store=store, max_batch=4, paused=True).start()
    runner.submit(make_job("x1", make_workflow("one", 21, steps=6), user_id=1))
    runner.submit(make_job("x2", make_workflow("two", 22, steps=6), user_id=2))
    runner.submit(make_job("y", make_workflow("three", 23, steps=5), user_id=3))

    def listener(event):
        if event.job_id == "x2" and event.type == "progress" and event.step == 1:
            runner.cancel("x2")

    runner.bus.add_listener(listener)
    runner.resume()
    assert runner.wait_idle(120)
    runner.stop()
    assert store.outcomes["x1"].batch_size == 2 and store.outcomes["y"].batch_size == 1
    assert store.outcomes["x1"].status == "done" and len(store.outcomes["x1"].images) == 1
    assert store.outcomes["x2"].status == "cancelled" and store.outcomes["x2"].images == []
    assert store.outcomes["y"].status == "done"


def test_sampler_batch_meets_and_splits():
    import threading

    batch = SamplerBatch(["a", "b", "c"])
    results = {}
    calls = []

    def combine(items):
        calls.append([j for j, _ in items])
        return [p * 10 for _, p in items]

    def member(job_id, value):
        results[job_id] = batch.run(job_id, value, combine)

    threads = [threading.Thread(target=member, args=(j, v)) for j, v in (("a", 1), ("c", 3))]
    for t in threads:
        t.start()
    batch.leave("b")  # b finished without sampling (a cache hit)
    for t in threads:
        t.join(5)
    assert results == {"a": 10, "c": 30} and calls == [["a", "c"]]
    assert batch.run("a", 5, combine) == 50  # a late call runs alone


def test_sampler_batch_error_reaches_every_member():
    import threading

    batch = SamplerBatch(["a", "b"])
    errors = {}

    def combine(items):
        raise ValueError("boom")

    def member(job_id):
        try:
            batch.run(job_id, 0, combine)
        except ValueError as exc:
            errors[job_id] = str(exc)

    threads = [threading.Thread(target=member, args=(j,)) for j in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert errors == {"a": "boom", "b": "boom"}
