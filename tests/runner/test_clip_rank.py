"""CLIPImageTextRank: scores a batch against a prompt and returns the best top_k, best first.
The built-in tiny CLIP has random weights (clamped scores are 0), so these tests check
ordering, shapes and determinism, not values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from runner_testlib import image_of, txt2img_workflow

import plugins.clip_score as clip_score


def rank_workflow(env, batch=3, top_k=2, text="a fox"):
    workflow = txt2img_workflow(env, steps=2, batch_size=batch)
    workflow["30"] = {
        "class_type": "CLIPImageTextRank",
        "inputs": {"images": ["8", 0], "text": text, "clip_name": "tiny-random", "top_k": top_k},
    }
    workflow["9"]["inputs"]["images"] = ["30", 0]
    return workflow


def test_ranks_a_batch_and_keeps_top_k(module_env):
    result = module_env.run(rank_workflow(module_env, batch=3, top_k=2))
    best, report = result.values["30"]
    decoded = image_of(result)
    data = json.loads(report)
    assert tuple(best.shape) == (2, 64, 64, 3)
    assert len(data["scores"]) == 3 and all(s >= 0 for s in data["scores"])
    ranking, scores = data["ranking"], data["scores"]  # ranking: the indices kept, best first
    assert len(ranking) == 2 and len(set(ranking)) == 2 and set(ranking) <= {0, 1, 2}
    assert all(scores[a] >= scores[b] for a, b in zip(ranking, ranking[1:], strict=False))
    left_out = ({0, 1, 2} - set(ranking)).pop()
    assert scores[left_out] <= scores[ranking[-1]]
    for position, index in enumerate(ranking):
        assert np.array_equal(best[position].numpy(), decoded[index])
    assert len(result.images) == 2


@pytest.mark.parametrize(("batch", "top_k", "kept"), [(1, 1, 1), (2, 5, 2), (4, 1, 1)])
def test_top_k_and_shapes(module_env, batch, top_k, kept):
    best, report = module_env.run(rank_workflow(module_env, batch=batch, top_k=top_k)).values["30"]
    assert tuple(best.shape) == (kept, 64, 64, 3)
    assert len(json.loads(report)["ranking"]) == kept


def test_ranking_is_deterministic(module_env):
    workflow = rank_workflow(module_env, batch=3, top_k=3, text="a lighthouse")
    first = module_env.run(workflow).values["30"]
    module_env.node_cache.clear()
    second = module_env.run(workflow).values["30"]
    assert first[1] == second[1]
    assert torch.equal(first[0], second[0])


def test_clip_scores_shape_range_and_determinism(module_env):
    model, tokenizer = clip_score.load_clip(module_env, "tiny-random")
    images = torch.rand(3, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    scores = clip_score.clip_scores(model, tokenizer, images, "a fox")
    assert tuple(scores.shape) == (3,)
    assert torch.isfinite(scores).all() and float(scores.min()) >= 0 and float(scores.max()) <= 100
    assert torch.equal(scores, clip_score.clip_scores(model, tokenizer, images, "a fox"))


def test_best_first_with_ties_broken_by_position(module_env, monkeypatch):
    """The node's own ordering, with known scores in place of CLIP's."""
    given = torch.tensor([10.0, 30.0, 20.0, 30.0])
    monkeypatch.setattr(clip_score, "clip_scores", lambda model, tokenizer, images, text: given)
    images = torch.stack([torch.full((8, 8, 3), i / 4) for i in range(4)])
    node = module_env.node_types["CLIPImageTextRank"]
    best, report = node.function(
        _Ctx(module_env), images=images, text="x", clip_name="tiny-random", top_k=3
    )
    assert json.loads(report) == {"scores": [10.0, 30.0, 20.0, 30.0], "ranking": [1, 3, 2]}
    assert torch.equal(best, images[[1, 3, 2]])


class _Ctx:
    def __init__(self, env):
        self.env = env


def test_bad_inputs_are_validation_errors(module_env):
    from runner.validation import validate

    workflow = rank_workflow(module_env)
    workflow["30"]["inputs"].update(top_k=0, clip_name="openai/clip-vit-large")
    issues = validate(workflow, module_env.node_types, module_env).issues
    assert sorted((i.type, i.input_name) for i in issues) == [
        ("value_not_in_list", "clip_name"),
        ("value_smaller_than_min", "top_k"),
    ]
