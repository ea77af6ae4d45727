"""Validation before anything loads: every ComfyUI error type, each naming the node id, the
input and the bad value; several problems reported at once; cycles; configured limits."""

from __future__ import annotations

import copy
import json

import pytest
from runner_testlib import txt2img_workflow

from runner.validation import ERROR_TYPES, validate


@pytest.fixture(scope="module")
def base(module_env):
    return txt2img_workflow(module_env)


def issues_of(env, workflow):
    return validate(workflow, env.node_types, env).issues


def only_issue(env, workflow):
    issues = issues_of(env, workflow)
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


def mutate(workflow, node_id, **inputs):
    out = copy.deepcopy(workflow)
    out[node_id]["inputs"].update(inputs)
    return out


def where(issue):
    return (issue.type, issue.node_id, issue.input_name, issue.value)


def test_the_template_workflow_is_valid(module_env, base):
    result = validate(base, module_env.node_types, module_env)
    assert result.ok and result.outputs == ["9"]
    assert result.nodes["3"].literals["seed"] == 5
    assert result.nodes["3"].links["model"] == ("4", 0)


# One test per error type -----------------------------------------------------------------


def test_invalid_prompt_for_an_unknown_class_type(module_env, base):
    workflow = mutate(base, "4")
    workflow["4"]["class_type"] = "CheckpointLoaderFancy"
    issues = issues_of(module_env, workflow)
    unknown = [i for i in issues if i.node_id == "4"]
    assert [where(i) for i in unknown] == [("invalid_prompt", "4", None, "CheckpointLoaderFancy")]
    assert "CheckpointLoaderFancy" in unknown[0].message
    # ... and its dependants report links to an invalid node, all at once.
    linked = {(i.node_id, i.input_name) for i in issues if i.type == "bad_linked_input"}
    assert {("6", "clip"), ("7", "clip"), ("3", "model"), ("8", "vae")} <= linked


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("not a node", "must be an object"),
        ({"inputs": {}}, "class_type"),
        ({"class_type": "", "inputs": {}}, "class_type"),
        ({"class_type": 7, "inputs": {}}, "class_type"),
        ({"class_type": "SaveImage", "inputs": ["images"]}, "inputs must be an object"),
    ],
)
def test_invalid_prompt_for_malformed_nodes(module_env, base, entry, needle):
    workflow = copy.deepcopy(base)
    workflow["50"] = entry
    issue = only_issue(module_env, workflow)
    assert issue.type == "invalid_prompt" and issue.node_id == "50"
    assert needle in issue.message


@pytest.mark.parametrize("workflow", [[], "text", 3, None])
def test_invalid_prompt_when_the_workflow_is_not_an_object(module_env, workflow):
    issue = only_issue(module_env, workflow)
    assert issue.type == "invalid_prompt"


def test_prompt_no_outputs(module_env, base):
    workflow = copy.deepcopy(base)
    del workflow["9"]
    issues = issues_of(module_env, workflow)
    assert [i.type for i in issues] == ["prompt_no_outputs"]
    assert only_issue(module_env, {}).type == "prompt_no_outputs"


def test_prompt_no_outputs_still_checks_the_other_nodes(module_env, base):
    workflow = mutate(base, "3", steps=0)
    del workflow["9"]
    types = sorted(i.type for i in issues_of(module_env, workflow))
    assert types == ["prompt_no_outputs", "value_smaller_than_min"]


def test_required_input_missing(module_env, base):
    workflow = copy.deepcopy(base)
    del workflow["6"]["inputs"]["text"]
    issue = only_issue(module_env, workflow)
    assert where(issue) == ("required_input_missing", "6", "text", None)
    assert issue.class_type == "CLIPTextEncode"


def test_a_missing_required_input_is_reported_even_when_it_has_a_default(module_env, base):
    # As ComfyUI's validate_inputs: a required input must be given; a workflow without a
    # width must not silently run at the default 512.
    workflow = copy.deepcopy(base)
    del workflow["5"]["inputs"]["width"]
    del workflow["3"]["inputs"]["denoise"]
    issues = issues_of(module_env, workflow)
    assert [where(i) for i in issues] == [
        ("required_input_missing", "3", "denoise", None),
        ("required_input_missing", "5", "width", None),
    ]
    assert "'width' (INT) is missing" in issues[1].message


