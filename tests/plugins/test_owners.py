"""Who may manage plugins and what may be installed: owners only, every refusal audited,
installs switchable off, URLs and paths only when allowed, no pip options, pip's failures
and time-outs summarised, the bot's own packages pinned."""

from __future__ import annotations

import pytest
from plugin_testlib import EXAMPLE, OWNER, STRANGER, audit_actions, make_project

from bot.services import plugins as plugin_service
from bot.services.plugins import (
    InstallsDisabled,
    NotAPlugin,
    NotOwner,
    PipFailed,
    PipTimedOut,
    PluginService,
    SpecRefused,
    classify_spec,
    environment_constraints,
)
from bot.services.plugins import pip as plugin_pip
from db import audit as db_audit


@pytest.fixture
def service(plugin_settings, database):
    """The service as the command line has it: no environment, no plugins loaded."""
    return PluginService(plugin_settings, database)


@pytest.fixture
def no_pip(monkeypatch):
    """Fail the test if pip is started."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(plugin_pip, "run_pip", forbidden)


@pytest.mark.parametrize(
    "action",
    ["plan_install", "install", "enable", "disable", "remove", "info", "list_plugins", "audit"],
)
def test_a_non_owner_is_refused_and_audited(service, database, no_pip, action):
    method = getattr(service, action)
    args = {
        "plan_install": (str(EXAMPLE),),
        "install": (str(EXAMPLE),),
        "list_plugins": (),
        "audit": (),
    }.get(action, ("easel-plugin-example",))
    with pytest.raises(NotOwner, match=f"user {STRANGER} is not an owner"):
        method(STRANGER, *args)
    entries = database.read_sync(db_audit.list_audit, actor_id=STRANGER)
    assert [e.action for e in entries] == ["plugin.denied"]
    assert not service.prefix.exists()


def test_a_non_owners_install_is_refused_in_a_running_process(runtime, database, no_pip):
    with pytest.raises(NotOwner):
        runtime.service.install(STRANGER, str(EXAMPLE))
    assert "Vignette" not in runtime.env.node_types
    denied = database.read_sync(db_audit.list_audit, actor_id=STRANGER)[0]
    assert (denied.target, denied.details) == (str(EXAMPLE), {"action": "install"})
    # A guild administrator is nobody special: only owner_ids count.
    assert not runtime.service.is_owner(STRANGER) and runtime.service.is_owner(OWNER)


def test_installs_can_be_switched_off(plugin_settings, database, no_pip):
    service = PluginService(
        plugin_settings.model_copy(update={"plugin_installs_enabled": False}), database
    )
    with pytest.raises(InstallsDisabled):
        service.install(OWNER, "easel-plugin-example==0.1.0")
    with pytest.raises(InstallsDisabled):
        service.plan_install(OWNER, "easel-plugin-example==0.1.0")
    assert audit_actions(service) == ["plugin.install", "plugin.install"]


def test_urls_and_paths_only_when_allowed(plugin_settings, database, no_pip):
    service = PluginService(
        plugin_settings.model_copy(update={"plugin_allow_urls": False}), database
    )
    for spec in (str(EXAMPLE), "https://example.org/p-1.0-py3-none-any.whl", "p @ git+https://x/p"):
        with pytest.raises(SpecRefused, match="plugin_allow_urls"):
            service.install(OWNER, spec)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("easel-plugin-example==0.1.0", "requirement"),
        ("easel_plugin_example[extra]>=0.1; python_version>'3.10'", "requirement"),
        ("pkg @ https://example.org/pkg.whl", "url"),
        ("git+https://example.org/pkg", "url"),
        ("./some/folder", "path"),
        ("/abs/pkg-1.0-py3-none-any.whl", "path"),
        ("pkg-1.0.tar.gz", "path"),
    ],
)
def test_classify_spec(spec, kind):
    assert classify_spec(spec) == kind


@pytest.mark.parametrize(
    "spec",
    ["", "  ", "--index-url=https://evil.example", "-r requirements.txt", "a\nb", "not a spec!"],
)
def test_pip_options_and_garbage_are_refused(service, no_pip, spec):
    with pytest.raises(SpecRefused):
        service.install(OWNER, spec)


def test_pip_failure_is_summarised_and_audited(service, offline_builds):
    with pytest.raises(PipFailed) as caught:
        service.plan_install(OWNER, "easel-no-such-plugin==9.9")
    assert "No matching distribution found for easel-no-such-plugin==9.9" in caught.value.summary
    with pytest.raises(PipFailed) as caught:
        service.install(OWNER, "easel-no-such-plugin==9.9")
    assert "No matching distribution" in caught.value.summary
    assert len(caught.value.summary) <= plugin_service.MAX_SUMMARY_CHARS
    entry = service.audit(OWNER)[0]
    assert entry.action == "plugin.install" and entry.details["ok"] is False


def test_pip_is_stopped_after_its_time_limit(plugin_settings, database, example):
    service = PluginService(
        plugin_settings.model_copy(update={"plugin_pip_timeout_s": 0.05}), database
    )
    with pytest.raises(PipTimedOut, match="within 0.05 s"):
        service.install(OWNER, str(example))
    assert service.audit(OWNER)[0].details["ok"] is False


def test_a_distribution_without_entry_points_is_removed_again(service, tmp_path, offline_builds):
    project = make_project(
        tmp_path, "easel-test-plain", "easel_test_plain", "X = 1\n", entry_point=False
    )
    with pytest.raises(NotAPlugin, match="easel-test-plain"):
        service.install(OWNER, str(project))
    assert not list(service.prefix.rglob("easel_test_plain*"))


def test_pip_may_not_change_the_bots_own_packages(service, monkeypatch, tmp_path):
    """Every package of the bot's environment is pinned in a constraints file passed to pip."""
    constraints = environment_constraints(service.site_dirs)
    assert "pluggy==" in constraints and "sqlalchemy==" in constraints and "easel==" in constraints
    seen = {}

    def fake_pip(args, *, timeout_s, spec, cwd=None):
        seen["args"] = args
        seen["constraints"] = (cwd / "constraints.txt").read_text()
        return plugin_service.PipRun(args, 1, "", "ERROR: stop here", 0.0)

    monkeypatch.setattr(plugin_pip, "run_pip", fake_pip)
    with pytest.raises(PipFailed):
        service.install(OWNER, "easel-plugin-example==0.1.0")
    args = seen["args"]
    assert args[args.index("--prefix") + 1] == str(service.prefix)
    assert "-c" in args and args[-2:] == ["--", "easel-plugin-example==0.1.0"]
    assert seen["constraints"] == constraints
