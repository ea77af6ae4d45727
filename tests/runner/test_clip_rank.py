"""CLIPImageTextRank: scores a batch against a prompt and returns the best top_k, best first.
The built-in tiny CLIP has random weights (clamped scores are 0), so these tests check
ordering, shapes and determinism, not values; the best-of tests use the tiny ranker of
``tests/helpers/tiny_clip.py`` (positive, distinct scores) and recompute its ranking with
transformers' own CLIP image processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.tiny_clip import RANKER, as_uint8, independent_scores, write_tiny_clip
from runner_testlib import image_of, png_pixels, txt2img_workflow, write_gradient_png

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
    returned = node.function(
        _Ctx(module_env), images=images, text="x", clip_name="tiny-random", top_k=3
    )
    best, report = returned["result"]
    assert json.loads(report) == {"scores": [10.0, 30.0, 20.0, 30.0], "ranking": [1, 3, 2]}
    assert torch.equal(best, images[[1, 3, 2]])
    # An output node: the same report reaches the job's outputs, with the model's name.
    assert returned["ui"] == {"clip_ranking": {**json.loads(report), "clip_name": "tiny-random"}}


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


# -- best of N: the request's best_of through any template ---------------------------------


@pytest.fixture(scope="module")
def ranker(module_env):
    """The tiny ranker CLIP saved in the environment's models/clip folder, loaded back
    with transformers as an independent scorer."""
    from transformers import CLIPModel

    folder = write_tiny_clip(module_env.settings.models_root)
    return RANKER, CLIPModel.from_pretrained(folder, local_files_only=True).eval()


def best_of_request(ranker_name, **changes):
    from runner.templates import GenerationRequest

    given = dict(
        prompt="a red fox in the snow",
        seed=5,
        steps=2,
        width=64,
        height=64,
        best_of=4,
        batch_size=1,
        best_of_clip=ranker_name,
    )
    return GenerationRequest(**{**given, **changes})


def test_easel_scores_match_clips_own_preprocessing(module_env, ranker):
    name, model = ranker
    result = module_env.run(txt2img_workflow(module_env, steps=2, batch_size=4))
    pixels = as_uint8(image_of(result))
    mine = clip_score.clip_scores(
        *clip_score.load_clip(module_env, name), torch.from_numpy(pixels / 255.0), "a red fox"
    )
    theirs = independent_scores(model, pixels, "a red fox", module_env.settings.cache_dir)
    assert all(s > 0 for s in theirs) and len(set(theirs)) == 4  # a ranking to speak of
    assert np.allclose(mine.numpy(), theirs, atol=0.3)


@pytest.mark.parametrize("keep", [1, 2])
def test_best_of_keeps_the_candidates_clip_ranks_first(module_env, ranker, keep):
    name, model = ranker
    request = best_of_request(name, batch_size=keep)
    workflow = module_env.build_workflow(request)
    assert workflow["5"]["inputs"]["batch_size"] == 4  # one batch of all the candidates
    result = module_env.run(workflow)
    # The same request without ranking: its 4 images are the candidates.
    plain = module_env.build_workflow(request.model_copy(update={"best_of": None, "batch_size": 4}))
    candidates = as_uint8(image_of(module_env.run(plain)))
    scores = independent_scores(model, candidates, request.prompt, module_env.settings.cache_dir)
    expected = sorted(range(4), key=lambda i: -scores[i])[:keep]
    (report,) = [o["clip_ranking"] for o in result.outputs.values() if "clip_ranking" in o]
    assert report["ranking"] == expected and report["clip_name"] == name
    assert np.allclose(report["scores"], scores, atol=0.3)
    assert len(result.images) == keep
    for path, index in zip(result.images, expected, strict=True):
        assert np.array_equal(png_pixels(path), candidates[index])


def test_best_of_img2img_ranks_its_batch_too(module_env, ranker, tmp_path):
    name, _ = ranker
    module_env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    image = write_gradient_png(module_env.settings.input_dir / "best_of_source.png")
    request = best_of_request(name, init_image=image.name, strength=0.6, batch_size=2)
    workflow = module_env.build_workflow(request)
    ranks = [n for n in workflow.values() if n["class_type"] == "CLIPImageTextRank"]
    assert len(ranks) == 1 and ranks[0]["inputs"]["top_k"] == 2
    result = module_env.run(workflow)
    assert len(result.images) == 2
    (report,) = [o["clip_ranking"] for o in result.outputs.values() if "clip_ranking" in o]
    assert len(report["scores"]) == 4


def test_best_of_without_a_clip_model_or_a_save_node_is_refused(module_env):
    from pydantic import ValidationError

    from runner.errors import TemplateError
    from runner.templates import GenerationRequest, rank_with_clip

    with pytest.raises(TemplateError, match="CLIP model"):
        module_env.build_workflow(best_of_request(None))
    with pytest.raises(TemplateError, match="SaveImage"):
        rank_with_clip(
            lambda r: {"1": {"class_type": "EmptyLatentImage", "inputs": {}}},
            best_of_request("tiny-random"),
        )
    with pytest.raises(ValidationError, match="more than were made"):
        GenerationRequest(prompt="x", best_of=2, batch_size=3)
    # Without best_of the template's workflow is untouched.
    plain = best_of_request("tiny-random", best_of=None)
    assert "CLIPImageTextRank" not in json.dumps(module_env.build_workflow(plain))