def test_a_missing_optional_input_takes_its_default(module_env, base):
    from runner import Input, NodeType
    from runner import types as T

    def passthrough(ctx, images, note="hello"):
        return ()

    noted = NodeType(
        "NotedSave",
        (Input("images", T.IMAGE), Input("note", T.STRING, default="hello", required=False)),
        (),
        passthrough,
        output_node=True,
    )
    workflow = copy.deepcopy(base)
    workflow["9"] = {"class_type": "NotedSave", "inputs": {"images": ["8", 0]}}
    result = validate(workflow, {**module_env.node_types, "NotedSave": noted}, module_env)
    assert result.ok and result.nodes["9"].literals["note"] == "hello"


def test_a_node_without_inputs_is_reported_not_crashed_on(module_env, base):
    workflow = copy.deepcopy(base)
    del workflow["9"]["inputs"]
    issues = issues_of(module_env, workflow)
    assert [where(i) for i in issues] == [
        ("required_input_missing", "9", "images", None),
        ("required_input_missing", "9", "filename_prefix", None),
    ]


@pytest.mark.parametrize(
    ("link", "needle"),
    [
        (["99", 0], "not in the workflow"),
        (["4", 7], "has 3 output(s)"),
        (["4", -1], "output -1"),
        (["4"], "[node_id, output_index]"),
        (["4", "0"], "[node_id, output_index]"),
        (["4", 0, 1], "[node_id, output_index]"),
        ([True, 0], "[node_id, output_index]"),
        ([["4"], 0], "[node_id, output_index]"),
    ],
)
def test_bad_linked_input(module_env, base, link, needle):
    issue = only_issue(module_env, mutate(base, "3", model=link))
    assert where(issue) == ("bad_linked_input", "3", "model", link)
    assert needle in issue.message


def test_links_may_name_nodes_by_integer_id(module_env, base):
    workflow = mutate(base, "3", model=[4, 0])
    assert validate(workflow, module_env.node_types, module_env).ok


def test_return_type_mismatch(module_env, base):
    issue = only_issue(module_env, mutate(base, "3", model=["4", 1]))
    assert where(issue) == ("return_type_mismatch", "3", "model", ["4", 1])
    assert "MODEL" in issue.message and "CLIP" in issue.message


@pytest.mark.parametrize(
    ("node_id", "name", "value"),
    [
        ("3", "steps", "many"),
        ("3", "steps", 2.5),
        ("3", "steps", True),
        ("3", "cfg", {"a": 1}),
        ("3", "cfg", "nan"),
        ("3", "cfg", None),
        ("3", "seed", False),
        ("6", "text", {"prompt": "x"}),
        ("9", "filename_prefix", None),
        ("3", "positive", "a fox"),
        ("3", "latent_image", 5),
    ],
)
def test_invalid_input_type(module_env, base, node_id, name, value):
    issue = only_issue(module_env, mutate(base, node_id, **{name: value}))
    assert where(issue) == ("invalid_input_type", node_id, name, value)


def test_literals_convert_like_comfyui(module_env, base):
    workflow = mutate(base, "3", steps="3", cfg="6.5", seed=7.0)
    literals = validate(workflow, module_env.node_types, module_env).nodes["3"].literals
    assert (literals["steps"], literals["cfg"], literals["seed"]) == (3, 6.5, 7)


@pytest.mark.parametrize(
    ("node_id", "name", "value", "limit"),
    [
        ("3", "steps", 0, "1"),
        ("3", "denoise", -0.5, "0"),
        ("3", "seed", -1, "0"),
        ("5", "width", 8, "16"),
    ],
)
def test_value_smaller_than_min(module_env, base, node_id, name, value, limit):
    issue = only_issue(module_env, mutate(base, node_id, **{name: value}))
    assert where(issue) == ("value_smaller_than_min", node_id, name, value)
    assert f"minimum {limit}" in issue.message


@pytest.mark.parametrize(
    ("node_id", "name", "value"),
    [("3", "denoise", 1.5), ("3", "cfg", 100.5), ("3", "seed", 2**64), ("5", "batch_size", 5000)],
)
def test_value_bigger_than_max(module_env, base, node_id, name, value):
    issue = only_issue(module_env, mutate(base, node_id, **{name: value}))
    assert where(issue) == ("value_bigger_than_max", node_id, name, value)


def test_value_not_in_list(module_env, base):
    from runner.diffusion.samplers import SAMPLERS

    issue = only_issue(module_env, mutate(base, "3", sampler_name="euler_magic"))
    assert where(issue) == ("value_not_in_list", "3", "sampler_name", "euler_magic")
    for name in SAMPLERS:
        assert name in issue.message


