"""Fixtures for the plugin tests: a real environment on the tiny model, a real SQLite
database, real pip in a subprocess (offline: ``--no-index --no-build-isolation``, building
with the virtualenv's setuptools), plugins written to disk by the tests."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from plugin_testlib import EXAMPLE, OWNER, PIP_OFFLINE


@pytest.fixture(scope="session")
def offline_builds() -> None:
    """``--no-build-isolation`` builds with this virtualenv's setuptools, which then needs
    ``bdist_wheel`` (setuptools 70.1 or newer, or the ``wheel`` package)."""
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("setuptools")) >= Version("70.1") or importlib.util.find_spec("wheel"):
        return
    pytest.fail(
        "building plugins offline needs setuptools>=70.1 (or wheel) in the virtualenv: "
        "add it to the test extra in pyproject.toml"
    )


@pytest.fixture
def example(tmp_path):
    """A copy of the example plugin's project: pip builds a local folder in place
    (``build/``, ``*.egg-info``), which must not land in the repository or race."""
    import shutil

    target = tmp_path / "src" / EXAMPLE.name
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    return target


@pytest.fixture
def plugin_settings(tmp_path, cache_folder):
    """The bot's settings with a fresh data folder, one owner and offline pip."""
    from bot.settings import Settings

    return Settings(
        data_dir=tmp_path / "data",
        cache_folder=cache_folder,
        owner_ids=[OWNER],
        plugin_allow_urls=True,
        plugin_pip_args=PIP_OFFLINE,
        plugin_pip_timeout_s=120,
    )


@pytest.fixture
def database(plugin_settings):
    """A migrated SQLite database in the data folder."""
    from db.engine import Database

    db = Database(plugin_settings.database_url_in_force)
    db.upgrade()
    yield db
    db.close()


@pytest.fixture
def make_runtime(plugin_settings, database):
    """A factory of "bot processes": an environment with its plugins under a host, state
    restored from the database (``make_runtime(**settings_overrides)``). Closed after the
    test, and sys.path / sys.modules left as they were."""
    from bot.services.plugins import environment_with_plugins

    made = []
    path_before = list(sys.path)

    def factory(**overrides):
        settings = plugin_settings.model_copy(update=overrides) if overrides else plugin_settings
        runtime = environment_with_plugins(settings, database)
        made.append(runtime)
        return runtime

    yield factory
    for runtime in reversed(made):
        runtime.close()
    sys.path[:] = path_before
    for name in [m for m in sys.modules if m.startswith(("easel_dropins.", "easel_test_"))]:
        sys.modules.pop(name, None)


@pytest.fixture
def runtime(make_runtime):
    """One running "bot process"."""
    return make_runtime()


@pytest.fixture
def plugin_events(runtime):
    """Every event the service reports to its listeners (plugins the host switched off)."""
    events = []
    runtime.service.add_listener(events.append)
    return events


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread for these tests: the tiny model gains nothing from more, and on a
    busy two-core machine spinning OpenMP threads make every run many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def easel(plugin_settings, monkeypatch):
    """Run ``easel ARGS`` against the test's data folder; returns the click result."""
    monkeypatch.setenv("EASEL_DATA_DIR", str(plugin_settings.data_dir))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(plugin_settings.cache_folder))
    monkeypatch.setenv("EASEL_PLUGIN_ALLOW_URLS", "true")
    from plugin_testlib import PIP_OFFLINE

    monkeypatch.setenv("EASEL_PLUGIN_PIP_ARGS", " ".join(PIP_OFFLINE))

    def run(*args, input=None):
        from click.testing import CliRunner

        from bot.cli import cli

        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return run
