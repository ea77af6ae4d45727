"""Standalone components in the model cache: VAEs (``vae/``, TAESD in ``vae_approx/``), text
encoders (``text_encoders/``, ``clip/``) and upscalers (``upscale_models/``), each found by
name, loaded once and kept as a :class:`~runner.models.checkpoint.Checkpoint` whose ``pipe``
is a :class:`Components` (or a text-encoder-only pipeline), so the nodes that read
``checkpoint.pipe.vae`` use it as they use a checkpoint's own. They share the checkpoints'
memory budget and LRU order (:class:`~runner.models.manager.ModelManager` mixes this in)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from runner.errors import ModelError
from runner.models.checkpoint import Checkpoint
from runner.models.listing import safe_relative_name

log = logging.getLogger("runner.models.manager")  # one logger for the model cache


class ComponentLoading:
    """Finding and loading standalone components; mixed into
    :class:`~runner.models.manager.ModelManager`, whose cache (``_loaded``, ``_lock``,
    ``_make_room``), device, dtype and models folders it uses."""

    def _component(self, key: str, family: str, source: str, build: Any) -> Checkpoint:
        """The cached component checkpoint ``key`` (``vae:...``, ``clip:...``), built with
        ``build()`` -> a :class:`Components` if not loaded. Such keys can never be
        checkpoint names (a ``:`` in the first part of a name is refused), and they share
        the checkpoints' memory budget and LRU order."""
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                return loaded
            t0 = time.perf_counter()
            try:
                components = build()
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(
                    f"{source} could not be loaded: {type(exc).__name__}: {exc}"
                ) from exc
            components.to(self.device)
            checkpoint = Checkpoint(
                name=key,
                family=family,
                pipe=components,
                device=self.device,
                dtype=self.dtype,
                source=source,
                size_bytes=pipeline_bytes(components),
            )
            self.load_seconds[key] = time.perf_counter() - t0
            self._make_room(checkpoint.size_bytes)
            self._loaded[key] = checkpoint
            log.info("loaded %s from %s in %.2fs", key, source, self.load_seconds[key])
            return checkpoint

    def vae_location(self, name: str) -> Path | tuple[Path, Path]:
        """The file or diffusers folder of VAE ``name`` under ``vae/``, or for ``taesd`` /
        ``taesdxl`` their (encoder, decoder) files or folder (:mod:`runner.models.vae`)."""
        from runner.models.vae import TAESD_NAMES

        rel = safe_relative_name(name)
        if name in TAESD_NAMES:
            found: dict[str, Path] = {}
            for folder in self.folders("vae_approx"):
                if (folder / name / "config.json").is_file():
                    return folder / name
                for part in ("encoder", "decoder"):
                    for suffix in self.weight_suffixes():
                        candidate = folder / f"{name}_{part}{suffix}"
                        if part not in found and candidate.is_file():
                            found[part] = candidate
            if len(found) == 2:
                return found["encoder"], found["decoder"]
        path = self.find_file("vae", name, "VAE")
        if path is not None:
            return path
        for folder in self.folders("vae"):
            if (folder / rel / "config.json").is_file():
                return folder / rel
        available = ", ".join(self.vae_names()) or "(none)"
        extra = (
            f" ({name} needs {name}_encoder and {name}_decoder files in models/vae_approx)"
            if name in TAESD_NAMES
            else ""
        )
        raise ModelError(f"no VAE named {name!r}{extra}; available: {available}")

    def check_vae_name(self, name: str) -> str | None:
        """None if VAE ``name`` resolves, else why not (for validation)."""
        try:
            self.vae_location(name)
        except ModelError as exc:
            return str(exc)
        return None

    def vae(self, name: str) -> Checkpoint:
        """The loaded standalone VAE ``name``: a :class:`Checkpoint` whose ``pipe.vae`` is
        the module (an AutoencoderKL, or AutoencoderTiny for TAESD), so the VAE nodes use
        it exactly as a checkpoint's own VAE."""
        from runner.models import vae as vae_files

        location = self.vae_location(name)
        allow = self.settings.allow_pickle_weights
        if isinstance(location, tuple):
            encoder, decoder = location

            def build() -> Components:
                return Components(
                    vae=vae_files.load_taesd(encoder, decoder, dtype=self.dtype, allow_pickle=allow)
                )

            source = f"{encoder} + {decoder}"
        else:

            def build() -> Components:
                return Components(
                    vae=vae_files.load_vae(location, dtype=self.dtype, allow_pickle=allow)
                )

            source = str(location)
        family = "sdxl" if "xl" in Path(str(rel_name(name))).name.lower() else "sd1"
        return self._component(f"vae:{name}", family, source, build)

    def text_encoder_path(self, name: str) -> Path:
        """The file of text encoder ``name`` under ``text_encoders/`` (or ``clip/``)."""
        path = self.find_file("text_encoders", name, "text encoder")
        if path is None:
            available = ", ".join(self.text_encoder_names()) or "(none)"
            raise ModelError(f"no text encoder named {name!r}; available: {available}")
        return path

    def check_text_encoder_name(self, name: str) -> str | None:
        """None if text encoder ``name`` resolves, else why not (for validation)."""
        try:
            self.text_encoder_path(name)
        except ModelError as exc:
            return str(exc)
        return None

    def text_encoders(self, names: tuple[str, ...]) -> Checkpoint:
        """The loaded standalone text encoder(s) ``names`` (one for CLIPLoader, SDXL's two
        for DualCLIPLoader): a :class:`Checkpoint` whose pipe is a diffusers pipeline with
        no UNet or VAE around them and the CLIP tokenizer(s)
        (:mod:`runner.models.text_encoders`), in the model cache."""
        from runner.models import text_encoders as te

        paths = [self.text_encoder_path(name) for name in names]
        allow = self.settings.allow_pickle_weights
        found: dict[str, str] = {}

        def build() -> Any:
            encoders = []
            for path in paths:
                sd, kind = te.read_encoder(path, allow)
                encoders.append((sd, kind, str(path)))
            pipe, family = te.build_text_encoder_pipe(
                encoders, cache_dir=self.settings.cache_dir, dtype=self.dtype
            )
            pipe.set_progress_bar_config(disable=True)
            found["family"] = family
            return pipe

        key = "clip:" + "|".join(f"{p}:{p.stat().st_mtime_ns}" for p in paths)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                return loaded
            checkpoint = self._component(key, "pending", " + ".join(map(str, paths)), build)
            checkpoint.family = found["family"]
            return checkpoint

    def upscale_model_path(self, name: str) -> Path:
        """The file of upscaler ``name`` under ``upscale_models/``."""
        path = self.find_file("upscale_models", name, "upscale model")
        if path is None:
            available = ", ".join(self.upscale_model_names()) or "(none)"
            raise ModelError(f"no upscale model named {name!r}; available: {available}")
        return path

    def upscale_model(self, name: str) -> Checkpoint:
        """The loaded upscaler ``name``: a :class:`Checkpoint` whose ``pipe.model`` is an
        ESRGAN-family network (:mod:`runner.models.upscalers`), in the model cache."""
        from runner.models.upscalers import upscaler_from_state_dict
        from runner.models.vae import read_weights

        path = self.upscale_model_path(name)

        def build() -> Components:
            sd, _ = read_weights(path, self.settings.allow_pickle_weights)
            model = upscaler_from_state_dict(sd, str(path))
            # Upscalers run in float32 on the CPU; half precision on a GPU, as ComfyUI.
            if self.device.type == "cuda" and self.dtype != torch.float32:
                model.to(self.dtype)
            return Components(model=model)

        return self._component(f"upscaler:{name}", "upscaler", str(path), build)


def rel_name(name: str) -> str:
    """A model name with ``/`` separators (``sdxl\\vae.safetensors`` -> ``sdxl/vae...``)."""
    return name.replace("\\", "/")


class Components:
    """A few diffusers modules standing in for a pipeline (``components``, attribute access,
    ``to``): what a :class:`Checkpoint` holds for a standalone VAE or text encoder, so the
    nodes that read ``checkpoint.pipe.vae`` or ``.text_encoder`` use it unchanged."""

    def __init__(self, **modules: Any):
        self.__dict__["components"] = dict(modules)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["components"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> Components:
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self

    def set_progress_bar_config(self, **_: Any) -> None:
        """Nothing to configure (a pipeline's method, for code that calls it)."""


def pipeline_bytes(pipe: Any) -> int:
    """The bytes of the parameters of every torch module among ``pipe``'s components."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in component.parameters())
    return total
