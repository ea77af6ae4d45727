"""``easel doctor``: checks an installation the way people fight it in practice and says in
plain words what to fix; also prints the settings in force and where each came from."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass

import click

from bot.cli.common import load_settings, quiet_libraries
from bot.cli.doctor_database import database_checks
from bot.cli.doctor_plugins import plugin_checks
from runner.settings import config_file_path

MIN_VERSIONS = {
    "diffusers": "0.35",
    "transformers": "4.45",
    "peft": "0.13",
    "accelerate": "1.0",
    "safetensors": "0.4",
}


@dataclass
class Check:
    status: str  # ok, warn, fail
    title: str
    detail: str = ""
    fix: str = ""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _driver_cuda() -> tuple[str | None, str | None]:
    """(driver CUDA version, GPU names) from nvidia-smi, or Nones."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None, None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    match = re.search(r"CUDA Version:\s*([\d.]+)", out)
    try:
        names = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        names = ""
    return (match.group(1) if match else None), (names or None)


def run_checks(settings) -> list[Check]:
    """Every check, in the order people usually hit the problems."""
    checks: list[Check] = []
    py = sys.version_info
    if py >= (3, 11):
        checks.append(Check("ok", f"Python {py.major}.{py.minor}.{py.micro}"))
    else:
        checks.append(
            Check(
                "fail",
                f"Python {py.major}.{py.minor}",
                "easel needs Python 3.11 or newer",
                "install Python 3.11+ and make a new virtualenv",
            )
        )

    try:
        import numpy as np

        checks.append(Check("ok", f"numpy {np.__version__}"))
    except Exception as exc:
        checks.append(Check("fail", "numpy", f"cannot import: {exc}", "pip install 'numpy>=1.26'"))
        np = None

    driver_cuda, gpu_names = _driver_cuda()
    try:
        import torch

        build = torch.version.cuda
        checks.append(
            Check(
                "ok", f"torch {torch.__version__}", f"CUDA build {build}" if build else "CPU build"
            )
        )
        if np is not None:
            try:
                torch.from_numpy(np.zeros(2))
            except Exception as exc:
                checks.append(
                    Check(
                        "fail",
                        "torch and numpy",
                        f"torch cannot use this numpy ({exc})",
                        "install a numpy that matches torch, e.g. pip install 'numpy<2' for an old torch",
                    )
                )
        if gpu_names and not build:
            checks.append(
                Check(
                    "fail",
                    "GPU unused",
                    f"an NVIDIA GPU is present ({gpu_names}) but torch is a CPU build",
                    "reinstall PyTorch's CUDA build for your driver (pip install torch from PyTorch's CUDA index)",
                )
            )
        if build and driver_cuda and _version_tuple(build)[:2] > _version_tuple(driver_cuda)[:2]:
            checks.append(
                Check(
                    "fail",
                    "CUDA versions",
                    f"torch is built for CUDA {build} but the driver supports up to {driver_cuda}",
                    "update the NVIDIA driver, or install a torch built for an older CUDA",
                )
            )
        if torch.cuda.is_available():
            index = settings.gpu_index if settings.gpu_index < torch.cuda.device_count() else 0
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            status = "ok" if free > 3 * 1024**3 else "warn"
            fix = (
                ""
                if status == "ok"
                else "free GPU memory or set low_vram = true (model CPU offload)"
            )
            checks.append(
                Check(
                    status,
                    f"GPU {index}: {name}",
                    f"{free / 1024**3:.1f} GiB free of {total / 1024**3:.1f} GiB",
                    fix,
                )
            )
            if torch.cuda.get_device_capability(index)[0] < 7 and settings.dtype in (
                "auto",
                "bfloat16",
            ):
                checks.append(
                    Check(
                        "warn",
                        "old GPU",
                        "this GPU has slow or no fp16/bf16 support",
                        'set dtype = "float32" if images come out black',
                    )
                )
        elif build:
            checks.append(
                Check(
                    "fail",
                    "CUDA",
                    "torch has CUDA but sees no GPU",
                    "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES",
                )
            )
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            checks.append(Check("ok", "Apple GPU (MPS)"))
        else:
            checks.append(
                Check(
                    "warn",
                    "no GPU",
                    "images will be made on the CPU: fine for tiny-random, slow for real models",
                )
            )
    except Exception as exc:
        checks.append(
            Check(
                "fail",
                "torch",
                f"cannot import: {exc}",
                "pip install torch (the CUDA build on NVIDIA machines)",
            )
        )

    for package, minimum in MIN_VERSIONS.items():
        try:
            version = md.version(package)
            importlib.import_module(package)
        except md.PackageNotFoundError:
            checks.append(
                Check("fail", package, "not installed", f"pip install '{package}>={minimum}'")
            )
            continue
        except Exception as exc:
            checks.append(
                Check(
                    "fail",
                    f"{package} {version}",
                    f"cannot import: {type(exc).__name__}: {exc}",
                    f"pip install -U '{package}>={minimum}'",
                )
            )
            continue
        if _version_tuple(version) < _version_tuple(minimum):
            checks.append(
                Check(
                    "fail",
                    f"{package} {version}",
                    f"easel needs {minimum} or newer",
                    f"pip install -U '{package}>={minimum}'",
                )
            )
        else:
            checks.append(Check("ok", f"{package} {version}"))
    try:
        md.version("torchvision")
        try:
            importlib.import_module("torchvision")
        except Exception as exc:
            checks.append(
                Check(
                    "fail",
                    "torchvision",
                    f"installed but broken beside this torch ({type(exc).__name__})",
                    "pip uninstall torchvision (easel does not need it), or install the version matching torch",
                )
            )
    except md.PackageNotFoundError:
        pass

    from runner.models.manager import ModelManager

    manager = ModelManager(settings)
    for root in settings.model_roots:
        if root.is_dir():
            found = [
                sub
                for sub in ("checkpoints", "loras", "vae", "diffusers", "clip")
                if (root / sub).is_dir()
            ]
            checks.append(
                Check(
                    "ok",
                    f"models folder {root}",
                    "has " + (", ".join(found) or "no model subfolders yet"),
                )
            )
        else:
            checks.append(
                Check(
                    "warn",
                    f"models folder {root}",
                    "does not exist",
                    f"create {root}/checkpoints and put .safetensors checkpoints there, or set models_dir to a ComfyUI models folder",
                )
            )
    names = manager.checkpoint_names()
    checks.append(
        Check(
            "ok",
            f"{len(names)} checkpoint(s)",
            ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""),
        )
    )
    unsafe = manager.unsafe_files()
    if unsafe:
        checks.append(
            Check(
                "warn",
                f"{len(unsafe)} pickle-based file(s) refused",
                ", ".join(p.name for p in unsafe[:5]),
                "convert them to .safetensors; easel never unpickles weights",
            )
        )
    checks.extend(importlib.import_module("bot.cli.doctor_models").model_file_checks(manager))
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.data_dir):
            pass
        usage = shutil.disk_usage(settings.data_dir)
        status = "ok" if usage.free > 2 * 1024**3 else "warn"
        checks.append(
            Check(
                status,
                f"data folder {settings.data_dir.resolve()}",
                f"writable, {usage.free / 1024**3:.1f} GiB free",
                "" if status == "ok" else "free some disk space: outputs and models need room",
            )
        )
    except OSError as exc:
        checks.append(
            Check(
                "fail",
                f"data folder {settings.data_dir}",
                f"not writable ({exc.strerror})",
                "set data_dir (EASEL_DATA_DIR) to a folder you can write",
            )
        )
    checks += database_checks(settings)
    checks += plugin_checks(settings)
    if getattr(settings, "discord_token", None):
        checks.append(Check("ok", "Discord token set"))
    else:
        checks.append(
            Check(
                "warn",
                "Discord token",
                "not set (only needed for `easel bot`)",
                "set DISCORD_TOKEN",
            )
        )
    return checks


