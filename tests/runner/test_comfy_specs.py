"""Every node spec written down from ComfyUI's source (tests/runner/comfy_specs/) matches
what ``easel nodes --json`` declares: input names, types, defaults, ranges and choices."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil

import pytest
from click.testing import CliRunner

from bot.cli import cli
from tests.runner import comfy_specs


def _tables() -> dict[str, dict]:
    tables: dict[str, dict] = {}
    for info in pkgutil.iter_modules(comfy_specs.__path__):
        module = importlib.import_module(f"{comfy_specs.__name__}.{info.name}")
        for name, spec in module.SPECS.items():
            assert name not in tables, f"{name} is written down twice (again in {info.name})"
            tables[name] = spec
    return tables


TABLES = _tables()


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> dict[str, dict]:
    """What ``easel nodes --json`` says of every node type, on a fresh data folder."""
    env = {
        "EASEL_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "EASEL_CONFIG": os.devnull,
    }
    result = CliRunner().invoke(cli, ["nodes", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return {n["class_type"]: n for n in json.loads(result.output)}


@pytest.mark.parametrize("node_type", sorted(TABLES))
def test_node_matches_comfyui(node_type: str, declared: dict[str, dict]) -> None:
    assert node_type in declared, f"easel has no node {node_type}"
    ours = declared[node_type]["inputs"]
    theirs = TABLES[node_type]
    assert sorted(ours) == sorted(theirs), f"{node_type}: input names differ"
    for name, spec in theirs.items():
        for key, value in spec.items():
            if key == "choices":
                assert ours[name].get("choices", value) == value, f"{node_type}.{name} choices"
                continue
            assert ours[name].get(key) == value, (
                f"{node_type}.{name}.{key}: easel {ours[name].get(key)!r}, ComfyUI {value!r}"
            )
