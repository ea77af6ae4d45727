"""ControlNets and T2I-Adapters: finding them in the models folders and loading them.

Names resolve under ``controlnet/`` and then ``t2i_adapter/`` of each models folder (as
ComfyUI's ``controlnet`` folder list does) to either

* a ``.safetensors`` file, in the diffusers key layout or the original one
  (:mod:`runner.models.control_layout` tells which, and converts), config built from
  the weights' shapes (a ``<stem>.config/config.json`` next to the file overrides it); or
* a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
  ``save_pretrained`` writes).

Pickle files (``.pth``, ``.ckpt``...) are refused by name (:func:`runner.files.refuse_pickle`).
A file that is neither a ControlNet nor a T2I-Adapter is refused with a message naming it.

A loaded model is a :class:`ControlModel` (what CONTROL_NET carries and
:attr:`runner.handles.ControlSpec.model` holds), on the engine's device and dtype, kept in
a small per-engine cache (:func:`control_store`) keyed by file, size and mtime.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import ModelError
from runner.files import read_safetensors_header, refuse_pickle
from runner.models import control_layout as L
from runner.models.configs import companion_config_dir
from runner.models.listing import outside_problem, safe_relative_name, scan_folder

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONTROL_FOLDERS = ("controlnet", "t2i_adapter")
"""Folders of a models folder searched for ControlNets and T2I-Adapters, in order."""

CACHE_SIZE = 4
"""Control models kept loaded per engine (least recently used dropped first)."""

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass(eq=False)
class ControlModel:
    """A loaded ControlNet or T2I-Adapter.

    ``kind`` is ``"controlnet"`` (``module`` a diffusers ``ControlNetModel``) or
    ``"t2i_adapter"`` (a diffusers ``T2IAdapter``); ``family`` the model family it was
    trained for (``sd1``, ``sd2``, ``sdxl``); ``name`` the name it was loaded under. The
    module is in eval mode on ``device`` in ``dtype``; do not change it (it is shared)."""

    kind: str
    module: Any
    family: str
    name: str
    path: Path | None = None
    device: Any = None
    dtype: Any = None
    layout: str = ""
    """``diffusers``, ``diffusers-folder``, ``original``, ``original-light``..."""
    diff: bool = False
    """A diff ControlNet whose weights had a MODEL's UNet weights added (DiffControlNetLoader)."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __repr__(self) -> str:
        return f"ControlModel({self.kind}, {self.family}, {self.name!r})"


# ---------------------------------------------------------------- names


def control_names(settings) -> list[str]:
    """Every ControlNet / T2I-Adapter name under ``controlnet/`` and ``t2i_adapter/`` of
    the models folders: ``.safetensors`` files and diffusers folders (``config.json``)."""
    names: list[str] = []
    for root in settings.model_roots:
        for folder in CONTROL_FOLDERS:
            for rel, path in _entries(root / folder):
                if outside_problem(settings, path, "ControlNet") is None:
                    names.append(rel)
    return list(dict.fromkeys(names))


