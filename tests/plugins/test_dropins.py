"""The drop-in folder (``DATA_DIR/plugins``, like ComfyUI's ``custom_nodes``): modules and
packages dropped by hand, loaded at start and by reload, state kept across restarts, a
package's requirements.txt installed when the configuration allows."""

from __future__ import annotations

from plugin_testlib import OWNER, make_project, run_job, write_dropin

from db import plugins as db_plugins


def node_plugin(node_name: str) -> str:
    return f"""
        from runner import Input, hookimpl, node, types as T

        @node("{node_name}", inputs=[Input("image", T.IMAGE)], outputs=(T.IMAGE,))
        def passthrough(ctx, image):
            return (image,)

        @hookimpl
        def easel_node_types():
            return [passthrough]
    """


def test_dropins_load_at_start_and_at_reload(plugin_settings, database, make_runtime):
    write_dropin(plugin_settings, "first_nodes", node_plugin("FirstNode"))
    ignored = write_dropin(plugin_settings, "ignored_nodes", node_plugin("Ignored"))
    ignored.rename(ignored.with_name("ignored_nodes.py.disabled"))  # ComfyUI's way to park one
    (plugin_settings.plugins_root / "_private.py").write_text(
        "raise SystemExit('never imported')\n"
    )
    runtime = make_runtime()
    env, service = runtime.env, runtime.service
    assert env.node_types["FirstNode"].plugin == "first-nodes"
    assert "Ignored" not in env.node_types

    # A package with a relative import, dropped while the process runs, and an edit.
    package = write_dropin(
        plugin_settings,
        "second_pack",
        """
        from runner import hookimpl
        from .nodes import NODES

        @hookimpl
        def easel_node_types():
            return NODES
        """,
        package=True,
    )
    (package.parent / "nodes.py").write_text(
        "from runner import Input, node, types as T\n\n"
        "@node('SecondNode', inputs=[Input('image', T.IMAGE)], outputs=(T.IMAGE,))\n"
        "def second(ctx, image):\n    return (image,)\n\nNODES = [second]\n"
    )
    write_dropin(plugin_settings, "first_nodes", node_plugin("FirstNodeRenamed"))
    statuses = {s.name: s for s in service.reload(OWNER)}
    assert statuses["second-pack"].status == "enabled"
    assert statuses["second-pack"].node_types == ("SecondNode",)
    assert "FirstNodeRenamed" in env.node_types and "FirstNode" not in env.node_types

    # Disabled stays disabled across a restart; removed is gone from the folder.
    service.disable(OWNER, "first-nodes")
    assert (
        database.read_sync(db_plugins.get_plugin, "first-nodes").source == "dropin:first_nodes.py"
    )
    service.remove(OWNER, "second-pack")
    assert not package.parent.exists()
    restarted = make_runtime()
    assert restarted.service.info(OWNER, "first-nodes").status == "disabled"
    assert "FirstNodeRenamed" not in restarted.env.node_types
    assert "SecondNode" not in restarted.env.node_types
    run_job(restarted.env)


def test_dropin_requirements_installed_when_allowed(
    plugin_settings, database, make_runtime, tmp_path, offline_builds
):
    helper = make_project(
        tmp_path, "easel-test-helper", "easel_test_helper", "FACTOR = 0.25\n", entry_point=False
    )
    package = write_dropin(
        plugin_settings,
        "needy",
        """
        import easel_test_helper
        from runner import hookimpl

        @hookimpl
        def easel_startup(env):
            assert easel_test_helper.FACTOR == 0.25
        """,
        package=True,
    )
    (package.parent / "requirements.txt").write_text(f"{helper}\n")

    # Not allowed by default: the drop-in cannot import what it needs, and says so.
    runtime = make_runtime()
    status = runtime.service.info(OWNER, "needy")
    assert status.status == "failed" and "No module named 'easel_test_helper'" in status.error
    runtime.close()

    allowed = make_runtime(plugin_dropin_requirements=True)
    allowed.service.enable(OWNER, "needy")  # failed plugins stay off until enabled
    assert allowed.service.info(OWNER, "needy").status == "enabled"
    assert list(allowed.service.prefix.rglob("easel_test_helper-0.1.0.dist-info"))
    entry = next(e for e in allowed.service.audit(OWNER) if e.action == "plugin.requirements")
    assert entry.details["ok"] is True and entry.target == "needy"
