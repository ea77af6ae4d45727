"""Helpers for the plugin tests: plugins written to disk, tiny jobs, the audit trail.

Imported by the test modules as ``plugin_testlib`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "easel-plugin-example"
OWNER = 4242
STRANGER = 777
PIP_OFFLINE = ["--no-index", "--no-build-isolation"]


def write_dropin(settings, name: str, code: str, *, package: bool = False) -> Path:
    """Write a drop-in plugin (a module, or a package's ``__init__.py``) into the plugins folder."""
    root = settings.plugins_root
    root.mkdir(parents=True, exist_ok=True)
    if package:
        (root / name).mkdir(exist_ok=True)
        path = root / name / "__init__.py"
    else:
        path = root / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


def make_project(
    where: Path,
    dist: str,
    module: str,
    code: str,
    *,
    version: str = "0.1.0",
    entry_point: bool = True,
    dependencies: tuple[str, ...] = (),
) -> Path:
    """A minimal plugin distribution in ``where/dist``: one module, an ``easel`` entry point."""
    project = where / dist
    (project / module).mkdir(parents=True, exist_ok=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(code))
    deps = ", ".join(f'"{d}"' for d in dependencies)
    entry = f'\n[project.entry-points.easel]\n{module} = "{module}"\n' if entry_point else ""
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "{version}"
            dependencies = [{deps}]
            """
        )
        + entry
        + f'\n[tool.setuptools]\npackages = ["{module}"]\n'
    )
    return project


def tiny_workflow(env, **overrides):
    """The txt2img workflow on the tiny model: 64 px, 2 steps (ids 3, 4, 5, 6, 7, 8, 9)."""
    from runner.templates import GenerationRequest

    request = {"prompt": "a fox", "seed": 3, "steps": 2, "width": 64, "height": 64, **overrides}
    return env.build_workflow(GenerationRequest(**request))


def run_job(env):
    """Run a small job and return its result: proof that the process still serves."""
    result = env.run(tiny_workflow(env))
    assert result.images
    return result


def audit_actions(service, actor=OWNER) -> list[str]:
    """The plugin audit log's actions, oldest first."""
    return [e.action for e in reversed(service.audit(actor, limit=100))]
