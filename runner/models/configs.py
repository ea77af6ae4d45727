"""Config selection for single-file checkpoints: which diffusers-format config folder
describes the model, and the tokenizer and scheduler read from it.

diffusers needs a diffusers-format config folder to build a pipeline from a single file;
with none it would fetch one from the Hugging Face hub. easel ships one per family under
``runner/assets/configs/<family>/`` (the real model sizes, from the official diffusers
repositories) and passes it as ``config=`` with ``local_files_only=True``, so nothing is
downloaded. The folder used is, first match wins:

1. ``config_override_dir`` given by the caller;
2. a companion folder next to the checkpoint named after it with the suffix ``.config``:
   ``models/foo.safetensors`` + ``models/foo.config/`` (a complete diffusers folder:
   ``model_index.json`` and the ``unet``/``vae``/``text_encoder``/``scheduler``/...
   configs, as ``save_pretrained`` writes them; weight files in it are ignored: weights
   always come from the checkpoint). Use it for a checkpoint whose architecture differs
   from the stock one of its family;
3. the shipped folder for the detected family (:func:`family_config_dir`).

A caller's or companion folder is used as it is (its scheduler decides the prediction
type).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import ModelError
from runner.models.families import FAMILIES, read_json

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"
"""Shipped diffusers-format config folders, one per family."""

COMPANION_CONFIG_SUFFIX = ".config"


def choose_config_dir(
    path: Path, family: str, config_override_dir: Path | None = None
) -> tuple[Path, bool]:
    """``(config folder, shipped)`` for checkpoint ``path`` of ``family`` (see the module
    docstring for the order). Raises ModelError for an override that does not exist."""
    if config_override_dir is not None:
        config_dir = Path(config_override_dir)
        if not config_dir.is_dir():
            raise ModelError(f"{path}: config folder {config_dir} does not exist")
        return config_dir, False
    companion = companion_config_dir(path)
    if companion is not None:
        return companion, False
    return family_config_dir(family), True


def family_config_dir(family: str) -> Path:
    """The shipped diffusers-format config folder of ``family``."""
    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return CONFIGS_DIR / family


def companion_config_dir(path: Path) -> Path | None:
    """The ``<stem>.config/`` folder next to a checkpoint, if there is one."""
    candidate = Path(path).with_suffix(COMPANION_CONFIG_SUFFIX)
    return candidate if candidate.is_dir() else None


def check_config_dir(config_dir: Path, family: str, checkpoint: Path) -> dict[str, Any]:
    """The folder's ``model_index.json``, after checking it describes a ``family`` model
    (ModelError naming ``checkpoint`` otherwise)."""
    index_path = config_dir / "model_index.json"
    if not index_path.is_file():
        raise ModelError(
            f"{checkpoint}: config folder {config_dir} has no model_index.json; it must be a "
            f"diffusers-format folder (as save_pretrained writes)"
        )
    index = read_json(index_path)
    class_name = str(index.get("_class_name", ""))
    wants_xl = family == "sdxl"
    if class_name and ("XL" in class_name) != wants_xl:
        raise ModelError(
            f"{checkpoint}: the checkpoint is {family} but config folder {config_dir} describes "
            f"a {class_name}"
        )
    return index


def has_vocab(folder: Path) -> bool:
    """Whether a tokenizer folder holds its own vocabulary."""
    return (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()


def pad_token(folder: Path, default: str) -> str:
    """The pad token a tokenizer folder's ``tokenizer_config.json`` names, else ``default``."""
    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        return default
    pad = read_json(cfg_path).get("pad_token", default)
    if isinstance(pad, dict):  # {"__type": "AddedToken", "content": ...}
        pad = pad.get("content", default)
    return str(pad)


def scheduler_with(config_dir: Path, index: Mapping[str, Any], **overrides: Any) -> Any:
    """The folder's scheduler, built with ``overrides`` to its config."""
    import diffusers

    _library, class_name = index["scheduler"]
    cls = getattr(diffusers, class_name)
    return cls.from_pretrained(str(config_dir), subfolder="scheduler", **overrides)
