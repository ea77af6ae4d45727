"""Load single-file Stable Diffusion checkpoints (original SD key layout), offline.

A "single file" is one ``.safetensors`` file holding a whole model in the layout of the
original CompVis / Stability code (:mod:`runner.models.layout`), as shared on model sites
and read by ComfyUI and A1111. The pieces live in their own modules:

- **which family, which prediction type**: :mod:`runner.models.families`
  (:func:`~runner.models.families.inspect_checkpoint`), from the header alone plus, for
  SD2, a ``.yaml`` sidecar or one 1.3 KB tensor;
- **which config folder**: :mod:`runner.models.configs` (caller's, ``<stem>.config/``
  companion, or the one easel ships per family: nothing is downloaded);
- **file safety**: :mod:`runner.files` (pickles refused by name, the safetensors header
  read with the ``safetensors`` library).

**Tokenizers** are the real CLIP BPE tokenizer rebuilt from the file easel ships
(:mod:`runner.models.tokenizer`), with the pad token named in the config folder's
``tokenizer*/tokenizer_config.json``; a config folder whose tokenizer folder holds its own
vocabulary (``vocab.json`` or ``tokenizer.json``) keeps it.

**unCLIP** (SD 2.1 unCLIP, ``sd21-unclip-h`` / ``-l``; :attr:`CheckpointInfo.unclip
<runner.models.families.CheckpointInfo.unclip>`): the SD2 parts load as for any SD2 file,
the UNet with a projection class embedding as wide as ``label_emb`` takes; the image
encoder is built from ``embedder.model.visual.*`` (:func:`runner.models.clip_vision.
clip_vision_from_state_dict`: OpenCLIP's layout converted, the architecture read off the
shapes); the image-embed noising schedule from ``noise_augmentor.betas`` (SD 2.1 unCLIP's
1000-step squaredcos schedule when absent); the normaliser from ``noise_augmentor.
data_mean`` / ``data_std`` when the file has them, else the identity (the released files
do not carry them: they are non-persistent buffers, so ComfyUI uses the identity as well).
The result is a ``StableUnCLIPImg2ImgPipeline``, as the diffusers-folder version loads.

**Safety.** Only ``.safetensors`` files are read. ``.ckpt``, ``.pt``, ``.pth``, ``.bin``,
``.pkl`` and ``.pickle`` files are refused with :class:`~runner.errors.UnsafeFileError`
before they are opened (pickle can run code), and so is a pickle or zip file renamed to
``.safetensors``. A file whose header is not valid safetensors, or that is truncated,
raises :class:`~runner.errors.ModelError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import ModelError
from runner.files import read_safetensors_header
from runner.models.configs import (
    COMPANION_CONFIG_SUFFIX,
    check_config_dir,
    choose_config_dir,
    has_vocab,
    pad_token,
    scheduler_with,
)
from runner.models.families import FAMILIES, inspect_checkpoint, read_json
from runner.models.layout import CLIP_L, CLIP_POS, LABEL_EMB, NOISE_AUGMENTOR, UNCLIP_VISUAL
from runner.models.tokenizer import EOS_TOKEN, load_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

__all__ = ["FAMILIES", "load_single_file"]


def _load_unprefixed_clip(path: Path, config_dir: Path, torch_dtype: Any) -> Any:
    """SD1 files whose CLIP keys lack ``text_model.`` (``cond_stage_model.transformer.
    embeddings.*``): diffusers does not recognise them, so build the text encoder here."""
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"), local_files_only=True)
    model = CLIPTextModel(config)
    expected = set(model.state_dict())
    wants_prefix = any(k.startswith("text_model.") for k in expected)
    sd = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            if key.startswith(CLIP_L):
                name = key[len(CLIP_L) :]
                name = ("text_model." + name) if wants_prefix else name
                if name in expected:
                    sd[name] = fh.get_tensor(key)
    missing = sorted(expected - set(sd))
    if missing:
        raise ModelError(
            f"{path}: the text encoder is missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    model.load_state_dict(sd, strict=True)
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _unclip_unet(path: Path, config_dir: Path, info: Any, header: Any, torch_dtype: Any) -> Any:
    """The unCLIP UNet: the config folder's UNet with a projection class embedding as wide
    as the file's ``label_emb`` input (diffusers then converts ``label_emb`` into it)."""
    from diffusers import UNet2DConditionModel

    width = int(header.shapes[LABEL_EMB][1])
    return UNet2DConditionModel.from_single_file(
        str(path),
        config=str(config_dir),
        subfolder="unet",
        local_files_only=True,
        torch_dtype=torch_dtype,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=width,
        in_channels=info.unet_in_channels,
    )


def _unclip_pipeline(path: Path, pipe: Any, torch_dtype: Any) -> Any:
    """``pipe``'s parts with the file's image encoder, normaliser and noising schedule, as
    a ``StableUnCLIPImg2ImgPipeline`` (see the module docstring)."""
    import torch
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from safetensors import safe_open
    from transformers import CLIPImageProcessor

    from runner.models.clip_vision import clip_vision_from_state_dict

    visual: dict[str, Any] = {}
    augmentor: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            if key.startswith(UNCLIP_VISUAL):
                visual[key] = fh.get_tensor(key)
            elif key.startswith(NOISE_AUGMENTOR):
                augmentor[key[len(NOISE_AUGMENTOR) :]] = fh.get_tensor(key)
    try:
        encoder = clip_vision_from_state_dict(visual, dtype=torch_dtype or torch.float32)
    except ModelError as exc:
        raise ModelError(f"{path}: the unCLIP image encoder cannot be loaded: {exc}") from exc
    dim = int(encoder.config.projection_dim)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=dim)
    with torch.no_grad():
        for name, target in (("data_mean", normalizer.mean), ("data_std", normalizer.std)):
            if name in augmentor:
                target.copy_(augmentor[name].reshape(1, dim))
    betas = augmentor.get("betas")
    if betas is not None:
        noising = DDPMScheduler(
            num_train_timesteps=int(betas.numel()), trained_betas=betas.double().tolist()
        )
    else:
        noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    size = int(encoder.config.image_size)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
        image_encoder=encoder,
        image_normalizer=normalizer.to(torch_dtype=torch_dtype or torch.float32),
        image_noising_scheduler=noising,
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        vae=pipe.vae,
    )


