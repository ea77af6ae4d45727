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
        "Sampler: Euler",
        "Schedule type: Normal",
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


# A1111 parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "scheduler", "label", "schedule"),
    [
        ("euler_ancestral", "normal", "Euler a", "Normal"),
        ("dpmpp_2m", "karras", "DPM++ 2M", "Karras"),
        ("dpmpp_2m_sde", "exponential", "DPM++ 2M SDE", "Exponential"),
        ("ddim", "ddim_uniform", "DDIM", "DDIM"),
        ("uni_pc", "sgm_uniform", "UniPC", "SGM Uniform"),
        ("some_new_sampler", "linear_quadratic", "some_new_sampler", "linear_quadratic"),
    ],
)
def test_parameters_use_a1111s_sampler_and_schedule_labels(sampler, scheduler, label, schedule):
    from runner.images import a1111_parameters

    text = a1111_parameters({"prompt": "p", "sampler": sampler, "scheduler": scheduler})
    pairs = text.split("\n")[1]
    assert f"Sampler: {label}, Schedule type: {schedule}," in pairs


def test_parameter_values_with_commas_colons_or_newlines_are_quoted_as_a1111_does():
    from runner.images import a1111_parameters

    model = 'sd, "best" edition'
    text = a1111_parameters({"prompt": "a, b", "model": model, "loras": "x:0.7", "seed": 3})
    lines = text.split("\n")
    assert lines[0] == "a, b"  # the prompt line is never quoted
    # A1111 writes such values as JSON strings: double quotes, backslash escapes
    assert 'Model: "sd, \\"best\\" edition"' in lines[1]
    assert 'Lora: "x:0.7"' in lines[1] and "Seed: 3," in lines[1]
    assert json.loads(lines[1].split("Model: ")[1].split(", Lora")[0]) == model


