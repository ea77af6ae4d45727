"""SaveImage: PNG files carrying the workflow in a ``prompt`` chunk (as ComfyUI writes it)
and A1111's ``parameters`` chunk; names stay inside the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runner_testlib import image_of, png_pixels, txt2img_workflow, with_inputs

from runner.errors import NodeExecutionError, WorkflowInvalid
from runner.images import read_png_text, workflow_from_png


def test_png_carries_the_workflow_and_a1111_parameters(env):
    workflow = txt2img_workflow(
        env, prompt="a lighthouse at dawn", negative="fog", seed=42, steps=3, cfg=6.5
    )
    result = env.run(workflow)
    (path,) = map(Path, result.images)
    assert path.parent == env.settings.output_dir and path.name == "easel_00001_.png"
    text = read_png_text(path)
    assert json.loads(text["prompt"]) == workflow
    lines = text["parameters"].split("\n")
    assert lines[0] == "a lighthouse at dawn"
    assert lines[1] == "Negative prompt: fog"
    for part in (
        "Steps: 3",
        "Sampler: euler",
        "Schedule type: normal",
        "CFG scale: 6.5",
        "Seed: 42",
        "Size: 64x64",
        "Model: tiny-random",
    ):
        assert part in lines[2]
    assert "Denoising strength" not in lines[2]
    assert np.array_equal(png_pixels(path), np.round(image_of(result)[0] * 255).astype(np.uint8))


def test_the_stored_workflow_reproduces_the_image(env, make_env, tmp_path):
    result = env.run(txt2img_workflow(env, seed=8, steps=2))
    stored = workflow_from_png(Path(result.images[0]))
    other = make_env(data_dir=tmp_path / "other")
    again = other.run(stored)
    assert np.array_equal(png_pixels(again.images[0]), png_pixels(result.images[0]))


def test_parameters_list_loras_and_denoise(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["20"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "x",
            "strength_model": 0.7,
            "strength_clip": 1,
        },
    }
    from plugins.core.image import _parameters_for

    workflow["3"]["inputs"].update(model=["20", 0], denoise="0.5")
    params = _parameters_for(workflow, "9")
    assert params["loras"] == "x:0.7" and params["denoise"] == 0.5


def test_a_denoise_written_as_text_is_recorded(env):
    """Validation accepts "0.5" for a FLOAT; the metadata must cope with the raw value too."""
    workflow = with_inputs(txt2img_workflow(env, steps=2), "3", denoise="0.5")
    result = env.run(workflow)
    assert "Denoising strength: 0.5" in read_png_text(Path(result.images[0]))["parameters"]


def test_file_names_count_up_and_batches_write_one_file_each(env):
    first = env.run(txt2img_workflow(env, steps=2, batch_size=2))
    second = env.run(txt2img_workflow(env, steps=2, seed=6))
    names = [Path(p).name for p in first.images + second.images]
    assert names == ["easel_00001_.png", "easel_00002_.png", "easel_00003_.png"]
    assert all(Path(p).stat().st_size > 0 for p in first.images + second.images)
    assert not list(env.settings.output_dir.glob(".tmp-*"))  # nothing half-written left


def test_a_subfolder_prefix(env):
    result = env.run(txt2img_workflow(env, steps=2, filename_prefix="fox/portraits"))
    (image,) = result.outputs["9"]["images"]
    assert image["subfolder"] == "fox" and image["filename"] == "portraits_00001_.png"
    assert Path(image["path"]).parent == env.settings.output_dir / "fox"


@pytest.mark.parametrize(
    "prefix",
    ["../escape", "a/../../escape", "/tmp/escape", "..", "x\\..\\..\\y", "bad\x00name", ""],
)
def test_unsafe_prefixes_are_refused_and_nothing_is_written(env, tmp_path, prefix):
    workflow = with_inputs(txt2img_workflow(env, steps=2), "9", filename_prefix=prefix)
    with pytest.raises((NodeExecutionError, WorkflowInvalid)) as caught:
        env.run(workflow)
    if isinstance(caught.value, NodeExecutionError):
        assert caught.value.node_id == "9" and "filename_prefix" in caught.value.message
    written = [p for p in tmp_path.rglob("*.png")]
    assert written == []
    assert not Path("/tmp/escape_00001_.png").exists()


def test_preview_image_writes_to_the_temporary_folder(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    result = env.run(workflow)
    (image,) = result.outputs["9"]["images"]
    assert image["type"] == "temp" and Path(image["path"]).is_file()
    assert Path(image["path"]).parent == env.settings.cache_dir / "temp"
