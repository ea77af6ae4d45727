"""Bad input gets a clear error naming the problem, and nothing half-written: malformed JSON,
UI-format workflows, unknown node types, wrong types, sizes over the limits, missing or
unsafe image names, and pickle-based weights, which are refused without being read."""

from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import pytest
from runner_testlib import txt2img_workflow, with_inputs, write_gradient_png

from runner.errors import NodeExecutionError, WorkflowError, WorkflowInvalid
from runner.validation import validate
from runner.workflow import apply_overrides, load_workflow, parse_override


def issues_of(env, workflow):
    return [
        (i.type, i.node_id, i.input_name) for i in validate(workflow, env.node_types, env).issues
    ]


def assert_nothing_written(env):
    out = env.settings.output_dir
    assert not out.exists() or not any(out.rglob("*"))


# Reading workflows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"3": {"class_type": "KSampler",', "not valid JSON"),
        ("{'3': {}}", "not valid JSON"),
        ('{"3": {"inputs": {}}} trailing', "not valid JSON"),
    ],
)
def test_malformed_json_is_a_workflow_error(text, needle):
    with pytest.raises(WorkflowError, match=needle) as caught:
        load_workflow(text)
    assert "line 1" in str(caught.value)


def test_malformed_json_file_names_the_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "3": {"class_type": "KSampler"\n')
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    assert "broken.json" in str(caught.value) and "line 3" in str(caught.value)


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"a string"', "null"])
def test_json_that_is_not_an_object_is_a_workflow_error(tmp_path, text):
    path = tmp_path / "w.json"
    path.write_text(text)
    with pytest.raises(WorkflowError, match="JSON object"):
        load_workflow(path)


def test_ui_format_is_refused_with_a_hint():
    ui = {
        "last_node_id": 9,
        "nodes": [{"id": 3, "type": "KSampler"}],
        "links": [[1, 4, 0, 3, 0, "MODEL"]],
        "version": 0.4,
    }
    with pytest.raises(WorkflowError, match=r"Export \(API\)"):
        load_workflow(ui)


def test_missing_and_unreadable_workflow_files(tmp_path):
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow(tmp_path / "nope.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(WorkflowError, match="UTF-8"):
        load_workflow(binary)
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow(tmp_path)  # a folder


def test_oversized_workflow_files_are_refused(tmp_path, monkeypatch):
    import runner.workflow

    monkeypatch.setattr(runner.workflow, "MAX_WORKFLOW_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(
        '{"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "' + "x" * 200 + '"}}}'
    )
    with pytest.raises(WorkflowError, match="bytes"):
        load_workflow(path)


@pytest.mark.parametrize("text", ["3steps=4", "3.steps", ".steps=4", "3.=4"])
def test_malformed_overrides(text):
    with pytest.raises(WorkflowError, match="NODE.INPUT=VALUE"):
        parse_override(text)


def test_overrides_parse_json_values_and_need_an_existing_node():
    workflow = {"3": {"class_type": "KSampler", "inputs": {}}}
    assert parse_override("3.cfg=7.5") == ("3", "cfg", 7.5)
    assert parse_override("4.ckpt_name=tiny-random") == ("4", "ckpt_name", "tiny-random")
    assert parse_override('6.text="a=b"') == ("6", "text", "a=b")
    assert apply_overrides(workflow, ["3.steps=2"])["3"]["inputs"] == {"steps": 2}
    with pytest.raises(WorkflowError, match="no node '99'"):
        apply_overrides(workflow, ["99.steps=2"])


# Workflows that read but do not validate ---------------------------------------------------


def test_unknown_node_types_name_the_node_and_the_type(env):
    workflow = txt2img_workflow(env)
    workflow["30"] = {"class_type": "UltimateSDUpscale", "inputs": {"image": ["8", 0]}}
    workflow["9"]["inputs"]["images"] = ["30", 0]
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow)
    issues = caught.value.issues
    assert [(i.type, i.node_id, i.value) for i in issues if i.node_id == "30"] == [
        ("invalid_prompt", "30", "UltimateSDUpscale")
    ]
    assert "UltimateSDUpscale" in str(caught.value)
    assert env.models.loaded() == []
    assert_nothing_written(env)


def test_wrong_types_are_reported_with_their_values(env):
    workflow = with_inputs(txt2img_workflow(env), "3", seed="lucky", cfg=[7], denoise={"x": 1})
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow)
    found = {(i.type, i.input_name, repr(i.value)) for i in caught.value.issues}
    assert found == {
        ("invalid_input_type", "seed", "'lucky'"),
        ("bad_linked_input", "cfg", "[7]"),
        ("invalid_input_type", "denoise", "{'x': 1}"),
    }
    assert_nothing_written(env)


