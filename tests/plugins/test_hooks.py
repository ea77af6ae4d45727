"""One test per hook in ``runner/hookspecs.py`` (named ``test_hook_<name>``, as datasette
does), each through a drop-in plugin loaded by the plugin host and called by the code that
calls it in easel: the environment, the job worker, the user-data service, the bot's
generation service."""

from __future__ import annotations

import types

import pytest
from plugin_testlib import OWNER, run_job, tiny_workflow, write_dropin

RECORDER = """
    from runner import Input, WorkflowTemplate, hookimpl, node, types as T

    CALLS = []

    @node("Halve", inputs=[Input("image", T.IMAGE)], outputs=(T.IMAGE,), category="test")
    def halve(ctx, image):
        '''Halves the brightness.'''
        return (image * 0.5,)

    def build_halved(request, default_model):
        from plugins.templates import build_txt2img

        workflow = build_txt2img(request, default_model)
        workflow["50"] = {"class_type": "Halve", "inputs": {"image": ["8", 0]}}
        workflow["9"]["inputs"]["images"] = ["50", 0]
        return workflow

    @hookimpl
    def easel_node_types():
        CALLS.append(("node_types",))
        return [halve]

    @hookimpl
    def easel_workflow_templates():
        CALLS.append(("templates",))
        return [WorkflowTemplate("halved", "txt2img, half as bright", build_halved)]

    @hookimpl
    def easel_startup(env):
        CALLS.append(("startup", env))

    @hookimpl
    def easel_shutdown(env):
        CALLS.append(("shutdown", env))

    @hookimpl
    def easel_job_started(job_id, user_id, workflow):
        CALLS.append(("job_started", job_id, user_id, sorted(workflow)))

    @hookimpl
    def easel_job_finished(job_id, user_id, status, images, error):
        CALLS.append(("job_finished", job_id, user_id, status, list(images), error))

    @hookimpl
    def easel_forget_user(user_id, data_dir):
        CALLS.append(("forget_user", user_id, data_dir))
"""


@pytest.fixture
def recorder(plugin_settings, make_runtime):
    """A running process with the recording drop-in loaded; returns (runtime, CALLS)."""
    import sys

    write_dropin(plugin_settings, "recorder", RECORDER)
    runtime = make_runtime()
    assert runtime.service.info(OWNER, "recorder").status == "enabled"
    return runtime, sys.modules["easel_dropins.recorder"].CALLS


def kinds(calls):
    return [c[0] for c in calls]


def test_hook_easel_node_types(recorder):
    runtime, calls = recorder
    env = runtime.env
    assert env.node_types["Halve"].plugin == "recorder"
    assert env.node_types["Halve"].description == "Halves the brightness."
    workflow = tiny_workflow(env)
    workflow["50"] = {"class_type": "Halve", "inputs": {"image": ["8", 0]}}
    workflow["9"]["inputs"]["images"] = ["50", 0]
    result = env.run(workflow)
    assert (result.values["50"][0] - result.values["8"][0] * 0.5).abs().max() < 1e-6
    assert "node_types" in kinds(calls)


def test_hook_easel_workflow_templates(recorder):
    runtime, _ = recorder
    env = runtime.env
    assert env.templates["halved"].plugin == "recorder"
    workflow = tiny_workflow(env, template="halved")
    assert workflow["50"]["class_type"] == "Halve"
    assert env.run(workflow).images


def test_hook_easel_startup(recorder, plugin_settings):
    runtime, calls = recorder
    assert [c for c in calls if c[0] == "startup"] == [("startup", runtime.env)]
    # A plugin loaded later, at run time, gets its own startup call; a raise switches it off.
    write_dropin(
        plugin_settings,
        "picky",
        """
        from runner import hookimpl

        @hookimpl
        def easel_startup(env):
            raise RuntimeError("missing configuration")
        """,
    )
    runtime.service.reload(OWNER)
    status = runtime.service.info(OWNER, "picky")
    assert status.status == "failed"
    assert "raised in easel_startup: RuntimeError: missing configuration" in status.error


def test_hook_easel_shutdown(recorder):
    runtime, calls = recorder
    runtime.service.disable(OWNER, "recorder")
    assert [c for c in calls if c[0] == "shutdown"] == [("shutdown", runtime.env)]
    runtime.service.enable(OWNER, "recorder")
    import sys

    calls = sys.modules["easel_dropins.recorder"].CALLS  # enabled again: fresh module
    runtime.env.close()
    assert kinds(calls).count("shutdown") == 1


def test_hook_easel_job_started(recorder):
    from runner.jobs.spec import make_job
    from runner.jobs.worker import LocalWorker

    runtime, calls = recorder
    workflow = tiny_workflow(runtime.env)
    LocalWorker(runtime.env).run([make_job("job-1", workflow, user_id=55)], lambda e: None, {})
    assert ("job_started", "job-1", 55, sorted(workflow)) in calls


