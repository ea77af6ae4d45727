"""The example plugin through its whole life in one running process: shown, installed with
real pip from its local path, used in a workflow and from a command, disabled, enabled
and removed, without a restart."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from click.testing import CliRunner
from PIL import Image
from plugin_testlib import EXAMPLE, OWNER, PIP_OFFLINE, audit_actions, run_job, tiny_workflow
from public_api import private_runner_imports

from db import plugins as db_plugins
from runner.errors import WorkflowInvalid

pytestmark = pytest.mark.slow

NAME = "easel-plugin-example"


def with_vignette(workflow):
    """The workflow with Vignette between VAEDecode (8) and SaveImage (9)."""
    workflow = dict(workflow)
    workflow["30"] = {"class_type": "Vignette", "inputs": {"image": ["8", 0], "strength": 0.8}}
    workflow["9"] = {**workflow["9"], "inputs": {**workflow["9"]["inputs"], "images": ["30", 0]}}
    return workflow


def test_install_use_disable_enable_remove_without_restart(
    runtime, database, plugin_events, offline_builds, example
):
    env, service = runtime.env, runtime.service
    assert "Vignette" not in env.node_types

    plan = service.plan_install(OWNER, str(example))
    assert plan.plugin is not None
    assert (plan.plugin.name, plan.plugin.version) == (NAME, "0.1.0")
    assert [p.name for p in plan.packages] == [NAME]  # nothing else: the bot has the rest
    assert f"{NAME} 0.1.0" in plan.describe()
    assert "Vignette" not in env.node_types  # a dry run installs nothing

    result = service.install(OWNER, str(example))
    assert result.plugin.status == "enabled", result.plugin.error
    assert set(result.plugin.node_types) == {"Vignette", "Posterize"}
    assert result.plugin.templates == ("vignette",)
    assert "Successfully installed" in result.pip_summary
    row = database.read_sync(db_plugins.get_plugin, NAME)
    assert row.enabled and row.version == "0.1.0" and row.error is None
    assert re.fullmatch(r"[0-9a-f]{64}", row.wheel_sha256)
    assert row.source == str(example)
    assert env.node_types["Vignette"].plugin == NAME

    # Its node in a workflow: the corners get darker, the centre stays.
    run = env.run(with_vignette(tiny_workflow(env)))
    before, after = run.values["8"][0], run.values["30"][0]
    assert after.shape == before.shape
    assert (after <= before + 1e-6).all()
    assert after[0, 0, 0].sum() < before[0, 0, 0].sum()
    assert (after[0, 31:33, 31:33] - before[0, 31:33, 31:33]).abs().max() < 0.05
    # Its template, from the request a command builds.
    workflow = tiny_workflow(env, template="vignette")
    assert workflow["30"]["class_type"] == "Vignette"
    assert env.run(workflow).images

    disabled = service.disable(OWNER, NAME)
    assert disabled.status == "disabled"
    assert "Vignette" not in env.node_types and "vignette" not in env.templates
    with pytest.raises(WorkflowInvalid, match="Vignette"):
        env.run(with_vignette(tiny_workflow(env)))
    assert not database.read_sync(db_plugins.get_plugin, NAME).enabled
    run_job(env)

    enabled = service.enable(OWNER, NAME)
    assert enabled.status == "enabled"
    assert env.run(with_vignette(tiny_workflow(env, seed=4))).images

    removed = service.remove(OWNER, NAME)
    assert removed.status == "removed"
    assert "Vignette" not in env.node_types
    assert database.read_sync(db_plugins.get_plugin, NAME) is None
    assert not list(service.prefix.rglob("easel_plugin_example*"))
    assert importlib.util.find_spec("easel_plugin_example") is None
    assert NAME not in [s.name for s in service.list_plugins(OWNER)]
    run_job(env)

    assert audit_actions(service) == [
        "plugin.install",
        "plugin.disable",
        "plugin.enable",
        "plugin.remove",
    ]
    assert plugin_events == []  # nothing failed


def test_template_from_the_generate_command(
    runtime, database, offline_builds, tmp_path, monkeypatch, plugin_settings, example
):
    """``easel generate --template vignette`` in the same process, right after the install,
    with the command's environment built through the plugin service (as the bot's is)."""
    from bot.cli import cli, engine_commands
    from bot.services.plugins import environment_with_plugins

    runtime.service.install(OWNER, str(example))
    for key, value in {
        "EASEL_DATA_DIR": str(plugin_settings.data_dir),
        "EASEL_CACHE_FOLDER": str(plugin_settings.cache_folder),
        "EASEL_PLUGIN_PIP_ARGS": " ".join(PIP_OFFLINE),
    }.items():
        monkeypatch.setenv(key, value)
    made = []

    def make_environment(settings):
        made.append(environment_with_plugins(settings, database))
        return made[-1].env

    monkeypatch.setattr(engine_commands, "make_environment", make_environment)
    out = tmp_path / "vignette.png"
    args = ["generate", "a fox", "--template", "vignette", "--seed", "7", "--steps", "2"]
    result = CliRunner().invoke(cli, [*args, "--width", "64", "--height", "64", "--out", str(out)])
    for runtime_made in made:
        runtime_made.service.close()
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        workflow = json.loads(image.text["prompt"])
    assert workflow["30"]["class_type"] == "Vignette"


def test_plugins_loaded_from_entry_points_before_the_host_are_adopted(
    runtime, database, plugin_settings, offline_builds, example
):
    """An environment built the default way (entry points loaded by pluggy, unguarded, as
    ``easel generate`` does) gets its plugins put behind guards by a host, without
    importing them again; the recorded state then applies."""
    from bot.services.plugins import start_plugins
    from runner.environment import Environment

    runtime.service.install(OWNER, str(example))  # its folder is on sys.path from now on
    runtime.service.disable(OWNER, NAME)
    env = Environment(plugin_settings)  # build_plugin_manager(entry_points=True)
    try:
        assert "Vignette" in env.node_types
        service = start_plugins(env, plugin_settings, database)
        assert "Vignette" not in env.node_types  # recorded as disabled
        assert service.enable(OWNER, NAME).status == "enabled"
        assert env.node_types["Vignette"].plugin == NAME
        stand_ins = [p for _, p in env.pm.list_name_plugin() if NAME in repr(p)]
        assert stand_ins and all(type(p).__name__ == "_GuardedPlugin" for p in stand_ins)
        service.close()
    finally:
        env.close()


def test_the_example_imports_only_what_runner_exports():
    """The example is what plugin authors copy: it keeps to ``runner.__all__``."""
    modules = sorted((EXAMPLE / "src").rglob("*.py"))
    assert modules
    for path in modules:
        source = path.read_text()
        assert "from runner import" in source or path.name != "__init__.py"
        bad = private_runner_imports(source, str(path))
        assert not bad, f"{path.relative_to(EXAMPLE)} imports private names: {bad}"