def _entries(base: Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of the ``.safetensors`` files and diffusers folders under ``base``
    (a folder with ``config.json`` is one model: its files are not listed on their own;
    ``<stem>.config/`` companions are not models)."""
    entries = scan_folder(
        base, (".safetensors",), True, folder_marker="config.json", skip_folder_suffix=".config"
    )
    return [(rel, path) for rel, path, _ in entries]


def resolve_control(settings, name: str) -> Path:
    """The file or diffusers folder of ControlNet / T2I-Adapter ``name``. Raises
    UnsafeFileError for a pickle and ModelError naming what is available otherwise."""
    refuse_pickle(name)
    rel = safe_relative_name(name)
    for root in settings.model_roots:
        for folder in CONTROL_FOLDERS:
            candidate = root / folder / rel
            is_file = candidate.is_file() and candidate.suffix.lower() == ".safetensors"
            is_folder = candidate.is_dir() and (candidate / "config.json").is_file()
            if is_file or is_folder:
                problem = outside_problem(settings, candidate, "ControlNet")
                if problem is not None:
                    raise ModelError(f"ControlNet {name!r} cannot be used: {problem}")
                return candidate
    available = ", ".join(control_names(settings)) or "(none)"
    raise ModelError(
        f"no ControlNet or T2I-Adapter named {name!r} in the controlnet/ or t2i_adapter/ "
        f"folders; available: {available}"
    )


def check_control_name(settings, name: str) -> str | None:
    """None if ``name`` resolves to a ControlNet or T2I-Adapter, else why not (for
    validation; reads only the file's header)."""
    try:
        path = resolve_control(settings, name)
        if path.is_file():
            header = read_safetensors_header(path)
            if L.detect_control(header.shapes) is None:
                return L.describe_not_control(str(path), header.shapes)
    except ModelError as exc:
        return str(exc)
    except OSError as exc:
        return f"no ControlNet named {name!r}: {exc.strerror or exc}"
    return None


# ---------------------------------------------------------------- loading


def _companion_config(path: Path) -> dict[str, Any] | None:
    folder = companion_config_dir(path)
    if folder is None or not (folder / "config.json").is_file():
        return None
    return json.loads((folder / "config.json").read_text())


def _unet_state(unet) -> dict[str, Any]:
    """The UNet's own weights by diffusers name (peft LoRA layers left out, their base
    weights under the plain name)."""
    out = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key or "lora_magnitude" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def load_control(
    path: Path,
    *,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    unet: Any = None,
) -> ControlModel:
    """Load the ControlNet or T2I-Adapter at ``path`` (file or diffusers folder) on
    ``device`` in ``dtype``.

    ``unet`` (a MODEL's UNet, DiffControlNetLoader) serves twice: a *diff* ControlNet
    (original layout with a ``difference`` tensor, as ComfyUI reads it) gets the UNet's
    weights added to every tensor the two share, and its config gives the values the
    weights cannot (attention heads, norm groups). A diff ControlNet without ``unet`` is
    refused. Raises ModelError naming the file for anything that cannot be loaded."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, name=name, device=device, dtype=dtype)
    refuse_pickle(path)
    header = read_safetensors_header(path)
    found = L.detect_control(header.shapes)
    if found is None:
        raise ModelError(L.describe_not_control(str(path), header.shapes))
    kind, layout = found
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the weights: {exc}") from exc
    companion = _companion_config(path)
    diff = L.DIFF_KEY in state
    if kind == "controlnet":
        from diffusers import ControlNetModel

        sd = L.controlnet_to_diffusers(state, name=str(path)) if layout == "original" else state
        base = companion or (dict(unet.config) if unet is not None else None)
        config, family = L.controlnet_config(sd, name=str(path), base=base)
        if companion is not None:
            config = {**config, **{k: v for k, v in companion.items() if not k.startswith("_")}}
        if diff:
            if unet is None:
                raise ModelError(
                    f"{path}: a diff ControlNet (it holds weights relative to a model's UNet); "
                    f"load it with DiffControlNetLoader and the model it was made for"
                )
            sd = _add_unet(sd, unet, path)
        try:
            module = _empty(ControlNetModel, config)
        except Exception as exc:
            raise ModelError(f"{path}: cannot build a ControlNet from its shapes: {exc}") from exc
    else:
        from diffusers import T2IAdapter

        sd = L.adapter_to_diffusers(state, layout, name=str(path))
        config = L.adapter_config(sd, layout, name=str(path))
        if companion is not None:
            config = {**config, **{k: v for k, v in companion.items() if not k.startswith("_")}}
        family = "sdxl" if config["adapter_type"] == "full_adapter_xl" else "sd1"
        try:
            module = _empty(T2IAdapter, config)
        except Exception as exc:
            raise ModelError(f"{path}: cannot build a T2I-Adapter from its shapes: {exc}") from exc
    _load_strict(module, sd, path, kind)
    _place(module, device, dtype)
    return ControlModel(
        kind=kind,
        module=module,
        family=family,
        name=name,
        path=path,
        device=device,
        dtype=dtype,
        layout=layout,
        diff=diff,
    )


def _place(module: Any, device: Any, dtype: Any) -> None:
    """Move ``module`` to ``device`` and ``dtype`` (casting only when the dtype differs:
    diffusers warns on every cast) and switch it to eval mode."""
    if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)
    module.to(device=device).eval()


def _add_unet(sd: dict[str, Any], unet: Any, path: Path) -> dict[str, Any]:
    """ComfyUI's diff ControlNets: each tensor the UNet also has is stored as the
    difference from the UNet's; add the UNet's back (in the file's dtype)."""
    base = _unet_state(unet)
    out = {}
    for key, value in sd.items():
        other = base.get(key)
        if other is not None and tuple(other.shape) == tuple(value.shape):
            value = value + other.detach().to(device=value.device, dtype=value.dtype)
        out[key] = value
    return out


def _load_strict(module: Any, sd: dict[str, Any], path: Path, kind: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[:3]})")
        what = "ControlNet" if kind == "controlnet" else "T2I-Adapter"
        raise ModelError(
            f"{path}: the weights do not fit the {what} built from them: {'; '.join(parts)}"
        )
    module.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{path}: no weights for {left[:3]}")


def _empty(cls: Any, config: dict[str, Any]) -> Any:
    """``cls(**config)`` with its parameters on the meta device: random initialisation of
    a real-size ControlNet takes seconds, and every parameter is replaced by the file's."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(**config)


def _load_folder(folder: Path, *, name: str, device, dtype) -> ControlModel:
    config = json.loads((folder / "config.json").read_text())
    class_name = str(config.get("_class_name", ""))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in (".bin", ".pth")]
        if pickles:
            refuse_pickle(folder / pickles[0])
        raise ModelError(f"{folder}: no {WEIGHTS_NAME} in the folder")
    read_safetensors_header(weights)  # refuses renamed pickles and truncated files
    try:
        if class_name == "ControlNetModel":
            from diffusers import ControlNetModel as cls

            kind = "controlnet"
        elif class_name == "T2IAdapter":
            from diffusers import T2IAdapter as cls

            kind = "t2i_adapter"
        else:
            raise ModelError(
                f"{folder}: its config.json describes a {class_name or 'model of no class'}, "
                f"not a ControlNetModel or T2IAdapter"
            )
        module = cls.from_pretrained(
            str(folder), torch_dtype=dtype, use_safetensors=True, local_files_only=True
        )
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{folder}: cannot load it: {type(exc).__name__}: {exc}") from exc
    if kind == "controlnet":
        cfg = module.config
        family = (
            "sdxl"
            if cfg.get("addition_embed_type") == "text_time"
            else ("sd2" if cfg.get("use_linear_projection") else "sd1")
        )
    else:
        family = "sdxl" if module.config.get("adapter_type") == "full_adapter_xl" else "sd1"
    _place(module, device, dtype)
    return ControlModel(
        kind=kind,
        module=module,
        family=family,
        name=name,
        path=folder,
        device=device,
        dtype=dtype,
        layout="diffusers-folder",
    )


# ---------------------------------------------------------------- cache


class ControlStore:
    """The control models of one engine, loaded on demand and kept (LRU, :data:`CACHE_SIZE`)
    by file, size, mtime and, for diff ControlNets, the UNet they were added to."""

    def __init__(self, manager: Any):
        self.manager = manager
        self._loaded: OrderedDict[tuple, tuple[ControlModel, Any]] = OrderedDict()
        self._lock = threading.RLock()

    def names(self) -> list[str]:
        """What ControlNetLoader offers."""
        return control_names(self.manager.settings)

    def check(self, name: str) -> str | None:
        """None if ``name`` can be loaded, else why not."""
        return check_control_name(self.manager.settings, name)

    def stamp(self, name: str) -> str:
        """A string that changes when the file (or folder's weights) behind ``name`` does."""
        path = resolve_control(self.manager.settings, name)
        target = path / WEIGHTS_NAME if path.is_dir() else path
        st = target.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"

    def get(self, name: str, unet: Any = None) -> ControlModel:
        """The loaded model ``name`` (loading it if needed); ``unet`` as in
        :func:`load_control`."""
        path = resolve_control(self.manager.settings, name)
        key = (self.stamp(name), id(unet) if unet is not None else None)
        with self._lock:
            found = self._loaded.get(key)
            # The UNet is remembered weakly: an id can be reused once its model is gone.
            if found is not None and (unet is None or found[1]() is unet):
                self._loaded.move_to_end(key)
                return found[0]
            model = load_control(
                path,
                name=name,
                device=self.manager.device,
                dtype=self.manager.dtype,
                unet=unet,
            )
            self._loaded[key] = (model, weakref.ref(unet) if unet is not None else None)
            while len(self._loaded) > CACHE_SIZE:
                self._loaded.popitem(last=False)
            log.info("loaded %s %s (%s, %s)", model.kind, name, model.family, model.layout)
            return model

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()


_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def control_store(manager: Any) -> ControlStore:
    """The :class:`ControlStore` of a model manager (one per manager, made on first use)."""
    with _STORES_LOCK:
        store = _STORES.get(manager)
        if store is None:
            store = ControlStore(manager)
            _STORES[manager] = store
        return store


__all__ = [
    "CONTROL_FOLDERS",
    "ControlModel",
    "ControlStore",
    "check_control_name",
    "control_names",
    "control_store",
    "load_control",
    "resolve_control",
]
