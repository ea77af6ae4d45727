"""Broken plugins are switched off, recorded and reported, and the process keeps serving:
one that raises at import, one with a misspelt hook, one that raises in a node, one whose
hook hangs, and a few more ways to fail."""

from __future__ import annotations

import time

import pytest
from plugin_testlib import OWNER, audit_actions, make_project, run_job, tiny_workflow, write_dropin

from db import plugins as db_plugins
from runner.errors import NodeExecutionError, WorkflowInvalid

NODE_PLUGIN = """
    from runner import Input, ModelError, hookimpl, node, types as T

    @node("Explode", inputs=[Input("image", T.IMAGE)], outputs=(T.IMAGE,))
    def explode(ctx, image):
        return (image, 1 // 0)[1:]

    @node("Decline", inputs=[Input("image", T.IMAGE)], outputs=(T.IMAGE,))
    def decline(ctx, image):
        raise ModelError("this node refuses on purpose")

    @hookimpl
    def easel_node_types():
        return [explode, decline]
"""


def after_decode(env, class_type):
    """txt2img with ``class_type`` between VAEDecode and SaveImage."""
    workflow = tiny_workflow(env)
    workflow["40"] = {"class_type": class_type, "inputs": {"image": ["8", 0]}}
    workflow["9"]["inputs"]["images"] = ["40", 0]
    return workflow


def assert_reported(service, database, events, name, fragment):
    """Switched off in this process, in the database and the audit log, and reported."""
    status = service.info(OWNER, name)
    assert status.status == "failed"
    assert fragment in status.error
    row = database.read_sync(db_plugins.get_plugin, name)
    assert row is not None and not row.enabled and fragment in row.error
    assert [(e.name, e.action) for e in events] == [(name, "failed")]
    assert fragment in events[0].reason
    assert "plugin.failed" in audit_actions(service)


def test_plugin_that_raises_at_import(
    runtime, database, plugin_events, tmp_path, offline_builds, make_runtime
):
    project = make_project(
        tmp_path,
        "easel-test-broken",
        "easel_test_broken",
        "raise RuntimeError('broken on purpose')\n",
    )
    result = runtime.service.install(OWNER, str(project))
    assert result.plugin.status == "failed"
    assert "could not be imported: RuntimeError: broken on purpose" in result.plugin.error
    assert_reported(
        runtime.service, database, plugin_events, "easel-test-broken", "broken on purpose"
    )
    run_job(runtime.env)

    # After a restart it stays off, with its reason, until an owner enables it.
    again = make_runtime()
    status = again.service.info(OWNER, "easel-test-broken")
    assert status.status == "failed" and "broken on purpose" in status.error
    assert again.service.enable(OWNER, "easel-test-broken").status == "failed"


def test_plugin_with_a_misspelt_hook(plugin_settings, database, make_runtime):
    write_dropin(
        plugin_settings,
        "misspelt",
        """
        from runner import hookimpl

        @hookimpl
        def easel_node_type():  # easel_node_types
            return []
        """,
    )
    runtime = make_runtime()
    events = []
    runtime.service.add_listener(events.append)
    # Failed at start, before anyone listened: the first listener (the bot's owners) hears it.
    assert [(e.name, e.action) for e in events] == [("misspelt", "failed")]
    events.clear()
    status = runtime.service.info(OWNER, "misspelt")
    assert status.status == "failed"
    assert "failed validation: unknown hook 'easel_node_type'" in status.error
    assert not hasattr(runtime.env.pm.hook, "easel_node_type") or not (
        runtime.env.pm.hook.easel_node_type.get_hookimpls()
    )
    runtime.env.pm.check_pending()  # what is left registered is valid
    run_job(runtime.env)
    # Reported when it is found again by a reload.
    runtime.service.enable(OWNER, "misspelt")
    assert_reported(runtime.service, database, events, "misspelt", "unknown hook 'easel_node_type'")


