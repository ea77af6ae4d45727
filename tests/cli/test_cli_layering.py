"""The command line works through the services: no module of bot/cli imports ``db``."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "bot" / "cli"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_cli_commands_never_import_db() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in sorted(CLI.glob("*.py"))
        for name in _imports(path)
        if name == "db" or name.startswith("db.")
    }
    assert offenders == set()
