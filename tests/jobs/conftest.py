"""Fixtures for the job tests: one shared environment per module, small txt2img jobs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def jobs_env(tmp_path_factory, cache_folder):
    """An Environment on the tiny model shared by a module's tests."""
    from runner.environment import Environment
    from runner.settings import EngineSettings

    env = Environment(
        EngineSettings(data_dir=tmp_path_factory.mktemp("jobs-data"), cache_folder=cache_folder)
    )
    yield env
    env.close()


def txt2img(env, prompt: str, seed: int, **overrides) -> dict:
    """A small txt2img workflow (64 px, 3 steps unless overridden)."""
    from runner.templates import GenerationRequest

    options = {"steps": 3, "width": 64, "height": 64, "cfg": 5.0, **overrides}
    return env.build_workflow(GenerationRequest(prompt=prompt, seed=seed, **options))


@pytest.fixture
def make_workflow(jobs_env):
    """``make_workflow(prompt, seed, **request_options)`` -> a workflow for ``jobs_env``."""

    def factory(prompt: str, seed: int, **overrides) -> dict:
        return txt2img(jobs_env, prompt, seed, **overrides)

    return factory