def test_value_not_in_list_for_a_missing_checkpoint(module_env, base):
    issue = only_issue(module_env, mutate(base, "4", ckpt_name="v1-5-pruned-emaonly.safetensors"))
    assert where(issue) == (
        "value_not_in_list",
        "4",
        "ckpt_name",
        "v1-5-pruned-emaonly.safetensors",
    )
    assert "tiny-random" in issue.message  # lists what is available


def test_custom_validation_failed(module_env, base):
    issue = only_issue(module_env, mutate(base, "3", sampler_name="uni_pc", scheduler="kl_optimal"))
    assert where(issue) == ("custom_validation_failed", "3", "scheduler", "kl_optimal")


def test_dependency_cycle(module_env, base):
    workflow = copy.deepcopy(base)
    up = {"upscale_method": "bilinear", "width": 64, "height": 64, "crop": "disabled"}
    workflow["20"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["21", 0], **up}}
    workflow["21"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["20", 0], **up}}
    workflow["3"]["inputs"]["latent_image"] = ["20", 0]
    issue = only_issue(module_env, workflow)
    assert issue.type == "dependency_cycle" and issue.node_id in ("20", "21")
    assert "20" in issue.message and "21" in issue.message


def test_a_node_linked_to_itself_is_a_cycle(module_env, base):
    workflow = copy.deepcopy(base)
    workflow["20"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["20", 0],
            "upscale_method": "area",
            "width": 64,
            "height": 64,
            "crop": "disabled",
        },
    }
    workflow["3"]["inputs"]["latent_image"] = ["20", 0]
    issue = only_issue(module_env, workflow)
    assert issue.type == "dependency_cycle" and issue.node_id == "20"


def _cycle(workflow):
    up = {"upscale_method": "bilinear", "width": 64, "height": 64, "crop": "disabled"}
    workflow["20"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["20", 0], **up}}
    workflow["3"]["inputs"]["latent_image"] = ["20", 0]


EXAMPLES = {
    "invalid_prompt": lambda w: w["4"].update(class_type="Nope"),
    "prompt_no_outputs": lambda w: w.pop("9"),
    "required_input_missing": lambda w: w["6"]["inputs"].pop("text"),
    "bad_linked_input": lambda w: w["3"]["inputs"].update(model=["99", 0]),
    "return_type_mismatch": lambda w: w["3"]["inputs"].update(model=["4", 2]),
    "invalid_input_type": lambda w: w["3"]["inputs"].update(steps="many"),
    "value_smaller_than_min": lambda w: w["3"]["inputs"].update(steps=0),
    "value_bigger_than_max": lambda w: w["3"]["inputs"].update(denoise=2),
    "value_not_in_list": lambda w: w["3"]["inputs"].update(scheduler="nope"),
    "custom_validation_failed": lambda w: w["3"]["inputs"].update(
        sampler_name="uni_pc", scheduler="linear_quadratic"
    ),
    "dependency_cycle": _cycle,
}


def test_every_error_type_has_an_example():
    assert set(EXAMPLES) == set(ERROR_TYPES)


@pytest.mark.parametrize("error_type", ERROR_TYPES)
def test_each_error_type_is_reported(module_env, base, error_type):
    workflow = copy.deepcopy(base)
    EXAMPLES[error_type](workflow)
    assert error_type in {i.type for i in issues_of(module_env, workflow)}


# Many problems at once, before anything loads ---------------------------------------------


def test_several_problems_are_reported_at_once(module_env, base):
    workflow = mutate(base, "3", steps=0, sampler_name="nope", model=["4", 2])
    workflow["5"]["inputs"]["width"] = "wide"
    del workflow["6"]["inputs"]["text"]
    issues = issues_of(module_env, workflow)
    assert sorted(where(i) for i in issues) == sorted(
        [
            ("value_smaller_than_min", "3", "steps", 0),
            ("value_not_in_list", "3", "sampler_name", "nope"),
            ("return_type_mismatch", "3", "model", ["4", 2]),
            ("invalid_input_type", "5", "width", "wide"),
            ("required_input_missing", "6", "text", None),
        ]
    )


