"""Shared fixtures: offline settings, one tiny model cache per test session, environments."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# One torch thread per process: steadier timings when test processes share the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests must not read a developer's own configuration file.
os.environ["EASEL_CONFIG"] = os.devnull

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cache_folder(tmp_path_factory) -> Path:
    """One cache folder per session, so the tiny model and tokenizer are built once."""
    return tmp_path_factory.mktemp("easel-cache")


@pytest.fixture
def settings(tmp_path, cache_folder):
    """Engine settings with a fresh data folder and the shared cache."""
    from runner.settings import EngineSettings

    return EngineSettings(data_dir=tmp_path / "data", cache_folder=cache_folder)


@pytest.fixture
def make_env(tmp_path, cache_folder):
    """A factory of Environments: ``make_env(**settings_overrides)``; closed after the test."""
    from runner.environment import Environment
    from runner.settings import EngineSettings

    made = []

    def factory(**overrides):
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("cache_folder", cache_folder)
        env = Environment(EngineSettings(**overrides))
        made.append(env)
        return env

    yield factory
    for env in made:
        env.close()


@pytest.fixture
def env(make_env):
    """A fresh Environment (empty node cache) on the tiny model."""
    return make_env()
