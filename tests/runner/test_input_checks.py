"""Bad input is refused by validation, before any weight loads (issue 10, item 11): a number
where text belongs, a filename_prefix that leaves the output folder, a LoadImage file larger
than max_width x max_height (read from its header only), a missing required input (even one
with a default, as ComfyUI does), and a prompt longer than max_prompt_chars."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image
from runner_testlib import txt2img_workflow, with_inputs, write_gradient_png

from runner.errors import WorkflowInvalid
from runner.validation import validate


def refused(env, workflow) -> list[tuple]:
    """The issues ``env.run`` refused ``workflow`` with; asserts no checkpoint was loaded and
    no image written."""
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow)
    assert env.models.loaded() == []  # refused before any weight loads
    assert not list(env.settings.output_dir.rglob("*.png"))
    return [(i.type, i.node_id, i.input_name, i.value) for i in caught.value.issues]


def test_a_number_where_text_belongs_is_invalid_input_type(env):
    # Today: encoded as "42", sampled, then SaveImage failed with a TypeError.
    issues = refused(env, with_inputs(txt2img_workflow(env), "6", text=42))
    assert issues == [("invalid_input_type", "6", "text", 42)]
    issue = validate(with_inputs(txt2img_workflow(env), "6", text=42), env.node_types, env).issues[
        0
    ]
    assert "node 6 (CLIPTextEncode), input 'text'" in str(issue)
    assert "the number 42" in issue.message and "quotes" in issue.message
    # The same for a COMBO and for a float; real text still works.
    bad = with_inputs(txt2img_workflow(env), "3", sampler_name=1.5)
    assert [i.type for i in validate(bad, env.node_types, env).issues] == ["invalid_input_type"]
    assert validate(with_inputs(txt2img_workflow(env), "6", text="42"), env.node_types, env).ok


@pytest.mark.parametrize("prefix", ["../x", "/tmp/x", "a/../../x", "C:/x", "fox/", "bad\x00name"])
def test_a_bad_filename_prefix_is_refused_at_validation(env, prefix):
    # Today: sampled first, then refused by SaveImage.
    issues = refused(env, with_inputs(txt2img_workflow(env), "9", filename_prefix=prefix))
    assert issues == [("custom_validation_failed", "9", "filename_prefix", prefix)]


def test_a_prefix_through_a_symlink_out_of_the_output_folder_is_refused(env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    env.settings.output_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, env.settings.output_dir / "link")
    issues = refused(env, with_inputs(txt2img_workflow(env), "9", filename_prefix="link/x"))
    assert issues == [("custom_validation_failed", "9", "filename_prefix", "link/x")]
    assert list(outside.iterdir()) == []
    # A real subfolder is fine.
    assert validate(
        with_inputs(txt2img_workflow(env), "9", filename_prefix="fox/x"), env.node_types, env
    ).ok


def img2img(env, image: str):
    return txt2img_workflow(env, init_image=image, strength=0.5, template="img2img")


def test_an_image_larger_than_the_limit_is_refused_from_its_header(env):
    # A real 8000x8000 PNG (279 kB at this compression); today LoadImage decoded it
    # (over 240 s and 3.4 GB in the fault run).
    env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8000, 8000)).save(env.settings.input_dir / "huge.png", compress_level=1)
    write_gradient_png(env.settings.input_dir / "small.png")
    assert validate(img2img(env, "small.png"), env.node_types, env).ok  # imports done
    start = time.perf_counter()
    result = validate(img2img(env, "huge.png"), env.node_types, env)
    took = time.perf_counter() - start
    assert [(i.type, i.node_id, i.input_name) for i in result.issues] == [
        ("value_not_in_list", "10", "image")
    ]
    assert "8000x8000 px, larger than the configured limit 2048x2048" in result.issues[0].message
    assert took < 1.0  # the header only: decoding it takes seconds
    assert refused(env, img2img(env, "huge.png"))[0][:3] == ("value_not_in_list", "10", "image")


def test_the_image_limit_follows_the_settings(make_env):
    env = make_env(max_width=64, max_height=64)
    write_gradient_png(env.settings.input_dir / "wide.png", width=65, height=32)
    (issue,) = validate(img2img(env, "wide.png"), env.node_types, env).issues
    assert "65x32 px, larger than the configured limit 64x64" in issue.message
    # A file that is not an image at all is refused from its header too.
    (env.settings.input_dir / "fake.png").write_bytes(b"not a png at all")
    (issue,) = validate(img2img(env, "fake.png"), env.node_types, env).issues
    assert "not a readable image" in issue.message


def test_a_missing_required_input_is_required_input_missing_not_the_default(env):
    # Today: the width was filled with its default and the workflow ran at 512.
    workflow = txt2img_workflow(env)
    del workflow["5"]["inputs"]["width"]
    assert refused(env, workflow) == [("required_input_missing", "5", "width", None)]


def test_the_prompt_length_limit_is_the_runners(make_env):
    env = make_env(max_prompt_chars=100)
    assert validate(txt2img_workflow(env, prompt="a" * 100), env.node_types, env).ok
    issues = refused(env, txt2img_workflow(env, prompt="a" * 101))
    assert [i[:3] for i in issues] == [("value_bigger_than_max", "6", "text")]
    (issue,) = validate(txt2img_workflow(env, prompt="a" * 101), env.node_types, env).issues
    assert "101 characters long, more than the 100 allowed" in issue.message
    assert "max_prompt_chars" in issue.message


def test_the_prompt_limit_is_a_setting(monkeypatch):
    from runner.settings import EngineSettings

    assert EngineSettings().max_prompt_chars == 8000
    monkeypatch.setenv("EASEL_MAX_PROMPT_CHARS", "300")
    assert EngineSettings().max_prompt_chars == 300


def test_a_large_upload_is_fitted_inside_the_limit_so_it_still_loads(env):
    # A phone photo larger than max_width x max_height, sent as an init image, is scaled
    # down once when stored (keeping its aspect), so LoadImage's limit does not refuse it.
    import io

    from bot.services.uploads import store_input_image

    buf = io.BytesIO()
    Image.new("RGB", (4032, 3024), (200, 120, 40)).save(buf, format="JPEG")
    name = store_input_image(env.settings, buf.getvalue())
    with Image.open(env.settings.input_dir / name) as stored:
        assert stored.size == (2048, 1536)
    assert validate(img2img(env, name), env.node_types, env).ok