def test_run_raises_workflow_invalid_with_every_issue_before_loading_a_model(env, base):
    from runner.errors import WorkflowInvalid

    workflow = mutate(base, "3", steps=0, cfg="x")
    events = []
    with pytest.raises(WorkflowInvalid) as caught:
        env.run(workflow, on_event=events.append)
    assert {(i.input_name, i.type) for i in caught.value.issues} == {
        ("steps", "value_smaller_than_min"),
        ("cfg", "invalid_input_type"),
    }
    assert "node 3 (KSampler), input 'steps'" in str(caught.value)
    assert env.models.loaded() == []  # validation happens before any weight is loaded
    assert [e.type for e in events] == ["failed"]
    assert not env.settings.output_dir.exists() or not any(env.settings.output_dir.iterdir())


def test_issues_serialise_to_json(module_env, base):
    workflow = mutate(base, "3", steps=0, cfg=float("inf"), model=["4", {"x": 1}])
    for issue in issues_of(module_env, workflow):
        data = json.loads(json.dumps(issue.to_dict()))
        assert data["node_id"] == "3" and data["type"] in ERROR_TYPES


def test_only_nodes_an_output_needs_are_checked(module_env, base):
    workflow = copy.deepcopy(base)
    workflow["50"] = {"class_type": "EmptyLatentImage", "inputs": {"width": -5}}
    assert validate(workflow, module_env.node_types, module_env).ok


# Configured limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "name", "value", "setting"),
    [
        ("5", "width", 256, "max_width"),
        ("5", "height", 192, "max_height"),
        ("3", "steps", 11, "max_steps"),
        ("5", "batch_size", 3, "max_batch"),
    ],
)
def test_configured_limits_are_value_bigger_than_max_naming_the_limit(
    make_env, node_id, name, value, setting
):
    env = make_env(max_width=128, max_height=128, max_steps=10, max_batch=2)
    issue = only_issue(env, mutate(txt2img_workflow(env), node_id, **{name: value}))
    assert where(issue) == ("value_bigger_than_max", node_id, name, value)
    assert setting in issue.message
    assert str(getattr(env.settings, setting)) in issue.message


def test_limits_apply_to_scaling_nodes_too(make_env):
    env = make_env(max_width=128, max_height=128)
    workflow = txt2img_workflow(env)
    workflow["20"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["5", 0],
            "upscale_method": "area",
            "width": 512,
            "height": 64,
            "crop": "disabled",
        },
    }
    workflow["21"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["8", 0],
            "upscale_method": "area",
            "width": 64,
            "height": 4096,
            "crop": "disabled",
        },
    }
    workflow["3"]["inputs"]["latent_image"] = ["20", 0]
    workflow["9"]["inputs"]["images"] = ["21", 0]
    issues = issues_of(env, workflow)
    assert sorted((i.type, i.node_id, i.input_name) for i in issues) == [
        ("value_bigger_than_max", "20", "width"),
        ("value_bigger_than_max", "21", "height"),
    ]
    assert all("max_" in i.message for i in issues)


def test_a_plugin_check_that_raises_is_reported_not_raised(module_env, base):
    from runner import Input, node
    from runner import types as T

    def broken_check(value, env):
        raise RuntimeError("the check itself is broken")

    @node("Checked", inputs=[Input("x", T.STRING, check=broken_check)], outputs=(T.IMAGE,))
    def checked(ctx, x):
        raise AssertionError("never runs")

    node_types = {**module_env.node_types, "Checked": checked}
    workflow = copy.deepcopy(base)
    workflow["50"] = {"class_type": "Checked", "inputs": {"x": "y"}}
    workflow["9"]["inputs"]["images"] = ["50", 0]
    issues = validate(workflow, node_types, module_env).issues
    assert [where(i) for i in issues] == [("value_not_in_list", "50", "x", "y")]
    assert "the check itself is broken" in issues[0].message


@pytest.mark.parametrize("odd_id", ["¹", "٣", "node-a", "", "3.0"])
def test_unusual_node_ids_are_accepted(module_env, base, odd_id):
    """Ids are any strings (ComfyUI's are digits); '¹' is a digit to str.isdigit but not to int."""
    workflow = copy.deepcopy(base)
    workflow[odd_id] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["8", 0], "filename_prefix": "x"},
    }
    result = validate(workflow, module_env.node_types, module_env)
    assert result.ok and odd_id in result.outputs


def test_integer_node_ids_match_string_links(module_env, base):
    workflow = {int(k): v for k, v in copy.deepcopy(base).items()}
    assert validate(workflow, module_env.node_types, module_env).ok
    workflow["4"] = workflow[4]
    (issue,) = issues_of(module_env, workflow)
    assert issue.type == "invalid_prompt" and "twice" in issue.message
