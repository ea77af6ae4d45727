"""The import rule of DESIGN.md, checked on every module of the four packages.

``bot -> runner, db``; ``plugins -> runner``; ``runner`` and ``db`` import neither ``bot``
nor each other (``db`` also not torch or discord.py). Every ``import`` statement counts,
including those inside functions: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "runner", "plugins", "db")
FORBIDDEN = {
    "bot": {"plugins"},
    "runner": {"bot", "db", "plugins"},
    "plugins": {"bot", "db"},
    "db": {"bot", "runner", "plugins", "torch", "discord", "diffusers"},
}


def imported_roots(path: Path) -> set[tuple[str, int]]:
    """The top-level package of every absolute import in ``path``, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_keeps_the_import_rule(package: str) -> None:
    modules = _modules(package)
    assert modules, f"no modules found under {package}/"
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {root}"
        for path in modules
        for root, line in sorted(imported_roots(path))
        if root in FORBIDDEN[package]
    ]
    assert not bad, "import rule broken:\n" + "\n".join(bad)


def test_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bot.services import x\n    import db.models\n")
    assert {root for root, _ in imported_roots(module)} == {"bot", "db"}
