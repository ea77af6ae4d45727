"""The rule for plugin code (docs/plugins.md, the example plugin): import only what
``runner`` exports. ``import runner`` and ``from runner import name`` with ``name`` in
``runner.__all__`` pass; ``runner.<module>`` in any form is private and does not.

Imported by the test modules as ``public_api`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import ast

import runner


def private_runner_imports(source: str, filename: str = "<code>") -> list[str]:
    """Each import in ``source`` that reaches past ``runner``'s public API, as
    ``"line N: what"``; an empty list when the code keeps to ``runner.__all__``."""
    public = set(runner.__all__)
    bad: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("runner."):
                    bad.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("runner."):
                bad.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "runner":
                bad.extend(
                    f"line {node.lineno}: from runner import {alias.name} (not in runner.__all__)"
                    for alias in node.names
                    if alias.name not in public
                )
    return bad