def _check_materialised(pipe: Any, path: Path, config_dir: Path) -> None:
    """diffusers leaves tensors the checkpoint lacks on the 'meta' device; refuse those."""
    import torch

    for comp_name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        missing = [
            n
            for n, t in list(component.named_parameters()) + list(component.named_buffers())
            if t.device.type == "meta"
        ]
        if missing:
            raise ModelError(
                f"{path}: the checkpoint has no weights for {len(missing)} tensors of the "
                f"{comp_name} described by {config_dir} (e.g. {missing[:3]}): the file is "
                f"incomplete or the config does not match it"
            )


def load_single_file(
    path: Path,
    *,
    cache_dir: Path,
    torch_dtype: torch.dtype | None,
    config_override_dir: Path | None = None,
) -> tuple[DiffusionPipeline, str]:
    """Load a single-file SD1.x / SD2.x / SDXL ``.safetensors`` checkpoint fully offline.

    Returns the pipeline (a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``
    without safety checker, on the CPU, in ``torch_dtype``; an inpainting file's UNet has
    its 9 input channels whatever the config folder says; an unCLIP file gives a
    ``StableUnCLIPImg2ImgPipeline``) and the family (``sd1``,
    ``sd2``, ``sd2-v`` or ``sdxl``). ``cache_dir`` holds the generated CLIP tokenizer files.
    The diffusers config folder is ``config_override_dir``, else ``<stem>.config/`` next to
    the file, else the shipped one for the family (see the module docstring).

    Raises :class:`~runner.errors.UnsafeFileError` for pickle formats and
    :class:`~runner.errors.ModelError` (naming the file) for anything else that cannot be
    loaded: invalid or truncated file, unsupported model kind, config that does not fit.
    """
    header = read_safetensors_header(Path(path))
    info = inspect_checkpoint(header, read_tensors=True)
    path, family = info.path, info.family
    config_dir, shipped = choose_config_dir(path, family, config_override_dir)
    index = check_config_dir(config_dir, family, path)

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs: dict[str, Any] = {}
    tokenizer_pads = {"tokenizer": EOS_TOKEN if family in ("sd1", "sdxl") else "!"}
    if family == "sdxl":
        tokenizer_pads["tokenizer_2"] = "!"
    for name, default_pad in tokenizer_pads.items():
        if not has_vocab(config_dir / name):
            pad = pad_token(config_dir / name, default_pad)
            kwargs[name] = load_clip_tokenizer(Path(cache_dir), pad_token=pad)

    if family == "sdxl":
        pipeline_cls: Any = StableDiffusionXLPipeline
        kwargs["add_watermarker"] = False
    else:
        pipeline_cls = StableDiffusionPipeline
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    if shipped:
        overrides: dict[str, Any] = {}
        shipped_pred = read_json(config_dir / "scheduler" / "scheduler_config.json").get(
            "prediction_type", "epsilon"
        )
        if info.prediction_type != shipped_pred:
            overrides["prediction_type"] = info.prediction_type
        if info.zero_terminal_snr:
            overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        if overrides:
            try:
                kwargs["scheduler"] = scheduler_with(config_dir, index, **overrides)
            except Exception as exc:
                raise ModelError(f"{path}: cannot build the scheduler: {exc}") from exc

    # An inpainting UNet (9 input channels) under a 4-channel config: diffusers' legacy
    # ``num_in_channels`` sets the UNet's in_channels alone (not the VAE's).
    config_in = read_json(config_dir / "unet" / "config.json").get("in_channels", 4)
    if info.unet_in_channels != config_in:
        kwargs["num_in_channels"] = info.unet_in_channels
    if info.unclip:
        try:
            kwargs["unet"] = _unclip_unet(path, config_dir, info, header, torch_dtype)
        except Exception as exc:
            raise ModelError(
                f"{path}: cannot load the unCLIP UNet with the configs in {config_dir}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        kwargs.pop("num_in_channels", None)

    if (
        family == "sd1"
        and CLIP_L + CLIP_POS not in header.shapes
        and CLIP_L + CLIP_POS.removeprefix("text_model.") in header.shapes
    ):
        kwargs["text_encoder"] = _load_unprefixed_clip(path, config_dir, torch_dtype)

    try:
        pipe = pipeline_cls.from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            torch_dtype=torch_dtype,
            **kwargs,
        )
    except ModelError:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if "meta" in text:
            hint = "the checkpoint lacks weights the config describes (an incomplete file?)"
        elif shipped:
            hint = (
                f"its sizes may differ from the stock {family} model: put a matching diffusers "
                f"config folder next to it as {path.with_suffix(COMPANION_CONFIG_SUFFIX).name}/"
            )
        else:
            hint = "the config folder may not match the checkpoint"
        raise ModelError(
            f"{path}: cannot load it as {family} with the configs in {config_dir}; {hint}. {text}"
        ) from exc
    if info.unclip:
        pipe = _unclip_pipeline(path, pipe, torch_dtype)
    _check_materialised(pipe, path, config_dir)
    return pipe, family
