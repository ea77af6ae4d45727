"""Operator workflows: the workflows folder, sidecars, validation, limits, and running
what a workflow makes on the tiny model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.services.operator_workflows import (
    OperatorWorkflows,
    UnknownWorkflow,
    WorkflowRejected,
)
from runner.templates import GenerationRequest
from runner.workflow import apply_overrides, load_workflow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
INVERTED = FIXTURES / "operator_workflows" / "inverted.json"


@pytest.fixture
def folder(env):
    return OperatorWorkflows(env.settings, env)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_add_a_ui_workflow_and_read_its_bindings(folder):
    workflow = folder.add(INVERTED.read_bytes(), "Inverted.json")
    assert workflow.name == "inverted" and (folder.folder / "inverted.json").is_file()
    assert folder.names() == ["inverted"]
    again = folder.get("inverted")
    assert again.description == "Inverted colours: a negative of the picture."
    assert again.template == "workflow:inverted"
    bound = {k: [str(t) for t in b.targets] for k, b in again.bindings.options.items()}
    assert bound["prompt"] == ["6.text"] and again.bindings.options["prompt"].source == "title"
    assert bound["seed"] == ["3.seed"] and bound["width"] == ["5.width"]
    assert again.request_defaults() == {
        "negative": "bad hands",
        "steps": 2,
        "cfg": 6.5,
        "sampler": "euler",
        "scheduler": "normal",
        "width": 64,
        "height": 64,
        "model": "tiny-random",
        "count": 1,
        "strength": 1,
    }
    text = "\n".join(again.describe())
    assert "prompt -> node 6 (CLIPTextEncode).text = 'a lighthouse' [title]" in text
    assert "ImageInvert" in text and "checkpoint tiny-random" in text


def test_the_built_workflow_makes_what_the_graph_makes(folder, env):
    workflow = folder.add(INVERTED.read_bytes(), "inverted.json")
    request = GenerationRequest(
        prompt="a red boat",
        seed=11,
        template=workflow.template,
        **{k: v for k, v in workflow.request_defaults().items() if k not in ("count", "strength")},
    )
    built = folder.builder(env.build_workflow)(request)
    ours = env.run(built).images
    # Independently: the graph loaded from the file, with the two inputs set by hand.
    graph = load_workflow(INVERTED, env.node_types)
    direct = env.run(
        apply_overrides(graph, [("6", "text", "a red boat"), ("3", "seed", 11)])
    ).images
    assert np.array_equal(pixels(ours[0]), pixels(direct[0]))
    # The distinctive node ran: without ImageInvert the picture is the negative.
    plain = apply_overrides(
        graph, [("6", "text", "a red boat"), ("3", "seed", 11), ("9", "images", ["8", 0])]
    )
    assert np.array_equal(pixels(ours[0]), 255 - pixels(env.run(plain).images[0]))


def test_an_attached_image_goes_into_a_text_to_image_workflow(folder, env):
    workflow = folder.add(INVERTED.read_bytes(), "inverted.json")
    source = env.settings.input_dir / "src.png"
    source.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(source)
    request = GenerationRequest(
        prompt="x",
        seed=3,
        template=workflow.template,
        width=64,
        height=64,
        steps=2,
        init_image="src.png",
        strength=0.5,
    )
    built = workflow.build(request)
    assert built["easel_image"]["inputs"]["image"] == "src.png"
    assert built["3"]["inputs"]["latent_image"] == ["easel_encode", 0]
    assert built["3"]["inputs"]["denoise"] == 0.5
    assert env.run(built).images


def test_add_names_every_problem_and_stores_nothing(folder):
    graph = load_workflow(FIXTURES / "comfyui_default_api.json")
    graph["20"] = {"class_type": "FancyUpscaler", "inputs": {"image": ["8", 0]}}
    graph["21"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "gone.safetensors",
            "strength_model": 1,
            "strength_clip": 1,
        },
    }
    graph["3"]["inputs"]["model"] = ["21", 0]
    graph["9"]["inputs"]["images"] = ["20", 0]
    with pytest.raises(WorkflowRejected) as err:
        folder.add(json.dumps(graph).encode(), "bad name!.json")
    problems = err.value.problems
    text = "\n".join(problems)
    assert "the name 'bad-name!'" in text
    assert "unknown node type 'FancyUpscaler'" in text
    assert "checkpoint 'v1-5-pruned-emaonly.safetensors' is not installed" in text
    assert "LoRA 'gone.safetensors' is not installed" in text
    assert len(problems) >= 4 and folder.names() == []


def test_sidecar_bindings_allow_and_limits(folder, env):
    sidecar = {
        "description": "fixed style",
        "negative": "6.text",
        "prompt": "7.text",
        "allow": ["prompt", "seed"],
        "max_steps": 4,
        "max_size": 64,
        "roles": [77],
    }
    graph = load_workflow(INVERTED, env.node_types)
    workflow = folder.add(json.dumps(graph).encode(), "styled.json", sidecar=sidecar)
    workflow = folder.get("styled")  # read back from the folder and its sidecar
    assert workflow.description == "fixed style"
    assert [str(t) for t in workflow.bindings.options["prompt"].targets] == ["7.text"]
    assert (
        workflow.usable_by([77])
        and not workflow.usable_by([5])
        and workflow.usable_by([], owner=True)
    )
    base = dict(
        prompt="p",
        template=workflow.template,
        **{k: v for k, v in workflow.request_defaults().items() if k not in ("count", "strength")},
    )
    assert workflow.check_request(GenerationRequest(**base)) == []
    problems = workflow.check_request(
        GenerationRequest(**{**base, "steps": 9, "cfg": 3, "width": 128})
    )
    assert problems == [
        "steps cannot be changed in this workflow",
        "cfg cannot be changed in this workflow",
        "width cannot be changed in this workflow",
        "steps 9 is more than this workflow's limit of 4",
        "size 128x64 is larger than this workflow's limit of 64x64",
    ]
    with pytest.raises(WorkflowRejected, match="no node '99'.*unknown key"):
        folder.check(
            json.dumps(graph).encode(), "x.json", sidecar={"prompt": "99.text", "colour": 1}
        )


def test_replace_remove_and_unknown_names(folder):
    folder.add(INVERTED.read_bytes(), "inverted.json")
    with pytest.raises(WorkflowRejected, match="exists"):
        folder.add(INVERTED.read_bytes(), "inverted.json")
    folder.add(INVERTED.read_bytes(), "inverted.json", replace=True)
    assert [p.name for p in folder.remove("inverted")] == ["inverted.json"]
    with pytest.raises(UnknownWorkflow, match="no workflow named 'inverted'"):
        folder.get("inverted")


def test_a_png_graph_runs_again_with_the_same_pixels(folder, env):
    graph = load_workflow(INVERTED, env.node_types)
    first = env.run(copy.deepcopy(graph)).images[0]  # SaveImage embeds the graph
    workflow = folder.png_run(Path(first).read_bytes())
    assert workflow.template.startswith("png-run:")
    defaults = {
        k: v for k, v in workflow.request_defaults().items() if k not in ("count", "strength")
    }
    request = GenerationRequest(
        prompt=workflow.current()["prompt"], seed=5, template=workflow.template, **defaults
    )
    rebuilt = folder.builder(env.build_workflow)(request)  # read back from workflow-runs/
    assert np.array_equal(pixels(env.run(rebuilt).images[0]), pixels(first))
    with pytest.raises(WorkflowRejected, match="no workflow"):
        plain = env.settings.data_dir / "plain.png"
        Image.new("RGB", (8, 8)).save(plain)
        folder.png_run(plain.read_bytes())


def test_other_templates_go_to_the_fallback(folder, env):
    request = GenerationRequest(prompt="p", seed=1).model_copy(update={"width": 64, "height": 64})
    assert folder.builder(env.build_workflow)(request) == env.build_workflow(request)


def test_check_again_lets_a_buttons_own_changes_through_and_nothing_else(folder, env):
    graph = load_workflow(INVERTED, env.node_types)
    graph["5"]["inputs"]["batch_size"] = 2
    sidecar = {"allow": ["negative"]}
    workflow = folder.add(json.dumps(graph).encode(), "fixed.json", sidecar=sidecar)
    now = workflow.current()
    earlier = GenerationRequest(
        prompt=now["prompt"],
        seed=123,  # a seed an earlier run was given (members may not pick one)
        template=workflow.template,
        **{k: v for k, v in workflow.request_defaults().items() if k not in ("count", "strength")},
        batch_size=2,
    )
    assert workflow.check_request(earlier) == ["seed cannot be changed in this workflow"]
    # Reuse seed, one image of the two (V/U): what the button does itself passes.
    one = earlier.model_copy(update={"batch_size": 1})
    assert workflow.check_again(one, earlier) == []
    # A new prompt, more images or an image (the allow list has none) do not.
    assert workflow.check_again(earlier.model_copy(update={"prompt": "x"}), earlier) == [
        "prompt cannot be changed in this workflow"
    ]
    assert workflow.check_again(earlier.model_copy(update={"batch_size": 3}), earlier) == [
        "batch_size cannot be changed in this workflow"
    ]
    assert workflow.check_again(one, earlier, image=True) == ["this workflow takes no image"]


def test_a_ui_file_with_unknown_nodes_names_its_missing_models_too(folder):
    ui = json.loads(INVERTED.read_text())
    ui["nodes"][0]["type"] = "CLIPTextEncodeDeluxe"
    loader = next(n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["widgets_values"] = ["missing.safetensors"]
    with pytest.raises(WorkflowRejected) as err:
        folder.check(json.dumps(ui).encode(), "broken.json")
    text = "\n".join(err.value.problems)
    assert "CLIPTextEncodeDeluxe" in text, text
    assert "checkpoint 'missing.safetensors' is not installed" in text, text
    # The same file already in the folder (put there by hand) reads the same.
    folder.folder.mkdir(parents=True, exist_ok=True)
    (folder.folder / "broken.json").write_text(json.dumps(ui))
    (listed,) = folder.list()
    assert isinstance(listed, WorkflowRejected)
    assert any("'missing.safetensors' is not installed" in p for p in listed.problems)
    assert any("CLIPTextEncodeDeluxe" in p for p in listed.problems)
