"""Out of GPU memory: free the caches, retry the node once, then fail with a clear message;
the next job runs normally."""

from __future__ import annotations

import pytest
import torch

from runner import Input, NodeExecutionError, hookimpl, node
from runner import types as T
from runner.environment import Environment
from runner.plugin_manager import build_plugin_manager


class FlakyMemory:
    """A plugin whose node runs out of memory the first ``failures`` times it is called."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

        @node("HungryNode", inputs=[Input("value", T.INT, default=1)], outputs=(T.INT,))
        def hungry(ctx, value):
            self.calls += 1
            if self.calls <= self.failures:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return (value,)

        @node("Sink", inputs=[Input("value", T.INT)], outputs=(), output_node=True)
        def sink(ctx, value):
            return {"ui": {"value": [value]}, "result": ()}

        self.types = [hungry, sink]

    @hookimpl
    def easel_node_types(self):
        return self.types


WORKFLOW = {
    "1": {"class_type": "HungryNode", "inputs": {"value": 7}},
    "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}},
}


def _env(settings, plugin) -> Environment:
    return Environment(settings, build_plugin_manager(extra=(plugin,)))


def test_retries_once_after_freeing_caches(settings):
    plugin = FlakyMemory(failures=1)
    env = _env(settings, plugin)
    env.models.checkpoint("tiny-random")
    result = env.run(WORKFLOW)
    assert result.outputs["2"] == {"value": [7]}
    assert plugin.calls == 2
    assert env.models.loaded() == []  # the model cache was freed before the retry


def test_fails_with_a_readable_message_then_recovers(settings):
    plugin = FlakyMemory(failures=2)
    env = _env(settings, plugin)
    events = []
    with pytest.raises(NodeExecutionError) as info:
        env.run(WORKFLOW, on_event=events.append)
    assert info.value.node_id == "1"
    assert "out of memory" in info.value.message and "smaller" in info.value.message
    assert events[-1].type == "failed" and events[-1].node_id == "1"
    assert env.run(WORKFLOW).outputs["2"] == {"value": [7]}