def test_size_is_the_saved_images_size(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["20"] = {
        "class_type": "ImageScaleBy",
        "inputs": {"image": ["8", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
    }
    workflow["9"]["inputs"]["images"] = ["20", 0]
    result = env.run(workflow)
    (path,) = result.images
    assert png_pixels(path).shape == (96, 96, 3)
    assert "Size: 96x96," in read_png_text(Path(path))["parameters"]


# filename_prefix tokens -------------------------------------------------------------------


def test_date_tokens_follow_comfyuis_format():
    from datetime import datetime

    from plugins.core.image import expand_prefix

    when = datetime(2026, 3, 4, 5, 6, 7)
    expanded = expand_prefix(
        "%date:yyyy-MM-dd%/%date:yy.M.d h-m-s%_%date:hhmmss%_%year%%month%%day%%hour%%minute%%second%",
        workflow={},
        width=8,
        height=9,
        when=when,
    )
    assert expanded == "2026-03-04/26.3.4 5-6-7_050607_20260304050607"


def test_width_height_and_node_tokens_name_the_file(env):
    workflow = txt2img_workflow(env, steps=2, seed=77)
    workflow["3"]["_meta"] = {"title": "My Sampler"}
    workflow["9"]["inputs"]["filename_prefix"] = (
        "%date:yyyy%/%width%x%height%_%KSampler.seed%_%3.steps%_%My Sampler.cfg%_%6.text%"
    )
    from datetime import datetime

    before = datetime.now().year
    result = env.run(workflow)
    (image,) = result.outputs["9"]["images"]
    assert image["subfolder"] in {str(before), str(datetime.now().year)}
    text = workflow["6"]["inputs"]["text"]
    assert image["filename"] == f"64x64_77_2_{workflow['3']['inputs']['cfg']}_{text}_00001_.png"
    assert Path(image["path"]).parent == env.settings.output_dir / image["subfolder"]


def test_node_token_values_cannot_make_folders(env):
    workflow = txt2img_workflow(env, steps=2, prompt="../../up/and/away")
    workflow["9"]["inputs"]["filename_prefix"] = "x_%6.text%"
    result = env.run(workflow)
    (image,) = result.outputs["9"]["images"]
    assert image["subfolder"] == "" and image["filename"] == "x_.._.._up_and_away_00001_.png"


@pytest.mark.parametrize(
    ("prefix", "needle"),
    [("%nope%/x", "unknown token %nope%"), ("%date:yyyy%/../../x", "'..'")],
)
def test_bad_tokens_are_refused_before_anything_runs(env, prefix, needle):
    workflow = with_inputs(txt2img_workflow(env, steps=2), "9", filename_prefix=prefix)
    events = []
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow, on_event=events.append)
    assert needle in str(caught.value) and "filename_prefix" in str(caught.value)
    assert not any(e.type == "node_started" for e in events)
    assert not env.settings.output_dir.exists() or not any(env.settings.output_dir.rglob("*"))


@pytest.mark.parametrize(
    ("prefix", "needle"),
    [
        ("%Nobody.seed%", "no node with id, title or type 'Nobody'"),
        ("%KSampler.nothing%", "has no input 'nothing'"),
        ("%3.model%", "is a link, not a value"),
    ],
)
def test_a_token_naming_no_node_input_is_refused_before_anything_runs(env, prefix, needle):
    # Caught by validation (the whole workflow is known then), not after sampling.
    workflow = with_inputs(txt2img_workflow(env, steps=2), "9", filename_prefix=prefix)
    events = []
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow, on_event=events.append)
    (issue,) = caught.value.issues
    assert issue.type == "custom_validation_failed"
    assert (issue.node_id, issue.input_name, issue.value) == ("9", "filename_prefix", prefix)
    assert needle in issue.message and prefix in issue.message
    assert not any(e.type == "node_started" for e in events)


def test_animated_savers_check_node_tokens_before_running(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["9"] = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {
            "images": ["8", 0],
            "filename_prefix": "a_%Nobody.seed%",
            "fps": 6.0,
            "compress_level": 4,
        },
    }
    with pytest.raises(WorkflowInvalid, match="Nobody"):
        env.run(workflow)


def test_a_token_naming_a_title_passes_validation(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["3"]["_meta"] = {"title": "Main"}
    workflow["9"]["inputs"]["filename_prefix"] = "t_%Main.seed%"
    (image,) = env.run(workflow).outputs["9"]["images"]
    assert image["filename"].startswith(f"t_{workflow['3']['inputs']['seed']}_")


def test_batch_num_numbers_each_image(env):
    workflow = txt2img_workflow(env, steps=2, batch_size=2, filename_prefix="b%batch_num%")
    names = [Path(p).name for p in env.run(workflow).images]
    assert names == ["b0_00001_.png", "b1_00002_.png"]


# Other outputs --------------------------------------------------------------------------


def test_a_websocket_output_counts_as_an_output(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["9"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    result = env.run(workflow)
    (path,) = result.images
    assert Path(path).parent == env.settings.cache_dir / "temp"
    assert np.array_equal(png_pixels(path), np.round(image_of(result)[0] * 255).astype(np.uint8))


def _frames(result) -> np.ndarray:
    return np.round(image_of(result) * 255).astype(np.uint8)


def test_save_animated_webp_writes_one_file_with_every_frame(env):
    from PIL import Image

    from runner.workflow import load_workflow

    workflow = txt2img_workflow(env, steps=2, batch_size=3)
    workflow["9"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["8", 0],
            "filename_prefix": "anim/fox",
            "fps": 4.0,
            "lossless": True,
            "quality": 80,
            "method": "fastest",
        },
    }
    result = env.run(workflow)
    (path,) = result.images
    assert Path(path).name == "fox_00001_.webp" and Path(path).parent.name == "anim"
    assert result.outputs["9"]["animated"] == (True,)
    expected = _frames(result)
    with Image.open(path) as im:
        assert im.format == "WEBP" and im.n_frames == 3
        for i in range(3):
            im.seek(i)
            im.load()
            assert im.info["duration"] == 250
            assert np.array_equal(np.asarray(im.convert("RGB")), expected[i])  # lossless
    assert load_workflow(Path(path), env.node_types) == workflow


def test_save_animated_png_writes_an_apng_with_the_workflow(env):
    from PIL import Image

    workflow = txt2img_workflow(env, steps=2, batch_size=2)
    workflow["9"] = {
        "class_type": "SaveAnimatedPNG",
        "inputs": {"images": ["8", 0], "filename_prefix": "apng", "fps": 10.0, "compress_level": 9},
    }
    result = env.run(workflow)
    (path,) = result.images
    expected = _frames(result)
    with Image.open(path) as im:
        assert im.n_frames == 2 and getattr(im, "is_animated", False)
        for i in range(2):
            im.seek(i)
            im.load()
            assert im.info.get("duration") == 100
            assert np.array_equal(np.asarray(im.convert("RGB")), expected[i])
    text = read_png_text(Path(path))
    assert json.loads(text["prompt"]) == workflow and "workflow" in text