def test_hook_easel_job_finished(recorder):
    from runner.jobs.spec import make_job
    from runner.jobs.worker import LocalWorker

    runtime, calls = recorder
    env = runtime.env
    outcome = LocalWorker(env).run(
        [make_job("job-2", tiny_workflow(env), user_id=56)], lambda e: None, {}
    )[0]
    finished = [c for c in calls if c[0] == "job_finished"]
    assert finished == [
        ("job_finished", "job-2", 56, "done", [i.path for i in outcome.images], None)
    ]
    assert finished[0][4]  # the image paths


def test_hook_easel_forget_user(recorder, database, plugin_settings):
    from bot.services.userdata import forget_user

    runtime, calls = recorder
    report = forget_user(database, plugin_settings, 99, pm=runtime.env.pm)
    assert ("forget_user", 99, plugin_settings.data_dir) in calls
    assert "recorder" in report.plugins_called and not report.plugin_errors
    # A plugin that fails to forget is named to the caller and stays enabled: raising is how
    # this hook reports a failure.
    write_dropin(
        plugin_settings,
        "hoarder",
        """
        from runner import hookimpl

        @hookimpl
        def easel_forget_user(user_id, data_dir):
            raise OSError("cannot delete the archive")
        """,
    )
    runtime.service.reload(OWNER)
    report = forget_user(database, plugin_settings, 99, pm=runtime.env.pm)
    assert "cannot delete the archive" in report.plugin_errors["hoarder"]
    assert runtime.service.info(OWNER, "hoarder").status == "enabled"


CHECKER = """
    from runner import hookimpl

    @hookimpl
    def easel_check_prompt(prompt, negative, user_id, nsfw_allowed):
        if "forbidden" in prompt:
            raise RuntimeError("moderation backend down")
        if "grumpy" in prompt and not nsfw_allowed:
            return "no grumpy prompts here"
        return None

    @hookimpl
    def easel_check_output(image, prompt, user_id, env):
        if "forbidden" in prompt:
            raise RuntimeError("moderation backend down")
        return "too bright" if image.getpixel((0, 0))[0] > 128 else None
"""


def generation_service(runtime, database):
    from bot.services.generation import GenerationService
    from bot.settings import Settings as BotSettings

    settings = BotSettings(data_dir=runtime.env.settings.data_dir, safety="refuse")
    return GenerationService(runtime.env, database, settings, None), settings


def test_hook_easel_check_prompt(plugin_settings, make_runtime, database):
    from bot.services.generation import CHECK_FAILED, Destination
    from bot.services.moderation import Refused
    from runner.plugin_host import PluginHookError

    write_dropin(plugin_settings, "checker", CHECKER)
    runtime = make_runtime()
    service, _ = generation_service(runtime, database)
    service.check_prompt("a calm lake", "", Destination(user_id=1))
    with pytest.raises(Refused, match="no grumpy prompts here"):
        service.check_prompt("a grumpy cat", "", Destination(user_id=1))
    service.check_prompt("a grumpy cat", "", Destination(user_id=1, nsfw_allowed=True))
    told = []
    runtime.service.add_listener(told.append)
    # A checker that breaks fails closed (the request is not queued) and stays enabled; the
    # user reads one neutral sentence, the owners get the plugin's details.
    with pytest.raises(Refused) as refused:
        service.check_prompt("forbidden", "", Destination(user_id=1))
    text = str(refused.value)
    assert text == CHECK_FAILED, text
    for internal in ("checker", "RuntimeError", "backend down", ".py"):
        assert internal not in text
    assert isinstance(refused.value.__cause__, PluginHookError)
    assert [(e.name, e.action) for e in told] == [("checker", "raised")]
    assert "RuntimeError: moderation backend down (at checker.py:" in told[0].reason
    assert "easel_check_prompt" in told[0].reason
    # A checker that raises on every request tells the owners once in a while, not each time.
    with pytest.raises(Refused):
        service.check_prompt("forbidden", "", Destination(user_id=1))
    assert len(told) == 1
    assert runtime.service.info(OWNER, "checker").status == "enabled"


def test_hook_easel_check_output(plugin_settings, make_runtime, database):
    from PIL import Image

    from bot.services.generation import Destination

    write_dropin(plugin_settings, "checker", CHECKER)
    runtime = make_runtime()
    service, settings = generation_service(runtime, database)
    images = settings.data_dir / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8), (250, 250, 250)).save(images / "bright.png")
    Image.new("RGB", (8, 8), (5, 5, 5)).save(images / "dark.png")

    def check(name, prompt):
        image = types.SimpleNamespace(path=f"images/{name}.png")
        submission = types.SimpleNamespace(request=types.SimpleNamespace(prompt=prompt))
        return service._check_output(image, submission, Destination(user_id=1))

    assert check("bright", "a lamp") == "too bright"
    assert check("dark", "a lamp") is None
    told = []
    runtime.service.add_listener(told.append)
    # A checker that breaks withholds the image (fails closed) and stays enabled; the owners
    # get the details.
    assert check("dark", "forbidden") == "the safety check failed"
    assert runtime.service.info(OWNER, "checker").status == "enabled"
    assert [(e.name, e.action) for e in told] == [("checker", "raised")]
    assert "easel_check_output" in told[0].reason and "checker.py:" in told[0].reason
    run_job(runtime.env)
