"""pip for the plugin packages folder: specs checked against the configuration, the plan
shown before an install, the install itself, and drop-ins' ``requirements.txt``.

pip installs into the plugin packages folder (``pip install --prefix``), never into the
bot's own environment: a constraints file pins every package the bot has, so a plugin that
needs other versions is refused by pip's resolver instead of changing the bot. Ownership,
the audit log and the database are the service's business, not this module's."""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.services.plugins import pip
from bot.services.plugins.errors import PipTimedOut, SpecRefused
from bot.services.plugins.removal import remove_stale_versions
from bot.services.plugins.results import InstallPlan, PackageChange
from runner.plugin_host import normalize_name, plugin_site_dirs

EASEL_PACKAGES = frozenset({"runner", "db", "bot", "plugins"})
"""easel's own top-level packages: a plugin must not ship packages of these names."""


def _top_level(parts: tuple[str, ...]) -> str:
    """The top-level module a RECORD entry belongs to ("" for metadata and scripts)."""
    if not parts or parts[0] in ("..", "") or parts[0].endswith((".dist-info", ".data")):
        return ""
    if len(parts) == 1:
        return parts[0][:-3] if parts[0].endswith(".py") else ""
    return parts[0]


class PipInstaller:
    """Runs pip into ``settings.plugin_packages_root`` with the configured time limit and
    extra arguments; ``lock`` is held by whoever runs pip to change the folder."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.prefix: Path = Path(settings.plugin_packages_root)
        self.site_dirs = plugin_site_dirs(self.prefix)
        self.lock = threading.Lock()

    def check_spec(self, spec: str) -> str:
        """What to hand pip for ``spec``: the requirement, URL, or resolved path;
        :class:`SpecRefused` for a URL or path unless ``plugin_allow_urls`` is on, a path
        that does not exist, or anything that is not a spec."""
        kind = pip.classify_spec(spec)
        if kind != "requirement" and not self.settings.plugin_allow_urls:
            raise SpecRefused(spec, f"a {kind} is only accepted with plugin_allow_urls = true")
        if kind == "path":
            path = Path(spec.strip()).expanduser().resolve()
            if not path.exists():
                raise SpecRefused(spec, f"no such file or folder: {path}")
            return str(path)
        return spec.strip()

    def run(self, extra: list[str], spec: str, work: Path) -> pip.PipRun:
        """``pip install --prefix PREFIX ... EXTRA`` in ``work``, with every package of the
        bot's own environment pinned in ``work/constraints.txt``; ``spec`` names the run in
        errors."""
        constraints = work / "constraints.txt"
        constraints.write_text(pip.environment_constraints(self.site_dirs))
        self.prefix.mkdir(parents=True, exist_ok=True)
        args = [
            "install",
            "--prefix",
            str(self.prefix),
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "-c",
            str(constraints),
            *self.settings.plugin_pip_args,
            *extra,
        ]
        return pip.run_pip(args, timeout_s=self.settings.plugin_pip_timeout_s, spec=spec, cwd=work)

    def plan(self, spec: str, target: str) -> InstallPlan:
        """What pip would install for ``target`` (``pip install --dry-run --report -``);
        :class:`~bot.services.plugins.errors.PipFailed` or
        :class:`~bot.services.plugins.errors.PipTimedOut` when pip fails."""
        # Not --quiet: pip says what a conflict is caused by only on its (info) output.
        with tempfile.TemporaryDirectory(prefix="easel-pip-") as tmp:
            report_path = Path(tmp) / "report.json"
            run = self.run(
                ["--dry-run", "--report", str(report_path), "--", target], spec, Path(tmp)
            )
            run.check(spec)
            report = report_path.read_text() if report_path.is_file() else ""
        return InstallPlan(spec, pip.read_report(report, run, spec), run.warnings)

    def install(self, spec: str, target: str) -> tuple[tuple[PackageChange, ...], str]:
        """Install ``target``; the packages pip installed and its summary. Files an upgrade
        left behind are deleted. Raises like :meth:`plan` (the ``PipFailed`` summary is the
        one returned on success). The caller holds :attr:`lock`."""
        with tempfile.TemporaryDirectory(prefix="easel-pip-") as tmp:
            report_path = Path(tmp) / "report.json"
            run = self.run(["--report", str(report_path), "--", target], spec, Path(tmp))
            run.check(spec)
            packages = pip.read_report(report_path.read_text(), run, spec)
        for package in packages:
            remove_stale_versions(self.prefix, package.name, package.version)
        return packages, run.summary()

    def shadowing(self, packages: tuple[PackageChange, ...]) -> dict[str, list[str]]:
        """The packages just installed that ship top-level modules named like easel's own
        (``runner``, ``db``, ``bot``, ``plugins``), by distribution, from their RECORD."""
        import importlib.metadata

        wanted = {p.name for p in packages}
        found: dict[str, list[str]] = {}
        paths = [str(p) for p in self.site_dirs if p.exists()]
        for dist in importlib.metadata.distributions(path=paths):
            try:
                name = normalize_name(dist.metadata["Name"] or "")
            except Exception:
                continue
            if name not in wanted or name in found:
                continue
            tops = {_top_level(f.parts) for f in dist.files or []}
            clash = sorted(t for t in tops if t in EASEL_PACKAGES)
            if clash:
                found[name] = clash
        return found

    def dropin_requirements(self, dropin_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        """pip-install the ``requirements.txt`` of each drop-in package in ``dropin_dir``
        once per content (a mark file holds its sha256); yields ``(folder name, details)``
        as each run ends, ``details["ok"]`` saying whether it worked."""
        if not dropin_dir.is_dir():
            return
        marks = self.prefix / ".dropin-requirements"
        for folder in sorted(p for p in dropin_dir.iterdir() if p.is_dir()):
            requirements = folder / "requirements.txt"
            if not requirements.is_file() or folder.name.startswith((".", "_")):
                continue
            digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
            mark = marks / f"{folder.name}.sha256"
            if mark.is_file() and mark.read_text().strip() == digest:
                continue
            spec = f"-r {requirements}"
            with self.lock, tempfile.TemporaryDirectory(prefix="easel-pip-") as tmp:
                try:
                    run = self.run(["-r", str(requirements)], spec, Path(tmp))
                except PipTimedOut as exc:
                    yield folder.name, {"ok": False, "error": str(exc)}
                    continue
            ok = run.returncode == 0
            if ok:
                mark.parent.mkdir(parents=True, exist_ok=True)
                mark.write_text(digest)
            yield folder.name, {"ok": ok, "pip": run.summary()}


__all__ = ["PipInstaller"]
