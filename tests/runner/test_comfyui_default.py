"""ComfyUI's own default workflow (exported with "Export (API)") runs unchanged but for the
checkpoint name; a copy lives in tests/fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runner_testlib import png_pixels

from runner.validation import validate
from runner.workflow import apply_overrides, load_workflow

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui_default_api.json"


@pytest.fixture(scope="module")
def default_workflow():
    return load_workflow(FIXTURE)


def test_the_fixture_is_comfyuis_default_graph(default_workflow):
    classes = {node_id: node["class_type"] for node_id, node in default_workflow.items()}
    assert classes == {
        "3": "KSampler",
        "4": "CheckpointLoaderSimple",
        "5": "EmptyLatentImage",
        "6": "CLIPTextEncode",
        "7": "CLIPTextEncode",
        "8": "VAEDecode",
        "9": "SaveImage",
    }


def test_unmodified_it_fails_only_for_the_missing_checkpoint(module_env, default_workflow):
    issues = validate(default_workflow, module_env.node_types, module_env).issues
    assert [(i.type, i.node_id, i.input_name) for i in issues] == [
        ("value_not_in_list", "4", "ckpt_name")
    ]
    assert "v1-5-pruned-emaonly.safetensors" in issues[0].message


def test_it_validates_with_only_ckpt_name_changed(module_env, default_workflow):
    workflow = apply_overrides(default_workflow, ["4.ckpt_name=tiny-random"])
    result = validate(workflow, module_env.node_types, module_env)
    assert result.ok, [str(i) for i in result.issues]
    assert result.nodes["3"].literals == {
        "seed": 8566257,
        "steps": 20,
        "cfg": 8.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
    }
    assert result.nodes["5"].literals == {"width": 512, "height": 512, "batch_size": 1}
    assert default_workflow["4"]["inputs"]["ckpt_name"] != "tiny-random"  # overrides copy


def test_it_runs_on_the_tiny_model(module_env, default_workflow):
    from runner.images import read_png_text

    workflow = apply_overrides(
        default_workflow,
        ["4.ckpt_name=tiny-random", "5.width=64", "5.height=64", "3.steps=4"],
    )
    events = []
    result = module_env.run(workflow, on_event=events.append)
    assert result.executed == ["4", "6", "7", "5", "3", "8", "9"]
    assert [e.step for e in events if e.type == "progress"] == [1, 2, 3, 4]
    (path,) = result.images
    assert Path(path).name == "ComfyUI_00001_.png"
    assert png_pixels(path).shape == (64, 64, 3)
    assert json.loads(read_png_text(Path(path))["prompt"]) == workflow


def test_it_loads_from_comfyuis_prompt_envelope(tmp_path, default_workflow):
    wrapped = tmp_path / "prompt.json"
    wrapped.write_text(json.dumps({"prompt": default_workflow, "client_id": "abc"}))
    assert load_workflow(wrapped) == default_workflow
    assert load_workflow(FIXTURE.read_text()) == default_workflow