def test_sizes_over_the_configured_limits_fail_before_loading(make_env):
    env = make_env(max_width=512, max_height=512, max_batch=4, max_steps=50)
    workflow = txt2img_workflow(env, width=1024, height=768, batch_size=8, steps=100)
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow)
    messages = {i.input_name: i.message for i in caught.value.issues}
    assert set(messages) == {"width", "height", "batch_size", "steps"}
    assert "max_width" in messages["width"] and "512" in messages["width"]
    assert "max_batch" in messages["batch_size"] and "max_steps" in messages["steps"]
    assert env.models.loaded() == []
    assert_nothing_written(env)


# Input images -----------------------------------------------------------------------------


def load_image_workflow(name):
    return {
        "10": {"class_type": "LoadImage", "inputs": {"image": name}},
        "11": {
            "class_type": "SaveImage",
            "inputs": {"images": ["10", 0], "filename_prefix": "copy"},
        },
    }


def test_a_missing_image_file_is_named(env):
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(load_image_workflow("holiday.png"))
    (issue,) = caught.value.issues
    assert (issue.type, issue.node_id, issue.input_name, issue.value) == (
        "value_not_in_list",
        "10",
        "image",
        "holiday.png",
    )
    assert "holiday.png" in issue.message


@pytest.mark.parametrize(
    "name", ["../secret.png", "a/../../secret.png", "SECRET_ABSOLUTE", "", "."]
)
def test_image_names_cannot_leave_the_input_folder(env, name):
    secret = write_gradient_png(env.settings.data_dir / "secret.png")
    name = str(secret) if name == "SECRET_ABSOLUTE" else name
    write_gradient_png(env.settings.input_dir / "a" / "ok.png")
    assert issues_of(env, load_image_workflow(name)) == [("value_not_in_list", "10", "image")]
    with pytest.raises(WorkflowInvalid):
        env.run(load_image_workflow(name))


def test_a_symlink_out_of_the_input_folder_is_refused(env):
    secret = write_gradient_png(env.settings.data_dir / "secret.png")
    env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    (env.settings.input_dir / "link.png").symlink_to(secret)
    assert issues_of(env, load_image_workflow("link.png")) == [("value_not_in_list", "10", "image")]


def test_an_image_in_a_subfolder_is_fine(env):
    write_gradient_png(env.settings.input_dir / "a" / "ok.png")
    assert issues_of(env, load_image_workflow("a/ok.png")) == []


def test_a_file_that_is_not_an_image_is_refused_at_validation(env):
    env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    (env.settings.input_dir / "fake.png").write_text("#!/bin/sh\necho not an image\n")
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(load_image_workflow("fake.png"))
    (issue,) = caught.value.issues
    assert issue.node_id == "10" and "not a readable image" in issue.message
    assert_nothing_written(env)


def test_an_image_over_the_upload_limit_is_refused_at_validation(make_env):
    env = make_env(max_upload_mb=0.001)
    write_gradient_png(env.settings.input_dir / "big.png", width=256, height=256)
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(load_image_workflow("big.png"))
    (issue,) = caught.value.issues
    assert "MB" in issue.message and "allowed" in issue.message