def settings_sources(settings) -> list[tuple[str, object, str]]:
    """(name, value, where it came from) for every setting."""
    path = config_file_path()
    file_values: dict = {}
    if path.is_file():
        try:
            file_values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError):
            file_values = {}
    rows = []
    for name, field in type(settings).model_fields.items():
        candidates = [f"EASEL_{name.upper()}"]
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            candidates = [
                c for c in alias.choices if isinstance(c, str) and c.isupper()
            ] + candidates
        source = "default"
        for var in candidates:
            if var in os.environ:
                source = f"environment ({var})"
                break
        else:
            if name in file_values:
                source = f"file ({path})"
        value = getattr(settings, name)
        if "token" in name and value:
            value = "***"
        rows.append((name, value, source))
    return rows


@click.command()
@click.option(
    "--settings/--no-settings",
    "show_settings",
    default=True,
    help="Also print the settings in force.",
)
def doctor(show_settings):
    """Check the installation and say what to fix."""
    quiet_libraries()
    settings = load_settings()
    marks = {
        "ok": click.style("ok  ", fg="green"),
        "warn": click.style("warn", fg="yellow"),
        "fail": click.style("FAIL", fg="red"),
    }
    checks = run_checks(settings)
    for check in checks:
        line = f"[{marks[check.status]}] {check.title}"
        if check.detail:
            line += f": {check.detail}"
        click.echo(line)
        if check.fix:
            click.echo(f"       fix: {check.fix}")
    if show_settings:
        click.echo(f"\nsettings in force (file: {config_file_path()}):")
        for name, value, source in settings_sources(settings):
            click.echo(f"  {name} = {value!s}  [{source}]")
    failures = [c for c in checks if c.status == "fail"]
    click.echo("")
    if failures:
        click.echo(f"{len(failures)} problem(s) to fix.")
        sys.exit(1)
    click.echo("everything easel needs is in place.")
