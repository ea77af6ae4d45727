"""Round trips: API -> UI (easel's layout) -> API gives the original graph back; the
``workflow`` chunk SaveImage writes passes ComfyUI's workflow schema (version 0.4); and
easel's PNG run again with ``easel run image.png`` gives the same pixels."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runner_testlib import png_pixels, txt2img_workflow

from runner.errors import WorkflowError
from runner.images import png_text_chunks, read_png_text
from runner.ui_format import ui_to_api
from runner.ui_layout import api_to_ui
from runner.workflow import load_workflow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


# ComfyUI's workflow schema, version 0.4 --------------------------------------------------
# Written down from ComfyUI_frontend's zod schema (src/platform/workflow/validation/
# schemas/workflowSchema.ts, zComfyWorkflow): the required keys and their types. Keys the
# schema marks optional are checked only when present; unknown keys pass (.passthrough()).


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _node_id(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _vector2(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_number, value))


def _data_type(value) -> bool:
    return (
        isinstance(value, str)
        or _number(value)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    )


def schema_problems(graph) -> list[str]:
    """Every way ``graph`` breaks zComfyWorkflow (an empty list: it passes)."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    need(isinstance(graph, dict), "the workflow is an object")
    if not isinstance(graph, dict):
        return problems
    need(_node_id(graph.get("last_node_id")), "last_node_id: number or string")
    need(_number(graph.get("last_link_id")), "last_link_id: number")
    need(_number(graph.get("version")), "version: number")
    need(isinstance(graph.get("nodes"), list), "nodes: array")
    need(isinstance(graph.get("links"), list), "links: array")
    for key in ("groups",):
        need(key not in graph or isinstance(graph[key], list), f"{key}: array")
    for key in ("config", "extra"):
        need(graph.get(key) is None or isinstance(graph[key], dict), f"{key}: object or null")
    if isinstance(graph.get("extra"), dict) and "ds" in graph["extra"]:
        ds = graph["extra"]["ds"]
        need(_number(ds.get("scale")) and _vector2(ds.get("offset")), "extra.ds: scale, offset")
    for node in graph.get("nodes") or []:
        where = f"node {node.get('id')!r}"
        need(_node_id(node.get("id")), f"{where}: id")
        need(isinstance(node.get("type"), str), f"{where}: type")
        need(_vector2(node.get("pos")), f"{where}: pos [x, y]")
        need(_vector2(node.get("size")), f"{where}: size [w, h]")
        need(isinstance(node.get("flags"), dict), f"{where}: flags object")
        need(_number(node.get("order")), f"{where}: order number")
        need(_number(node.get("mode")), f"{where}: mode number")
        need(isinstance(node.get("properties"), dict), f"{where}: properties object")
        for slot in node.get("inputs") or []:
            need(isinstance(slot.get("name"), str), f"{where}: input name")
            need(_data_type(slot.get("type")), f"{where}: input type")
            need(slot.get("link") is None or _number(slot["link"]), f"{where}: input link")
        for slot in node.get("outputs") or []:
            need(isinstance(slot.get("name"), str), f"{where}: output name")
            need(_data_type(slot.get("type")), f"{where}: output type")
            links = slot.get("links")
            need(links is None or all(map(_number, links)), f"{where}: output links")
        values = node.get("widgets_values")
        need(values is None or isinstance(values, (list, dict)), f"{where}: widgets_values")
    for link in graph.get("links") or []:
        need(
            isinstance(link, list)
            and len(link) == 6
            and _number(link[0])
            and _node_id(link[1])
            and isinstance(link[2], int)
            and _node_id(link[3])
            and isinstance(link[4], int)
            and _data_type(link[5]),
            f"link {link!r}: [id, from_node, from_slot, to_node, to_slot, type]",
        )
    for group in graph.get("groups") or []:
        need(isinstance(group.get("title"), str), "group title")
        bounding = group.get("bounding")
        need(
            isinstance(bounding, list) and len(bounding) == 4 and all(map(_number, bounding)),
            "group bounding",
        )
    return problems