def test_plugin_that_raises_in_a_node(plugin_settings, database, make_runtime):
    write_dropin(plugin_settings, "exploding", NODE_PLUGIN)
    runtime = make_runtime()
    env, events = runtime.env, []
    runtime.service.add_listener(events.append)
    assert env.node_types["Explode"].plugin == "exploding"

    # A deliberate, readable failure (an EaselError) fails the job and nothing else.
    with pytest.raises(NodeExecutionError, match="refuses on purpose"):
        env.run(after_decode(env, "Decline"))
    assert runtime.service.info(OWNER, "exploding").status == "enabled"

    with pytest.raises(NodeExecutionError, match="ZeroDivisionError"):
        env.run(after_decode(env, "Explode"))
    assert "Explode" not in env.node_types and "Decline" not in env.node_types
    assert_reported(
        runtime.service, database, events, "exploding", "node Explode raised ZeroDivisionError"
    )
    with pytest.raises(WorkflowInvalid, match="Explode"):
        env.run(after_decode(env, "Explode"))
    run_job(env)


def test_plugin_whose_hook_hangs(plugin_settings, database, make_runtime):
    write_dropin(
        plugin_settings,
        "sleepy",
        """
        import time
        from runner import hookimpl

        @hookimpl
        def easel_startup(env):
            time.sleep(600)
        """,
    )
    started = time.perf_counter()
    runtime = make_runtime(plugin_hook_timeout_s=0.5)
    assert time.perf_counter() - started < 10
    status = runtime.service.info(OWNER, "sleepy")
    assert status.status == "failed"
    assert "easel_startup did not return within 0.5 s" in status.error
    assert runtime.service.host.abandoned_calls == 1
    run_job(runtime.env)
    row = database.read_sync(db_plugins.get_plugin, "sleepy")
    assert not row.enabled and "did not return" in row.error


def test_plugin_whose_job_hook_hangs_while_jobs_run(plugin_settings, database, make_runtime):
    from runner.jobs.spec import DONE, make_job
    from runner.jobs.worker import LocalWorker

    write_dropin(
        plugin_settings,
        "stuck",
        """
        import time
        from runner import hookimpl

        @hookimpl
        def easel_job_started(job_id, user_id, workflow):
            time.sleep(600)
        """,
    )
    runtime = make_runtime(plugin_hook_timeout_s=0.5)
    events = []
    runtime.service.add_listener(events.append)
    worker = LocalWorker(runtime.env)
    first = worker.run([make_job("j1", tiny_workflow(runtime.env), user_id=1)], lambda e: None, {})
    assert first[0].status == DONE, first[0].error
    assert_reported(runtime.service, database, events, "stuck", "easel_job_started did not return")
    started = time.perf_counter()
    second = worker.run([make_job("j2", tiny_workflow(runtime.env, seed=9))], lambda e: None, {})
    assert second[0].status == DONE
    assert time.perf_counter() - started < 30  # no more waiting on the stuck plugin


def test_plugin_that_raises_in_a_hook_or_clashes(plugin_settings, database, make_runtime):
    write_dropin(
        plugin_settings,
        "grumpy",
        """
        from runner import hookimpl

        @hookimpl
        def easel_node_types():
            raise KeyError("no nodes today")
        """,
    )
    write_dropin(
        plugin_settings,
        "usurper",
        """
        from runner import Input, hookimpl, node, types as T

        @node("KSampler", inputs=[Input("seed", T.INT)], outputs=(T.LATENT,))
        def fake(ctx, seed):
            return (None,)

        @hookimpl
        def easel_node_types():
            return [fake]
        """,
    )
    write_dropin(
        plugin_settings,
        "liar",
        """
        from runner import hookimpl

        @hookimpl
        def easel_workflow_templates():
            return "txt2img"
        """,
    )
    runtime = make_runtime()
    service = runtime.service
    assert "raised in easel_node_types: KeyError" in service.info(OWNER, "grumpy").error
    assert (
        "'KSampler' is already provided by plugins.core.sampling"
        in service.info(OWNER, "usurper").error
    )
    assert "not a list of WorkflowTemplate" in service.info(OWNER, "liar").error
    assert runtime.env.node_types["KSampler"].plugin == "plugins.core.sampling"
    assert {s.name for s in service.list_plugins(OWNER) if s.status == "failed"} == {
        "grumpy",
        "usurper",
        "liar",
    }
    run_job(runtime.env)
