"""Fixtures for the runner's tests. Everything runs on CPU with the built-in ``tiny-random``
model at 64x64 and 2-4 steps; helpers live in ``runner_testlib``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def module_env(tmp_path_factory, cache_folder):
    """One Environment shared by a module's tests (its node cache carries over between them)."""
    from runner.environment import Environment
    from runner.settings import EngineSettings

    env = Environment(
        EngineSettings(data_dir=tmp_path_factory.mktemp("data"), cache_folder=cache_folder)
    )
    yield env
    env.close()