def consistency_problems(graph) -> list[str]:
    """What the frontend needs beyond the schema: each link appears on both its ends."""
    problems = []
    nodes = {n["id"]: n for n in graph["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, _ in graph["links"]:
        if link_id not in nodes[src]["outputs"][src_slot]["links"]:
            problems.append(f"link {link_id} missing from node {src} output {src_slot}")
        if nodes[dst]["inputs"][dst_slot]["link"] != link_id:
            problems.append(f"link {link_id} missing from node {dst} input {dst_slot}")
    if graph["links"]:
        assert graph["last_link_id"] == max(link[0] for link in graph["links"])
    return problems


def test_the_schema_check_accepts_comfyuis_own_files_and_catches_breakage():
    for name in ("default_ui.json", "features_ui.json"):
        assert schema_problems(json.loads((FIXTURES / "ui" / name).read_text())) == []
    broken = json.loads((FIXTURES / "ui" / "default_ui.json").read_text())
    del broken["nodes"][0]["pos"]
    broken["links"][0] = [1, 4, 0]
    assert len(schema_problems(broken)) == 2


# API -> UI -> API ------------------------------------------------------------------------


def _workflows(env) -> dict[str, dict]:
    from runner.templates import GenerationRequest

    with_lora = txt2img_workflow(env, steps=2)
    with_lora["20"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "x",
            "strength_model": 0.7,
            "strength_clip": 1.0,
        },
        "_meta": {"title": "Style LoRA"},
    }
    with_lora["3"]["inputs"]["model"] = ["20", 0]
    img2img = env.build_workflow(
        GenerationRequest(prompt="p", seed=1, init_image="in.png", strength=0.5, steps=2)
    )
    return {
        "txt2img": txt2img_workflow(env, steps=2),
        "lora": with_lora,
        "img2img": img2img,
        "comfyui_default": json.loads((FIXTURES / "comfyui_default_api.json").read_text()),
        "features": json.loads((FIXTURES / "ui" / "features_api.json").read_text()),
    }


@pytest.mark.parametrize("name", ["txt2img", "lora", "img2img", "comfyui_default", "features"])
def test_api_to_ui_to_api_is_the_original(module_env, name):
    workflow = _workflows(module_env)[name]
    ui = api_to_ui(workflow, module_env.node_types)
    assert schema_problems(ui) == []
    assert consistency_problems(ui) == []
    assert ui_to_api(json.loads(json.dumps(ui)), module_env.node_types) == workflow


def test_the_layout_puts_every_node_right_of_what_feeds_it_and_nothing_overlaps(module_env):
    ui = api_to_ui(_workflows(module_env)["img2img"], module_env.node_types)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for _, src, _, dst, _, _ in ui["links"]:
        assert nodes[src]["pos"][0] + nodes[src]["size"][0] < nodes[dst]["pos"][0]
    boxes = [
        (*n["pos"], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes.values()
    ]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    loaders = [n for n in nodes.values() if n["type"] in ("CheckpointLoaderSimple", "LoadImage")]
    assert {n["pos"][0] for n in loaders} == {min(n["pos"][0] for n in nodes.values())}


def test_the_seed_widget_carries_a_fixed_control_value(module_env):
    ui = api_to_ui(txt2img_workflow(module_env, seed=9, steps=2), module_env.node_types)
    (sampler,) = [n for n in ui["nodes"] if n["type"] == "KSampler"]
    assert sampler["widgets_values"][:2] == [9, "fixed"]


# The PNG's chunks --------------------------------------------------------------------------


def test_saved_pngs_carry_a_workflow_chunk_that_reads_back_to_the_prompt(env):
    workflow = txt2img_workflow(env, steps=2)
    (path,) = env.run(workflow).images
    text = read_png_text(Path(path))
    ui = json.loads(text["workflow"])
    assert schema_problems(ui) == [] and consistency_problems(ui) == []
    assert ui["version"] == 0.4 and {"last_node_id", "last_link_id"} <= set(ui)
    assert ui_to_api(ui, env.node_types) == json.loads(text["prompt"]) == workflow


def _cli(args, data_dir, cache_folder, monkeypatch):
    from bot.cli import cli

    monkeypatch.setenv("EASEL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.endswith(".png")]


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["both", "workflow only"])
def test_easel_run_image_png_gives_the_same_pixels(env, tmp_path, cache_folder, monkeypatch, keep):
    from PIL import Image, PngImagePlugin

    (original,) = env.run(txt2img_workflow(env, seed=31, steps=2)).images
    source = Path(original)
    if keep == "workflow only":  # as a UI-only PNG: the layout alone must reproduce it
        text = read_png_text(source)
        info = PngImagePlugin.PngInfo()
        info.add_text("workflow", text["workflow"])
        source = tmp_path / "ui_only.png"
        with Image.open(original) as im:
            im.save(source, pnginfo=info)
        assert "prompt" not in read_png_text(source)
    (again,) = _cli(["run", str(source)], tmp_path / "other", cache_folder, monkeypatch)
    assert Path(again).resolve() != Path(original).resolve()
    assert np.array_equal(png_pixels(again), png_pixels(original))


def test_load_workflow_prefers_the_prompt_chunk(env, tmp_path):
    from PIL import Image, PngImagePlugin

    prompt = txt2img_workflow(env, steps=2)
    other = txt2img_workflow(env, steps=3)
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", json.dumps(api_to_ui(other, env.node_types)))
    info.add_itxt("prompt", json.dumps(prompt), zip=True)  # compressed, UTF-8
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert load_workflow(path, env.node_types) == prompt


@pytest.mark.parametrize(
    ("text", "needle"),
    [({"parameters": "a cat\nSteps: 20"}, "only A1111"), ({}, "carries no workflow")],
)
def test_pngs_without_a_workflow_are_refused_clearly(tmp_path, text, needle):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(WorkflowError, match=needle):
        load_workflow(path)


def test_text_chunks_are_read_without_decoding_pixels():
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("plain", "a")
    info.add_text("squeezed", "b" * 100, zip=True)
    info.add_itxt("uni", "crème ✓", zip=False)
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG", pnginfo=info)
    data = buf.getvalue()
    assert png_text_chunks(data) == {"plain": "a", "squeezed": "b" * 100, "uni": "crème ✓"}
    with pytest.raises(ValueError, match="cut short"):
        png_text_chunks(data[:44])  # inside the first text chunk
    with pytest.raises(ValueError, match="not a PNG"):
        png_text_chunks(b"GIF89a")


def test_a_zip_bomb_text_chunk_is_refused(monkeypatch):
    import runner.images

    monkeypatch.setattr(runner.images, "MAX_TEXT_CHUNK", 1000)
    body = b"prompt\0\0" + zlib.compress(b"x" * 5000)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body + b"\0\0\0\0"
    with pytest.raises(ValueError, match="expands to more than"):
        png_text_chunks(runner.images.PNG_SIGNATURE + chunk)
