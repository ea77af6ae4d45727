"""Where each kind of model file lives: the per-kind folders of every models folder, plus
the folders ComfyUI's ``extra_model_paths.yaml`` adds.

A models folder has ComfyUI's layout: ``checkpoints/``, ``loras/``, ``vae/``, ... (see
:data:`KIND_FOLDERS`; ``clip/`` is ComfyUI's old name for ``text_encoders/``).

``extra_model_paths.yaml`` is read as ComfyUI's ``utils/extra_config.py`` reads it: a
mapping of sections (``comfyui:``, ``a111:``...), each with an optional ``base_path``
(``~`` and ``$VARS`` expanded) and ``is_default``, and per-kind keys whose values are one
folder per line, relative to ``base_path`` (or, without one, to the file's folder).
easel reads the file named by the setting ``extra_model_paths``, else the one next to
the models folder when the models folder is a ComfyUI install's ``models/``
(``ComfyUI/extra_model_paths.yaml``), else the one inside the models folder.
Unknown kinds in the file are kept (a plugin may ask for them); ``is_default`` folders
are searched first, as ComfyUI does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from runner.errors import ModelError

log = logging.getLogger(__name__)

KIND_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "diffusers"),
    "loras": ("loras",),
    "vae": ("vae",),
    "vae_approx": ("vae_approx",),
    "text_encoders": ("text_encoders", "clip"),
    "upscale_models": ("upscale_models",),
    "embeddings": ("embeddings",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "configs": ("configs",),
}
"""Model kind -> its subfolders in a models folder (ComfyUI's names)."""

LEGACY_KINDS = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
"""Kind names in ``extra_model_paths.yaml`` that ComfyUI maps onto newer ones."""

YAML_NAME = "extra_model_paths.yaml"


def find_extra_paths_file(models_root: Path, named: Path | None) -> Path | None:
    """The ``extra_model_paths.yaml`` in force (see the module docstring), or None."""
    if named is not None:
        named = Path(named).expanduser()
        if not named.is_file():
            raise ModelError(f"extra_model_paths: no such file {named}")
        return named
    candidates = []
    if models_root.name == "models":
        candidates.append(models_root.parent / YAML_NAME)
    candidates.append(models_root / YAML_NAME)
    return next((c for c in candidates if c.is_file()), None)


def read_extra_paths(yaml_path: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """``(default_first, others)``: kind -> folders from an ``extra_model_paths.yaml``;
    ``default_first`` holds the folders of sections with ``is_default: true``.

    Raises ModelError naming the file when it is not such a file."""
    import yaml

    try:
        data = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"{yaml_path}: cannot read it: {exc}") from exc
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise ModelError(
            f"{yaml_path}: expected sections of model folders, got {type(data).__name__}"
        )
    here = Path(yaml_path).resolve().parent
    first: dict[str, list[Path]] = {}
    others: dict[str, list[Path]] = {}
    for section, conf in data.items():
        if conf is None:
            continue
        if not isinstance(conf, Mapping):
            raise ModelError(f"{yaml_path}: section {section!r} is not a mapping")
        conf = dict(conf)
        base = conf.pop("base_path", None)
        base_path = None
        if base is not None:
            base_path = Path(os.path.expandvars(os.path.expanduser(str(base))))
            if not base_path.is_absolute():
                base_path = here / base_path
        target = first if conf.pop("is_default", False) else others
        for kind, value in conf.items():
            kind = LEGACY_KINDS.get(str(kind), str(kind))
            for line in str(value or "").split("\n"):
                line = line.strip()
                if not line:
                    continue
                folder = Path(os.path.expandvars(os.path.expanduser(line)))
                if not folder.is_absolute():
                    folder = (base_path or here) / folder
                target.setdefault(kind, []).append(folder)
                log.debug("extra model folder for %s: %s", kind, folder)
    return first, others


def kind_folders(
    kind: str,
    roots: list[Path],
    extra: tuple[dict[str, list[Path]], dict[str, list[Path]]] = ({}, {}),
) -> list[Path]:
    """Every folder to search for models of ``kind``, in order: ``is_default`` folders of
    the yaml file, each models folder's subfolders for the kind, then the yaml's others.
    Duplicates are dropped."""
    first, others = extra
    subs = KIND_FOLDERS.get(kind, (kind,))
    found = list(first.get(kind, []))
    found += [root / sub for root in roots for sub in subs]
    found += others.get(kind, [])
    return list(dict.fromkeys(found))


__all__ = [
    "KIND_FOLDERS",
    "LEGACY_KINDS",
    "find_extra_paths_file",
    "kind_folders",
    "read_extra_paths",
]
