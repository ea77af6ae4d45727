"""Property-based tests: randomly mangled workflows only ever produce validation issues.

Starting from valid workflows (txt2img plus most other node types), hypothesis deletes nodes
and inputs, replaces values with random JSON of any type, corrupts and rewires links, adds
unknown and known nodes, and renames ids. ``validate`` must return issues and never raise;
``Environment.run`` must raise only WorkflowInvalid for an invalid workflow, and a mangled
workflow that happens to be valid must run or fail with NodeExecutionError, nothing else.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from runner_testlib import txt2img_workflow, write_gradient_png

from runner.errors import NodeExecutionError, WorkflowError, WorkflowInvalid
from runner.executor import execution_order
from runner.validation import ERROR_TYPES, validate
from runner.workflow import load_workflow

pytestmark = pytest.mark.slow

FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "euler",
            "karras",
            "tiny-random",
            "init.png",
            "../init.png",
            "enable",
            "center",
            "4",
            "-1",
            "1e9",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
)
ids = st.one_of(
    st.sampled_from([str(i) for i in range(1, 16)] + ["20", "21", "30", "99"]), st.text(max_size=4)
)


def rich_workflow(env):
    """txt2img with a second pass through most node types, all valid."""
    workflow = txt2img_workflow(env, steps=2)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": "init.png"}}
    workflow["11"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["10", 0],
            "upscale_method": "lanczos",
            "width": 64,
            "height": 64,
            "crop": "center",
        },
    }
    workflow["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
    workflow["13"] = {
        "class_type": "CLIPSetLastLayer",
        "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2},
    }
    workflow["14"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "a second pass", "clip": ["13", 0]},
    }
    workflow["15"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["12", 0],
            "upscale_method": "nearest-exact",
            "width": 72,
            "height": 64,
            "crop": "disabled",
        },
    }
    workflow["16"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "model": ["4", 0],
            "add_noise": "enable",
            "noise_seed": 3,
            "steps": 2,
            "cfg": 4.0,
            "sampler_name": "dpmpp_2m",
            "scheduler": "karras",
            "positive": ["14", 0],
            "negative": ["7", 0],
            "latent_image": ["15", 0],
            "start_at_step": 0,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
    }
    workflow["17"] = {"class_type": "VAEDecode", "inputs": {"samples": ["16", 0], "vae": ["4", 2]}}
    workflow["18"] = {
        "class_type": "CLIPImageTextRank",
        "inputs": {"images": ["17", 0], "text": "a fox", "clip_name": "tiny-random", "top_k": 1},
    }
    workflow["19"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["18", 0], "filename_prefix": "second"},
    }
    return workflow


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory, cache_folder):
    """Tight limits, so that mangled workflows that stay valid are cheap to run."""
    from runner.environment import Environment
    from runner.settings import EngineSettings

    settings_ = EngineSettings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        cache_folder=cache_folder,
        max_width=128,
        max_height=128,
        max_steps=3,
        max_batch=2,
        node_cache_size=16,
    )
    env = Environment(settings_)
    write_gradient_png(env.settings.input_dir / "init.png")
    yield env
    env.close()


@pytest.fixture(scope="module")
def bases(fuzz_env):
    base = rich_workflow(fuzz_env)
    assert validate(base, fuzz_env.node_types, fuzz_env).ok
    plain = txt2img_workflow(fuzz_env, steps=2)
    return [base, plain]


def _entries(workflow):
    return [
        k for k, v in workflow.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)
    ]


@st.composite
def mangled(draw, bases, node_types):
    workflow = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(
            st.sampled_from(
                [
                    "delete_node",
                    "delete_input",
                    "replace_value",
                    "corrupt_link",
                    "rewire",
                    "add_unknown",
                    "add_known",
                    "replace_node",
                    "replace_class",
                    "replace_inputs",
                    "rename",
                    "self_link",
                    "int_key",
                ]
            )
        )
        keys = list(workflow)
        nodes = _entries(workflow)
        if op == "delete_node" and keys:
            del workflow[draw(st.sampled_from(keys))]
        elif (
            op in ("delete_input", "replace_value", "corrupt_link", "rewire", "self_link") and nodes
        ):
            node_id = draw(st.sampled_from(nodes))
            inputs = workflow[node_id]["inputs"]
            name = (
                draw(st.sampled_from(sorted(inputs)))
                if inputs and draw(st.booleans())
                else draw(st.text(max_size=8))
            )
            if op == "delete_input":
                inputs.pop(name, None)
            elif op == "replace_value":
                inputs[name] = draw(json_values)
            elif op == "corrupt_link":
                inputs[name] = draw(
                    st.one_of(
                        st.tuples(ids, st.integers(-3, 5)).map(list),
                        st.lists(json_values, max_size=3),
                        st.tuples(st.integers(-5, 50), st.integers(0, 3)).map(list),
                    )
                )
            elif op == "rewire" and keys:
                inputs[name] = [draw(st.sampled_from(keys)), draw(st.integers(0, 3))]
            elif op == "self_link":
                inputs[name] = [node_id, draw(st.integers(0, 2))]
        elif op == "add_unknown":
            workflow[draw(ids)] = {
                "class_type": draw(st.text(max_size=10)),
                "inputs": draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
            }
        elif op == "add_known":
            class_type = draw(st.sampled_from(sorted(node_types)))
            inputs = {}
            for spec in node_types[class_type].inputs:
                if draw(st.booleans()):
                    inputs[spec.name] = draw(
                        st.one_of(
                            json_values,
                            st.tuples(st.sampled_from(keys or ["1"]), st.integers(0, 2)).map(list),
                        )
                    )
            workflow[draw(ids)] = {"class_type": class_type, "inputs": inputs}
        elif op == "replace_node" and keys:
            workflow[draw(st.sampled_from(keys))] = draw(json_values)
        elif op == "replace_class" and nodes:
            workflow[draw(st.sampled_from(nodes))]["class_type"] = draw(
                st.one_of(st.sampled_from(sorted(node_types)), json_values)
            )
        elif op == "replace_inputs" and nodes:
            workflow[draw(st.sampled_from(nodes))]["inputs"] = draw(json_values)
        elif op == "rename" and keys:
            old = draw(st.sampled_from(keys))
            workflow[draw(ids)] = workflow.pop(old)
        elif op == "int_key" and nodes:
            entry = workflow.pop(draw(st.sampled_from(nodes)))
            workflow[draw(st.integers(0, 30))] = entry
    return workflow


def check_issues(result):
    for issue in result.issues:
        assert issue.type in ERROR_TYPES
        assert str(issue)
        json.dumps(issue.to_dict())
    if result.ok:
        order = execution_order(result)
        assert set(result.outputs) <= set(order)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_validate_never_raises_on_mangled_workflows(fuzz_env, bases, data):
    workflow = data.draw(mangled(bases, fuzz_env.node_types))
    check_issues(validate(workflow, fuzz_env.node_types, fuzz_env))


@settings(FUZZ, max_examples=100)
@given(workflow=json_values)
def test_validate_never_raises_on_arbitrary_json(fuzz_env, workflow):
    check_issues(validate(workflow, fuzz_env.node_types, fuzz_env))


@settings(FUZZ, max_examples=100)
@given(nodes=st.dictionaries(ids, json_values, max_size=5))
def test_validate_never_raises_on_objects_of_arbitrary_nodes(fuzz_env, nodes):
    check_issues(validate(nodes, fuzz_env.node_types, fuzz_env))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_run_raises_only_workflow_invalid_for_mangled_workflows(fuzz_env, bases, data):
    workflow = data.draw(mangled(bases, fuzz_env.node_types))
    if validate(workflow, fuzz_env.node_types, fuzz_env).ok:
        event("still valid")
        return  # the next test runs those
    events = []
    with pytest.raises(WorkflowInvalid) as caught:
        fuzz_env.run(workflow, on_event=events.append)
    assert caught.value.issues
    assert [e.type for e in events] == ["failed"]


@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_mangled_workflows_that_stay_valid_run_or_fail_cleanly(fuzz_env, bases, data):
    """Values inside the declared ranges (within tight limits) run, or fail with a readable
    NodeExecutionError; the environment keeps working."""
    base = data.draw(st.sampled_from(bases))
    workflow = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 4))):
        node_id = data.draw(st.sampled_from(sorted(workflow)))
        node_type = fuzz_env.node_types[workflow[node_id]["class_type"]]
        spec = data.draw(
            st.sampled_from(
                [
                    s
                    for s in node_type.inputs
                    if s.type in ("INT", "FLOAT", "COMBO", "STRING", "BOOLEAN")
                ]
                or list(node_type.inputs)
            )
        )
        if spec.type in ("INT", "FLOAT"):
            low = spec.min if spec.min is not None else -1000
            high = (
                spec.effective_max(fuzz_env) if spec.effective_max(fuzz_env) is not None else 1000
            )
            strategy = (
                st.integers(int(low), int(high)) if spec.type == "INT" else st.floats(low, high)
            )
            workflow[node_id]["inputs"][spec.name] = data.draw(strategy)
        elif spec.type == "COMBO":
            choices = spec.allowed(fuzz_env)
            if choices:
                workflow[node_id]["inputs"][spec.name] = data.draw(st.sampled_from(choices))
        elif spec.type == "STRING" and spec.name != "filename_prefix":
            workflow[node_id]["inputs"][spec.name] = data.draw(st.text(max_size=30))
    if not validate(workflow, fuzz_env.node_types, fuzz_env).ok:
        event("mangled out of validity")
        return
    try:
        fuzz_env.run(workflow)
        event("ran")
    except NodeExecutionError as exc:
        event(f"failed in {exc.class_type}")
        assert exc.node_id in workflow and exc.message
    fuzz_env.run(base)  # the environment still works


@settings(FUZZ, max_examples=150)
@given(text=st.one_of(st.text(max_size=60), json_values.map(json.dumps)))
def test_load_workflow_raises_only_workflow_error(text):
    try:
        workflow = load_workflow(text if text.lstrip().startswith("{") else "{" + text)
    except WorkflowError:
        return
    assert isinstance(workflow, dict)
