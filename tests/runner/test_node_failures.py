"""Recovery after a failing node: a plugin's node that raises fails that job with the node id
and a readable message, a ``failed`` event is emitted, and the next job runs normally."""

from __future__ import annotations

import numpy as np
import pytest
from runner_testlib import image_of, txt2img_workflow

from runner import Input, hookimpl, node
from runner import types as T
from runner.errors import NodeExecutionError

CALLS = {"flaky": 0}


@node(
    "Explode",
    inputs=[Input("samples", T.LATENT), Input("how", T.STRING, default="runtime")],
    outputs=(T.LATENT,),
)
def explode(ctx, samples, how):
    """Raises, in several ways."""
    if how == "runtime":
        raise RuntimeError("the flux capacitor is empty")
    if how == "value":
        raise ValueError("strength must be positive")
    if how == "key":
        raise KeyError("samples")
    if how == "bad-return":
        return samples  # not a tuple
    return (samples,)


@node("FlakyMemory", inputs=[Input("samples", T.LATENT)], outputs=(T.LATENT,))
def flaky_memory(ctx, samples):
    """Runs out of memory the first time it is called."""
    CALLS["flaky"] += 1
    if CALLS["flaky"] == 1:
        raise MemoryError()
    return (samples,)


class FailingPlugin:
    """A third-party plugin, registered as an object."""

    @hookimpl
    def easel_node_types(self):
        return [explode, flaky_memory]


@pytest.fixture
def plugin_env(tmp_path, cache_folder):
    from runner.environment import Environment
    from runner.plugin_manager import build_plugin_manager
    from runner.settings import EngineSettings

    pm = build_plugin_manager(extra=(FailingPlugin(),), entry_points=False)
    env = Environment(EngineSettings(data_dir=tmp_path / "data", cache_folder=cache_folder), pm)
    yield env
    env.close()


def with_node(env, class_type, **inputs):
    workflow = txt2img_workflow(env, steps=2)
    workflow["50"] = {"class_type": class_type, "inputs": {"samples": ["3", 0], **inputs}}
    workflow["8"]["inputs"]["samples"] = ["50", 0]
    return workflow


def test_plugin_node_types_are_registered(plugin_env):
    assert plugin_env.node_types["Explode"].plugin
    assert "KSampler" in plugin_env.node_types


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("runtime", "RuntimeError: the flux capacitor is empty"),
        ("value", "strength must be positive"),
        ("key", "KeyError: 'samples'"),
        ("bad-return", "must return a tuple of 1 output(s)"),
    ],
)
def test_a_failing_node_fails_the_job_and_the_next_job_runs(plugin_env, how, message):
    events = []
    with pytest.raises(NodeExecutionError) as caught:
        plugin_env.run(with_node(plugin_env, "Explode", how=how), on_event=events.append)
    error = caught.value
    assert (error.node_id, error.class_type) == ("50", "Explode")
    assert message in error.message
    assert "node 50 (Explode)" in str(error)
    failed = events[-1]
    assert failed.type == "failed" and failed.node_id == "50" and failed.class_type == "Explode"
    assert message in failed.message
    assert "finished" not in [e.type for e in events]
    assert [e.node_id for e in events if e.type == "node_started"][-1] == "50"
    assert not plugin_env.settings.output_dir.exists() or not list(
        plugin_env.settings.output_dir.iterdir()
    )

    # The next job in the same environment runs normally and reuses the nodes before the failure.
    result = plugin_env.run(with_node(plugin_env, "Explode", how="pass"))
    assert result.executed == ["50", "8", "9"]
    assert len(result.images) == 1
    plain = txt2img_workflow(plugin_env, steps=2)
    assert np.array_equal(image_of(result), image_of(plugin_env.run(plain)))


def test_value_error_messages_are_kept_as_they_are(plugin_env):
    with pytest.raises(NodeExecutionError) as caught:
        plugin_env.run(with_node(plugin_env, "Explode", how="value"))
    assert caught.value.message == "strength must be positive"


def test_out_of_memory_frees_the_caches_and_retries_once(plugin_env):
    CALLS["flaky"] = 0
    events = []
    result = plugin_env.run(with_node(plugin_env, "FlakyMemory"), on_event=events.append)
    assert CALLS["flaky"] == 2
    assert len(result.images) == 1 and events[-1].type == "finished"


def test_a_failure_in_a_core_node_names_it(env):
    """A CLIPSetLastLayer deeper than the text encoder fails with a sentence, naming that node."""
    workflow = txt2img_workflow(env, steps=2)
    workflow["20"] = {
        "class_type": "CLIPSetLastLayer",
        "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -12},
    }
    workflow["6"]["inputs"]["clip"] = ["20", 0]
    with pytest.raises(NodeExecutionError) as caught:
        env.run(workflow)
    assert caught.value.node_id == "20"
    assert "stop_at_clip_layer -12" in caught.value.message and "2 layers" in caught.value.message
    assert len(env.run(txt2img_workflow(env, steps=2)).images) == 1


def test_two_plugins_declaring_one_node_type_is_an_error_naming_both(tmp_path, cache_folder):
    from runner.environment import Environment, PluginConflict
    from runner.plugin_manager import build_plugin_manager
    from runner.settings import EngineSettings

    class Again:
        @hookimpl
        def easel_node_types(self):
            return [explode]

    pm = build_plugin_manager(extra=(FailingPlugin(), Again()), entry_points=False)
    with pytest.raises(PluginConflict, match="Explode"):
        Environment(EngineSettings(data_dir=tmp_path, cache_folder=cache_folder), pm)
