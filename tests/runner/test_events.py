"""Events a job emits: started, node started/finished/cached, progress i of n (n = steps),
finished with outputs; each serialises to one JSON object."""

from __future__ import annotations

import json

from runner_testlib import txt2img_workflow

from runner import events as ev


def run_events(env, workflow, **kwargs):
    events = []
    result = env.run(workflow, on_event=events.append, **kwargs)
    return result, events


def test_a_job_emits_its_events_in_order(env):
    result, events = run_events(env, txt2img_workflow(env, steps=3), job_id="job-1")
    assert {e.job_id for e in events} == {"job-1"}
    assert events[0].type == "started" and events[0].nodes == ["4", "6", "7", "5", "3", "8", "9"]
    assert events[-1].type == "finished"

    per_node = [(e.type, e.node_id) for e in events if e.type in ("node_started", "node_finished")]
    expected = []
    for node_id in ["4", "6", "7", "5", "3", "8", "9"]:
        expected += [("node_started", node_id), ("node_finished", node_id)]
    assert per_node == expected

    progress = [e for e in events if e.type == "progress"]
    assert [(e.node_id, e.step, e.total) for e in progress] == [
        ("3", 1, 3),
        ("3", 2, 3),
        ("3", 3, 3),
    ]
    types = [e.type for e in events]
    first, last = types.index("progress"), len(types) - 1 - types[::-1].index("progress")
    assert types[first - 1] == "node_started" and events[first - 1].node_id == "3"
    assert types[last + 1] == "node_finished" and events[last + 1].node_id == "3"
    assert all(e.preview is None for e in progress)

    finished = events[-1]
    assert finished.outputs == result.outputs
    assert list(finished.outputs) == ["9"]
    (image,) = finished.outputs["9"]["images"]
    assert (
        image["type"] == "output"
        and image["filename"].endswith(".png")
        and image["subfolder"] == ""
    )
    assert finished.executed == result.executed and finished.cached == []
    assert finished.seconds > 0
    assert all(e.seconds >= 0 for e in events if e.type == "node_finished")


def test_cached_nodes_emit_node_cached_instead(env):
    workflow = txt2img_workflow(env, steps=2)
    env.run(workflow)
    workflow["3"]["inputs"]["seed"] = 99
    _, events = run_events(env, workflow)
    cached = [(e.node_id, e.class_type) for e in events if e.type == "node_cached"]
    assert cached == [
        ("4", "CheckpointLoaderSimple"),
        ("6", "CLIPTextEncode"),
        ("7", "CLIPTextEncode"),
        ("5", "EmptyLatentImage"),
    ]
    started = [e.node_id for e in events if e.type == "node_started"]
    assert started == ["3", "8", "9"]
    assert events[-1].cached == ["4", "6", "7", "5"]


def test_progress_total_is_the_number_of_steps_for_every_sampler(env):
    for sampler in ("euler", "heun", "dpm_2", "dpmpp_sde", "dpmpp_2m", "lcm"):
        _, events = run_events(env, txt2img_workflow(env, steps=3, sampler=sampler))
        progress = [(e.step, e.total) for e in events if e.type == "progress"]
        assert progress == [(1, 3), (2, 3), (3, 3)], sampler


def test_previews_when_asked(env):
    _, events = run_events(env, txt2img_workflow(env, steps=2), previews=True)
    progress = [e for e in events if e.type == "progress"]
    assert progress and all(e.preview is not None for e in progress)
    assert max(progress[0].preview.size) <= 128
    data = progress[0].to_dict()
    assert "preview" not in data and data["preview_jpeg_b64"]


def test_every_event_serialises_to_json(env):
    _, events = run_events(env, txt2img_workflow(env, steps=2), previews=True)
    for event in events:
        data = json.loads(json.dumps(event.to_dict()))
        assert data["type"] == event.type and data["job_id"] == event.job_id and data["ts"] > 0


def test_event_types_are_the_designed_ones():
    kinds = {
        cls(job_id="j").type
        for cls in (
            ev.Queued,
            ev.Started,
            ev.NodeCached,
            ev.NodeStarted,
            ev.NodeFinished,
            ev.Progress,
            ev.Finished,
            ev.Failed,
            ev.Cancelled,
        )
    }
    assert kinds == {
        "queued",
        "started",
        "node_cached",
        "node_started",
        "node_finished",
        "progress",
        "finished",
        "failed",
        "cancelled",
    }


def test_a_job_id_is_made_when_none_is_given(env):
    result, events = run_events(env, txt2img_workflow(env, steps=2))
    assert result.job_id and all(e.job_id == result.job_id for e in events)
