"""ComfyUI's UI format (what its Save writes) converts to the API graph its Export (API)
gives: reroutes, primitive nodes, muted and bypassed nodes, groups, notes, converted
widgets and ``control_after_generate`` values. The fixtures in tests/fixtures/ui/ are
written the way ComfyUI saves them, each with the API graph written by hand beside it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner import types as T
from runner.errors import WorkflowError
from runner.nodes import Input, NodeType
from runner.ui_format import map_widget_values, ui_to_api
from runner.validation import validate
from runner.workflow import apply_overrides, load_workflow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
UI = FIXTURES / "ui"

CASES = {
    "default": (UI / "default_ui.json", FIXTURES / "comfyui_default_api.json"),
    "features": (UI / "features_ui.json", UI / "features_api.json"),
}


def _node_cases():
    for case, (_, api_path) in CASES.items():
        for node_id in json.loads(api_path.read_text()):
            yield case, node_id


@pytest.fixture(scope="module")
def node_types(module_env):
    return module_env.node_types


def _ui(case: str) -> dict:
    return json.loads(CASES[case][0].read_text())


def _api(case: str) -> dict:
    return json.loads(CASES[case][1].read_text())


@pytest.mark.parametrize(("case", "node_id"), list(_node_cases()))
def test_each_node_converts_as_comfyui_exports_it(node_types, case, node_id):
    converted = ui_to_api(_ui(case), node_types)
    assert converted[node_id] == _api(case)[node_id]


@pytest.mark.parametrize("case", sorted(CASES))
def test_nothing_else_is_in_the_converted_graph(node_types, case):
    converted = load_workflow(CASES[case][0], node_types)
    assert sorted(converted) == sorted(_api(case))


def test_muted_bypassed_and_virtual_nodes_are_left_out(node_types):
    converted = ui_to_api(_ui("features"), node_types)
    ui = {str(n["id"]): n for n in _ui("features")["nodes"]}
    left_out = sorted(set(ui) - set(converted), key=int)
    assert [(n, ui[n]["type"], ui[n]["mode"]) for n in left_out] == [
        ("10", "LoraLoader", 4),
        ("11", "Reroute", 0),
        ("12", "PrimitiveNode", 0),
        ("13", "PrimitiveNode", 0),
        ("14", "SaveImage", 2),
        ("15", "Note", 0),
        ("18", "LatentUpscaleBy", 4),
    ]


def test_the_converted_features_graph_runs(module_env):
    workflow = load_workflow(UI / "features_ui.json", module_env.node_types)
    result = module_env.run(workflow)
    (path,) = result.images
    assert Path(path).name.startswith("fox_")


def test_the_default_graph_validates_once_the_checkpoint_exists(module_env):
    workflow = apply_overrides(
        load_workflow(UI / "default_ui.json", module_env.node_types),
        ["4.ckpt_name=tiny-random"],
    )
    result = validate(workflow, module_env.node_types, module_env)
    assert result.ok, [str(i) for i in result.issues]
    assert result.nodes["3"].literals["seed"] == 8566257


# Widget values ---------------------------------------------------------------------------


def _node_type(*inputs: Input) -> NodeType:
    return NodeType("Probe", tuple(inputs), (T.LATENT,), lambda ctx, **kw: (None,))


def test_control_value_follows_a_seed_widget():
    probe = _node_type(Input("seed", T.INT), Input("steps", T.INT), Input("mode", T.COMBO))
    assert map_widget_values(probe, [7, "increment", 3, "a"]) == {
        "seed": 7,
        "steps": 3,
        "mode": "a",
    }
    # saved before control widgets existed: nothing to skip
    assert map_widget_values(probe, [7, 3, "a"]) == {"seed": 7, "steps": 3, "mode": "a"}


def test_a_control_value_on_another_widget_is_skipped_when_the_list_has_room_for_it():
    probe = _node_type(Input("count", T.INT), Input("mode", T.COMBO, choices=("fixed", "other")))
    assert map_widget_values(probe, [3, "randomize", "other"]) == {"count": 3, "mode": "other"}
    # no room: "fixed" is the combo's own value
    assert map_widget_values(probe, [3, "fixed"]) == {"count": 3, "mode": "fixed"}


def test_optional_widgets_come_after_required_ones_and_extra_values_are_ignored():
    probe = _node_type(
        Input("extra", T.FLOAT, required=False), Input("text", T.STRING), Input("on", T.BOOLEAN)
    )
    assert map_widget_values(probe, ["hi", False, 0.5, "image"]) == {
        "text": "hi",
        "on": False,
        "extra": 0.5,
    }


def test_dict_widget_values_map_by_name():
    probe = _node_type(Input("seed", T.INT), Input("text", T.STRING))
    assert map_widget_values(probe, {"text": "t", "seed": 1, "junk": 2}) == {"seed": 1, "text": "t"}


# Graph shapes ------------------------------------------------------------------------------


def _linked(node_types, **changes):
    """The features fixture with some nodes changed: ``changes[node_id] = {key: value}``."""
    data = _ui("features")
    for node in data["nodes"]:
        node.update(changes.get(str(node["id"]), {}))
    return ui_to_api(data, node_types)


def test_a_muted_source_removes_the_consumers_input(node_types):
    converted = _linked(node_types, **{"5": {"mode": 2}})
    assert "5" not in converted and "latent_image" not in converted["3"]["inputs"]


def test_a_bypassed_node_without_a_matching_input_feeds_nothing(node_types):
    converted = _linked(node_types, **{"8": {"mode": 4}})  # VAEDecode: IMAGE from LATENT/VAE
    assert "8" not in converted and "images" not in converted["9"]["inputs"]


def test_an_unmuted_node_comes_back(node_types):
    converted = _linked(node_types, **{"14": {"mode": 0}})
    assert converted["14"] == {
        "inputs": {"filename_prefix": "muted", "images": ["8", 0]},
        "class_type": "SaveImage",
    }


def test_a_bypassed_lora_turned_on_is_linked_in(node_types):
    converted = _linked(node_types, **{"10": {"mode": 0}})
    assert converted["10"]["inputs"] == {
        "lora_name": "fox-style.safetensors",
        "strength_model": 0.8,
        "strength_clip": 1,
        "model": ["4", 0],
        "clip": ["4", 1],
    }
    assert converted["3"]["inputs"]["model"] == ["10", 0]
    assert converted["6"]["inputs"]["clip"] == ["10", 1]


def test_version_1_graphs_with_link_objects(node_types):
    data = _ui("default")
    data["links"] = [
        dict(
            zip(
                ["id", "origin_id", "origin_slot", "target_id", "target_slot", "type"],
                link,
                strict=True,
            )
        )
        for link in data["links"]
    ]
    data["version"] = 1
    assert ui_to_api(data, node_types) == _api("default")


def test_list_widget_values_are_wrapped_so_they_are_not_links(node_types):
    data = _ui("default")
    data["nodes"][0]["widgets_values"] = [["a", "b"]]
    assert ui_to_api(data, node_types)["7"]["inputs"]["text"] == {"__value__": ["a", "b"]}


def test_unknown_node_types_are_named_with_id_title_and_position(node_types):
    data = _ui("default")
    data["nodes"].append(
        {"id": 21, "type": "UltimateSDUpscale", "title": "Big", "pos": [100, 250.5], "mode": 0}
    )
    data["nodes"].append({"id": 22, "type": "FaceDetailer", "pos": [5, 6], "mode": 0})
    data["nodes"].append({"id": 23, "type": "MutedUnknown", "pos": [5, 6], "mode": 2})
    with pytest.raises(WorkflowError) as caught:
        ui_to_api(data, node_types)
    message = str(caught.value)
    assert "node 21 'Big' (UltimateSDUpscale) at (100, 250.5)" in message
    assert "node 22 (FaceDetailer) at (5, 6)" in message
    assert "MutedUnknown" not in message  # muted nodes never reach the backend


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["links"].append([99, 4, 0]), "a link must be"),
        (lambda d: d["nodes"][0]["inputs"][0].update(link=77), "link 77"),
        (lambda d: d["nodes"].append(copy.deepcopy(d["nodes"][0])), "given twice"),
        (lambda d: d["nodes"].append({"type": "X"}), "without an id"),
        (lambda d: d.update(nodes=[]), "UI format has no nodes"),
        (lambda d: d.update(definitions={"subgraphs": [{"id": "x"}]}), "subgraphs"),
    ],
)
def test_broken_ui_graphs_are_workflow_errors(node_types, change, needle):
    data = _ui("default")
    change(data)
    with pytest.raises(WorkflowError, match=needle):
        ui_to_api(data, node_types)


def test_reroutes_in_a_circle_are_an_error(node_types):
    data = _ui("default")
    data["nodes"] += [
        {"id": 30, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 31}]},
        {"id": 31, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 30}]},
    ]
    data["links"] += [[30, 31, 0, 30, 0, "*"], [31, 30, 0, 31, 0, "*"]]
    data["nodes"][0]["inputs"][0]["link"] = 30  # node 7's clip from the loop
    with pytest.raises(WorkflowError, match="circle"):
        ui_to_api(data, node_types)


def test_load_workflow_needs_node_types_for_the_ui_format():
    with pytest.raises(WorkflowError, match="node_types"):
        load_workflow(UI / "default_ui.json")


@pytest.mark.slow
def test_easel_run_takes_a_ui_format_file(tmp_path, cache_folder, monkeypatch):
    from bot.cli import cli

    monkeypatch.setenv("EASEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    result = CliRunner().invoke(
        cli, ["run", str(UI / "features_ui.json"), "--set", "3.steps=2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "fox_00001_.png" in result.output


def test_easel_run_names_the_missing_node_type(tmp_path, cache_folder, monkeypatch):
    from bot.cli import cli

    data = _ui("default")
    data["nodes"].append({"id": 40, "type": "NoSuchNode", "pos": [1, 2], "mode": 0})
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("EASEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    assert "node 40 (NoSuchNode) at (1, 2)" in result.output