@pytest.mark.parametrize("length", [300, 5000])
def test_absurdly_long_names_are_validation_errors(env, length):
    name = "a/" * (length // 2)
    workflow = txt2img_workflow(env)
    workflow["4"]["inputs"]["ckpt_name"] = name
    workflow["10"] = load_image_workflow(name)["10"]
    workflow["11"] = load_image_workflow(name)["11"]
    assert sorted(issues_of(env, workflow)) == [
        ("value_not_in_list", "10", "image"),
        ("value_not_in_list", "4", "ckpt_name"),
    ]


# Pickle-based weights ---------------------------------------------------------------------


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle was (wrongly) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.fixture
def pickle_off(make_env):
    """An Environment whose operator turned ``allow_pickle_weights`` off: pickles are
    refused by name. (With it on, tests/models/test_pickle_weights.py shows that a pickle
    needing more than tensors is refused by the restricted unpickler and never runs.)"""
    return make_env(allow_pickle_weights=False)


@pytest.fixture
def booby_trapped(pickle_off, monkeypatch):
    """Pickle files in every models folder; torch.load and pickle.load fail the test if called."""
    env = pickle_off
    import torch

    marker = env.settings.data_dir / "UNPICKLED"
    payload = pickle.dumps(_Payload(marker))
    for folder in ("checkpoints", "loras"):
        base = env.settings.models_root / folder
        base.mkdir(parents=True, exist_ok=True)
        for suffix in (".ckpt", ".pt", ".bin", ".pth", ".pkl"):
            (base / f"evil{suffix}").write_bytes(payload)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    yield marker
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth", ".pkl"])
def test_pickle_checkpoints_are_refused_by_name(pickle_off, booby_trapped, suffix):
    env = pickle_off
    workflow = with_inputs(txt2img_workflow(env), "4", ckpt_name=f"evil{suffix}")
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow)
    (issue,) = caught.value.issues
    assert (issue.type, issue.node_id, issue.input_name) == ("value_not_in_list", "4", "ckpt_name")
    assert "pickle" in issue.message and ".safetensors" in issue.message
    assert env.models.loaded() == []


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_loras_are_refused_by_name(pickle_off, booby_trapped, suffix):
    env = pickle_off
    workflow = txt2img_workflow(env, loras=[(f"evil{suffix}", 1.0)])
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow)
    (issue,) = caught.value.issues
    assert (issue.type, issue.node_id, issue.input_name) == ("value_not_in_list", "20", "lora_name")
    assert "pickle" in issue.message


def test_pickle_files_are_not_offered_but_are_reported(pickle_off, booby_trapped):
    env = pickle_off
    assert all(
        not n.startswith("evil") for n in env.models.checkpoint_names() + env.models.lora_names()
    )
    unsafe = {p.name for p in env.models.unsafe_files()}
    assert {"evil.ckpt", "evil.pt", "evil.bin", "evil.pth", "evil.pkl"} <= unsafe


def test_a_diffusers_folder_with_pickle_weights_is_not_unpickled(
    pickle_off, booby_trapped, cache_folder
):
    env = pickle_off
    from runner.models.tiny import tiny_model_dir

    folder = env.settings.models_root / "checkpoints" / "pickled-model"
    shutil.copytree(tiny_model_dir(cache_folder), folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(
        (env.settings.models_root / "checkpoints" / "evil.bin").read_bytes()
    )
    workflow = with_inputs(txt2img_workflow(env), "4", ckpt_name="pickled-model")
    with pytest.raises(NodeExecutionError) as caught:
        env.run(workflow)
    assert caught.value.node_id == "4" and "pickled-model" in caught.value.message
    assert_nothing_written(env)
    assert len(env.run(copy.deepcopy(txt2img_workflow(env, steps=2))).images) == 1
