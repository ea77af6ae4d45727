"""The plugin guide stays true, as datasette keeps its own: every hook in
``runner/hookspecs.py`` has a heading in ``docs/plugins.md`` followed by its current
signature, nothing else is documented as a hook, and every hook has a test named
``test_hook_<name>`` somewhere under ``tests/``."""

from __future__ import annotations

import inspect
import re

import pytest
from plugin_testlib import REPO
from public_api import private_runner_imports

from runner import hookspecs

DOCS = REPO / "docs" / "plugins.md"
SECTION = re.compile(r"^### (easel_\w+)\n+```python\n(.+?)\n```", re.MULTILINE)


def hook_names() -> list[str]:
    return sorted(
        name
        for name, fn in vars(hookspecs).items()
        if name.startswith("easel_") and callable(fn) and hasattr(fn, "easel_spec")
    )


def signature_of(name: str) -> str:
    """``name(arg: type, ...) -> return``, as the hookspec declares it."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(
        p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {p.annotation}"
        for p in sig.parameters.values()
    )
    returns = (
        "" if sig.return_annotation is inspect.Signature.empty else f" -> {sig.return_annotation}"
    )
    return f"{name}({params}){returns}"


def documented() -> dict[str, str]:
    return {name: " ".join(code.split()) for name, code in SECTION.findall(DOCS.read_text())}


def test_every_hook_is_found():
    assert len(hook_names()) >= 9
    assert "easel_node_types" in hook_names()


@pytest.mark.parametrize("name", hook_names())
def test_hook_is_documented_with_its_signature(name):
    docs = documented()
    assert name in docs, f"docs/plugins.md has no '### {name}' section"
    assert docs[name] == signature_of(name), f"docs/plugins.md shows an old signature of {name}"


def test_only_real_hooks_are_documented():
    assert sorted(documented()) == hook_names()


@pytest.mark.parametrize("name", hook_names())
def test_hook_has_a_test(name):
    pattern = re.compile(rf"^\s*(async\s+)?def test_hook_{name}\b", re.MULTILINE)
    tests = [p for p in (REPO / "tests").rglob("test_*.py") if pattern.search(p.read_text())]
    assert tests, f"no test named test_hook_{name} under tests/"


# The guide's own examples keep to the public API it asks plugin authors to keep to.

CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks() -> list[tuple[int, str]]:
    """Every python code block of docs/plugins.md with the line it starts on, except the
    hook signatures (``name(arg: type) -> ...`` is a signature, not a statement; they are
    checked against the hookspecs above)."""
    text = DOCS.read_text()
    signatures = {code.strip() for _, code in SECTION.findall(text)}
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in CODE_BLOCK.finditer(text)
        if match.group(1).strip() not in signatures
    ]


def test_the_guide_has_examples_that_import_runner():
    blocks = code_blocks()
    assert len(blocks) >= 10
    assert sum("from runner import" in code for _, code in blocks) >= 2


@pytest.mark.parametrize(
    "line, code", [pytest.param(line, code, id=f"line{line}") for line, code in code_blocks()]
)
def test_example_compiles_and_imports_only_public_names(line, code):
    compile(code, f"docs/plugins.md:{line}", "exec")
    bad = private_runner_imports(code, f"docs/plugins.md:{line}")
    assert not bad, f"the example at docs/plugins.md:{line} imports private names: {bad}"


def test_the_import_check_catches_private_imports():
    code = (
        "import runner\nfrom runner import node, types as T\n"
        "from runner.environment import Environment\nimport runner.plugin_host\n"
        "from runner import plugin_host\n"
    )
    assert private_runner_imports(code) == [
        "line 3: from runner.environment import ...",
        "line 4: import runner.plugin_host",
        "line 5: from runner import plugin_host (not in runner.__all__)",
    ]
