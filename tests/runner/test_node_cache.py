"""The executor's node cache, keyed as ComfyUI keys it (class, literal inputs, ancestors'
keys): only what a change reaches runs again, and the cache is bounded."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from runner_testlib import image_of, txt2img_workflow, with_inputs, write_gradient_png

ALL = ["4", "6", "7", "5", "3", "8", "9"]


def run_with_events(env, workflow):
    events = []
    result = env.run(workflow, on_event=events.append)
    return result, events


def by_type(events, kind):
    return [e.node_id for e in events if e.type == kind]


def test_first_run_executes_every_node_in_dependency_order(env):
    result, events = run_with_events(env, txt2img_workflow(env))
    assert result.executed == ALL
    assert result.cached == []
    assert by_type(events, "node_started") == ALL
    assert by_type(events, "node_cached") == []


def test_changing_only_the_seed_reruns_only_the_sampler_and_what_follows(env):
    workflow = txt2img_workflow(env)
    first = env.run(workflow)
    result, events = run_with_events(env, with_inputs(workflow, "3", seed=6))
    assert result.executed == ["3", "8", "9"]
    assert result.cached == ["4", "6", "7", "5"]
    assert by_type(events, "node_cached") == ["4", "6", "7", "5"]
    assert by_type(events, "node_started") == ["3", "8", "9"]
    assert result.images != first.images  # a new file for the new image


def test_an_identical_resubmission_executes_nothing(env):
    workflow = txt2img_workflow(env)
    first = env.run(workflow)
    result, events = run_with_events(env, copy.deepcopy(workflow))
    assert result.executed == []
    assert result.cached == ALL
    assert by_type(events, "node_started") == []
    assert [e.type for e in events][-1] == "finished"
    assert result.images == first.images  # the same outputs, nothing written again
    assert len(list(env.settings.output_dir.glob("*.png"))) == 1
    assert np.array_equal(image_of(result), image_of(first))


@pytest.mark.parametrize(("node_id", "text"), [("6", "a blue fox"), ("7", "oversaturated")])
def test_a_changed_prompt_reruns_only_that_encoder_and_what_follows(env, node_id, text):
    workflow = txt2img_workflow(env)
    env.run(workflow)
    result, events = run_with_events(env, with_inputs(workflow, node_id, text=text))
    assert result.executed == [node_id, "3", "8", "9"]
    unchanged = [n for n in ("4", "6", "7", "5") if n != node_id]
    assert result.cached == unchanged
    assert by_type(events, "node_cached") == unchanged


def test_a_changed_size_reruns_the_latent_and_what_follows(env):
    workflow = txt2img_workflow(env)
    env.run(workflow)
    result = env.run(with_inputs(workflow, "5", width=72))
    assert result.executed == ["5", "3", "8", "9"]
    assert result.values["8"][0].shape[2] == 72


def test_a_changed_filename_prefix_reruns_only_save_image(env):
    workflow = txt2img_workflow(env)
    env.run(workflow)
    result = env.run(with_inputs(workflow, "9", filename_prefix="other"))
    assert result.executed == ["9"]
    assert result.images[0].endswith("other_00001_.png")


def test_equivalent_literals_share_a_cache_entry(env):
    """Validation converts "4" to 4 before keying, so both spellings are one node."""
    workflow = txt2img_workflow(env)
    env.run(workflow)
    result = env.run(with_inputs(workflow, "3", steps="4", cfg=7))
    assert result.executed == []


def test_the_cache_is_shared_between_workflows(env):
    env.run(txt2img_workflow(env))
    other = txt2img_workflow(env, prompt="something else", seed=99)
    result = env.run(other)
    assert result.cached == ["4", "7", "5"]


def test_the_node_cache_is_bounded(make_env):
    env = make_env(node_cache_size=3)
    workflow = txt2img_workflow(env)
    env.run(workflow)
    assert len(env.node_cache) == 3
    again = env.run(workflow)
    assert again.executed  # evicted entries are computed again
    assert len(env.node_cache) == 3


def test_the_least_recently_used_entry_is_evicted_first():
    from runner.cache import NodeCache

    cache = NodeCache(2)
    cache.put("a", (1,))
    cache.put("b", (2,))
    assert cache.get("a") == (1,)  # a is now the most recently used
    cache.put("c", (3,))
    assert "b" not in cache and "a" in cache and "c" in cache
    assert len(cache) == 2


def test_output_bytes_count_tensors_in_outputs_and_handles_but_not_models(env):
    from dataclasses import dataclass

    import torch

    from runner.cache import output_nbytes

    image = torch.zeros(2, 64, 64, 3)  # 98,304 bytes
    latent = {"samples": torch.zeros(2, 4, 8, 8)}  # 2,048 bytes
    conditioning = [[torch.zeros(1, 77, 32), {"pooled_output": torch.zeros(1, 32)}]]

    @dataclass(frozen=True)
    class Handle:
        checkpoint: object
        extra: dict

    model = Handle(env.models.checkpoint("tiny-random"), {"mask": torch.zeros(16)})
    assert output_nbytes((image,)) == 98_304
    assert output_nbytes((latent,)) == 2_048
    assert output_nbytes((conditioning,)) == (77 * 32 + 32) * 4
    assert output_nbytes((model,)) == 64  # the mask; the loaded checkpoint counts 0
    assert output_nbytes(((image, image), {"ui": ["a.png"]})) == 98_304  # the same tensor once
    assert output_nbytes(((env.models.checkpoint("tiny-random").pipe.unet,), {})) == 0


def test_the_byte_budget_evicts_least_recently_used_outputs():
    import torch

    from runner.cache import NodeCache

    kb = torch.zeros(256)  # 1,024 bytes
    cache = NodeCache(100, max_bytes=3_000)
    cache.put("loader", ("a model handle",))  # no bytes
    cache.put("a", (kb.clone(),))
    cache.put("b", (kb.clone(),))
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("c", (kb.clone(),))
    assert "b" not in cache
    assert "a" in cache and "c" in cache and "loader" in cache
    assert cache.nbytes == 2_048
    cache.put("huge", (torch.zeros(1_000),))  # 4,000 bytes: more than the whole budget
    assert "huge" not in cache and "a" in cache and "c" in cache  # and it evicted nothing
    assert "loader" in cache  # entries without bytes are never evicted for bytes
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0


def test_an_image_heavy_workflow_stays_within_the_byte_budget(make_env, tmp_path):
    from runner.cache import output_nbytes

    big = dict(batch_size=4, width=128, height=128)
    probe = make_env(data_dir=tmp_path / "probe")
    first = probe.run(txt2img_workflow(probe, **big))
    sizes = {node: output_nbytes(first.values[node]) for node in ALL}
    assert sizes["8"] == 4 * 128 * 128 * 3 * 4  # the IMAGE batch dominates
    assert sizes["3"] == sizes["5"] == 4 * 4 * 16 * 16 * 4  # LATENT batches
    budget = sum(sizes.values()) - sizes["6"]  # one prompt's conditioning too little
    env = make_env(node_cache_mb=budget / 1024**2)
    workflow = txt2img_workflow(env, **big)
    env.run(workflow)
    assert 0 < env.node_cache.nbytes <= budget
    assert len(env.node_cache) == len(ALL) - 1
    again = env.run(workflow)
    # The oldest entry holding bytes (the positive prompt's conditioning) was evicted first;
    # the loader's handle holds no bytes and stays. (Running 6 again evicts the next oldest,
    # and so on: least recently used, as the budget asks.)
    assert again.cached[0] == "4" and again.executed[0] == "6"
    assert env.node_cache.nbytes <= budget
    tiny = make_env(node_cache_mb=sizes["8"] / 2 / 1024**2)
    tiny.run(workflow)
    assert tiny.node_cache.nbytes <= sizes["8"] / 2  # the image batch alone is too big: not kept
    assert tiny.run(workflow).executed == ["8"]


def test_the_byte_budget_keeps_a_seed_only_rerun_cheap(make_env):
    env = make_env(node_cache_mb=64)
    workflow = txt2img_workflow(env)
    env.run(workflow)
    result = env.run(with_inputs(workflow, "3", seed=6))
    assert result.executed == ["3", "8", "9"]
    assert result.cached == ["4", "6", "7", "5"]


def test_cache_key_covers_class_literals_links_and_extra():
    from runner.cache import cache_key

    base = cache_key("KSampler", {"seed": 1}, {"model": ("k1", 0)}, None)
    assert base == cache_key("KSampler", {"seed": 1}, {"model": ("k1", 0)}, None)
    assert base != cache_key("KSamplerAdvanced", {"seed": 1}, {"model": ("k1", 0)}, None)
    assert base != cache_key("KSampler", {"seed": 2}, {"model": ("k1", 0)}, None)
    assert base != cache_key("KSampler", {"seed": 1}, {"model": ("k2", 0)}, None)
    assert base != cache_key("KSampler", {"seed": 1}, {"model": ("k1", 1)}, None)
    assert base != cache_key("KSampler", {"seed": 1}, {"model": ("k1", 0)}, "changed")


def test_load_image_reruns_when_the_file_content_changes(env):
    from PIL import Image

    path = write_gradient_png(env.settings.input_dir / "init.png")
    workflow = {
        "10": {"class_type": "LoadImage", "inputs": {"image": "init.png"}},
        "11": {
            "class_type": "SaveImage",
            "inputs": {"images": ["10", 0], "filename_prefix": "copy"},
        },
    }
    first = env.run(workflow)
    assert env.run(workflow).executed == []
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    changed = env.run(workflow)
    assert changed.executed == ["10", "11"]
    assert float(changed.values["10"][0][..., 0].min()) == 1.0
    assert not np.array_equal(first.values["10"][0].numpy(), changed.values["10"][0].numpy())
