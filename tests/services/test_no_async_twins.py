"""Services are synchronous: the async edge (the bot) calls them with
``asyncio.to_thread``, so no ``a``-prefixed twin of a method comes back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "bot" / "services"
MODULES = ["history.py", "loras.py", "userdata.py", "database.py", "storage.py", "jobs"]


def _files(name: str) -> list[Path]:
    path = SERVICES / name
    return sorted(path.glob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("name", MODULES)
def test_no_coroutine_twins(name: str) -> None:
    coroutines = [
        f"{path.name}:{node.name}"
        for path in _files(name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.AsyncFunctionDef) and not node.name.startswith("_")
    ]
    assert coroutines == []
