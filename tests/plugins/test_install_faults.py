"""Installs that go wrong, with real pip (offline, from local projects): a dependency conflict
with easel's own pins says which package wants what, a package that does not exist, a "no"
at the confirmation, a plugin shipping packages named like easel's: each is refused with
one clear sentence and written to the audit log. Plus what ``info`` shows and what a workflow
using a disabled plugin's node says."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
from plugin_testlib import OWNER, make_project, write_dropin

from runner.errors import WorkflowInvalid

pytestmark = pytest.mark.slow

NODE_PLUGIN = """
    from runner import Input, hookimpl, node, types as T

    @node("Mirror", inputs=[Input("image", T.IMAGE)], outputs=(T.IMAGE,))
    def mirror(ctx, image):
        return (image,)

    @hookimpl
    def easel_node_types():
        return [mirror]

    @hookimpl
    def easel_check_prompt(prompt, negative, user_id, nsfw_allowed):
        return None
"""


def service_for(settings, database):
    from bot.services.plugins import PluginService

    return PluginService(settings, database)


def last_install(service) -> dict:
    entries = [e for e in service.audit(OWNER, limit=50) if e.action == "plugin.install"]
    assert entries, [e.action for e in service.audit(OWNER, limit=50)]
    return entries[0].details


def test_a_dependency_conflict_names_the_package_and_is_audited(
    plugin_settings, database, tmp_path, offline_builds
):
    pinned = importlib.metadata.version("pluggy")
    project = make_project(
        tmp_path / "src",
        "easel-plugin-conflicted",
        "conflicted",
        "",
        dependencies=("pluggy==1.0.0",),
    )
    service = service_for(plugin_settings, database)
    wanted = f"easel-plugin-conflicted 0.1.0 wants pluggy 1.0.0, easel needs pluggy {pinned}"
    from bot.services.plugins import PipFailed

    with pytest.raises(PipFailed) as failed:
        service.plan_install(OWNER, str(project))
    assert wanted in str(failed.value), str(failed.value)
    details = last_install(service)
    assert details["ok"] is False and wanted in details["pip"], details

    with pytest.raises(PipFailed) as failed:  # the install itself, without a plan first
        service.install(OWNER, str(project))
    assert wanted in str(failed.value)
    assert wanted in last_install(service)["pip"]


def test_a_package_that_does_not_exist_is_audited(plugin_settings, database):
    from bot.services.plugins import PipFailed

    service = service_for(plugin_settings, database)
    with pytest.raises(PipFailed, match="No matching distribution found for easel-plugin-nowhere"):
        service.plan_install(OWNER, "easel-plugin-nowhere==1.0")
    details = last_install(service)
    assert details["ok"] is False and "easel-plugin-nowhere" in details["pip"], details


def test_a_plugin_that_ships_easels_package_names_is_refused(
    plugin_settings, database, tmp_path, offline_builds
):
    from bot.services.plugins import ShadowsEasel
    from runner.plugin_host import plugin_site_dirs

    project = make_project(tmp_path / "src", "easel-plugin-shadow", "shadow", NODE_PLUGIN)
    (project / "db").mkdir()
    (project / "db" / "__init__.py").write_text("STOLEN = True\n")
    toml = project / "pyproject.toml"
    toml.write_text(
        toml.read_text().replace('packages = ["shadow"]', 'packages = ["shadow", "db"]')
    )
    service = service_for(plugin_settings, database)
    with pytest.raises(
        ShadowsEasel, match="ships top-level packages named like easel's own \\('db'\\)"
    ):
        service.install(OWNER, str(project))
    for site in plugin_site_dirs(plugin_settings.plugin_packages_root):
        assert not (site / "db").exists() and not (site / "shadow").exists()
        assert not list(site.glob("easel_plugin_shadow*"))
    details = last_install(service)
    assert details["ok"] is False and details["packages"] == {"easel-plugin-shadow": ["db"]}
    import db

    assert not hasattr(db, "STOLEN")


def test_no_at_the_confirmation_is_audited(easel, database, example, offline_builds):
    declined = easel("plugins", "install", str(example), input="n\n")
    assert declined.exit_code == 0 and "nothing installed" in declined.output
    audit = json.loads(easel("plugins", "audit", "--json").output)
    assert [(a["action"], a["target"]) for a in audit] == [("plugin.declined", str(example))]


def test_info_shows_node_types_templates_and_hooks(easel, plugin_settings, database):
    write_dropin(plugin_settings, "mirror", NODE_PLUGIN)
    info = easel("plugins", "info", "mirror")
    assert info.exit_code == 0, info.output
    assert "node_types: Mirror" in info.output, info.output
    assert "hooks: easel_check_prompt, easel_node_types" in info.output, info.output
    example = easel("plugins", "info", "plugins.templates")
    assert "templates: " in example.output and "txt2img" in example.output, example.output


def test_a_workflow_using_a_disabled_plugins_node_says_which_to_enable(
    plugin_settings, database, make_runtime
):
    from plugin_testlib import tiny_workflow

    write_dropin(plugin_settings, "mirror", NODE_PLUGIN)
    runtime = make_runtime()
    env = runtime.env
    workflow = tiny_workflow(env)
    workflow["40"] = {"class_type": "Mirror", "inputs": {"image": ["8", 0]}}
    workflow["9"]["inputs"]["images"] = ["40", 0]
    assert env.run(workflow).images

    runtime.service.disable(OWNER, "mirror")
    with pytest.raises(WorkflowInvalid) as invalid:
        env.run(workflow)
    text = str(invalid.value)
    assert (
        "unknown node type 'Mirror'; it comes from the plugin 'mirror', which is disabled" in text
    )
    assert "/plugin enable mirror" in text
    runtime.service.reload(OWNER)  # still known after a reload (it stays disabled)
    with pytest.raises(WorkflowInvalid, match="plugin 'mirror', which is disabled"):
        env.run(workflow)
    runtime.service.enable(OWNER, "mirror")
    assert env.run(workflow).images
    with pytest.raises(WorkflowInvalid, match="`easel nodes` lists"):
        env.run({**workflow, "40": {"class_type": "Nowhere", "inputs": {"image": ["8", 0]}}})


def test_a_disabled_plugins_node_still_names_it_after_a_restart(
    plugin_settings, database, make_runtime
):
    from plugin_testlib import tiny_workflow

    write_dropin(plugin_settings, "mirror", NODE_PLUGIN)
    first = make_runtime()
    workflow = tiny_workflow(first.env)
    workflow["40"] = {"class_type": "Mirror", "inputs": {"image": ["8", 0]}}
    workflow["9"]["inputs"]["images"] = ["40", 0]
    assert first.env.run(workflow).images
    first.service.disable(OWNER, "mirror")
    first.close()

    restarted = make_runtime()  # a new "bot process": mirror stays disabled, never imported
    assert "Mirror" not in restarted.env.node_types
    with pytest.raises(WorkflowInvalid, match="plugin 'mirror', which is disabled"):
        restarted.env.run(workflow)
