"""What sits in ``plugins/`` is a plugin: every module there is listed in
``DEFAULT_PLUGINS`` and implements at least one hook, so a helper module cannot pass for a
plugin (helpers live in ``runner``); the core nodes keep their names and categories."""

from __future__ import annotations

import importlib
from pathlib import Path

from runner.plugin_manager import DEFAULT_PLUGINS, build_plugin_manager

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def _module_names() -> set[str]:
    names = set()
    for path in PLUGINS.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        parts = path.relative_to(PLUGINS.parent).with_suffix("").parts
        names.add(".".join(parts))
    return names


def test_every_module_in_plugins_is_a_listed_plugin():
    assert _module_names() == set(DEFAULT_PLUGINS)


def test_every_builtin_plugin_implements_a_hook_and_package_inits_do_not():
    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        hooks = [n for n, v in vars(module).items() if n.startswith("easel_") and callable(v)]
        assert hooks, f"{name} is listed as a plugin but implements no easel_ hook"
    for init in PLUGINS.rglob("__init__.py"):
        source = init.read_text()
        assert "hookimpl" not in source, f"{init} is a package, not a plugin"


def test_core_nodes_by_category():
    pm = build_plugin_manager(entry_points=False)
    by_plugin = {
        name: sorted(t.name for t in plugin.easel_node_types())
        for name, plugin in pm.list_name_plugin()
        if name.startswith("plugins.core.")
    }
    expected = {
        "plugins.core.loaders": [
            "CLIPLoader",
            "CheckpointLoader",
            "CheckpointLoaderSimple",
            "DualCLIPLoader",
            "LoraLoader",
            "LoraLoaderModelOnly",
            "VAELoader",
        ],
        "plugins.core.latent_io": ["LoadImageOutput", "LoadLatent", "SaveLatent"],
        "plugins.core.upscale": ["ImageUpscaleWithModel", "UpscaleModelLoader"],
        "plugins.core.model_merging": [
            "CLIPMergeSimple",
            "CheckpointSave",
            "ModelMergeAdd",
            "ModelMergeBlocks",
            "ModelMergeSimple",
            "ModelMergeSubtract",
        ],
        "plugins.core.vision": [
            "CLIPVisionEncode",
            "CLIPVisionLoader",
            "GLIGENLoader",
            "GLIGENTextBoxApply",
            "HypernetworkLoader",
            "StyleModelApply",
            "StyleModelLoader",
            "unCLIPCheckpointLoader",
            "unCLIPConditioning",
        ],
        "plugins.core.conditioning": [
            "CLIPSetLastLayer",
            "CLIPTextEncode",
            "CLIPTextEncodeSDXL",
            "CLIPTextEncodeSDXLRefiner",
        ],
        "plugins.core.custom_sampling": [
            "BasicGuider",
            "BasicScheduler",
            "CFGGuider",
            "DisableNoise",
            "DualCFGGuider",
            "ExponentialScheduler",
            "FlipSigmas",
            "KSamplerSelect",
            "KarrasScheduler",
            "ModelSamplingDiscrete",
            "PolyexponentialScheduler",
            "RandomNoise",
            "SDTurboScheduler",
            "SamplerCustom",
            "SamplerCustomAdvanced",
            "SplitSigmas",
        ],
        "plugins.core.control": [
            "Canny",
            "ControlNetApply",
            "ControlNetApplyAdvanced",
            "ControlNetLoader",
            "DiffControlNetLoader",
        ],
        "plugins.core.conditioning_ops": [
            "ConditioningAverage",
            "ConditioningCombine",
            "ConditioningConcat",
            "ConditioningSetArea",
            "ConditioningSetAreaPercentage",
            "ConditioningSetAreaStrength",
            "ConditioningSetMask",
            "ConditioningSetTimestepRange",
            "ConditioningZeroOut",
        ],
        "plugins.core.sampling": ["KSampler", "KSamplerAdvanced"],
        "plugins.core.latent": [
            "EmptyLatentImage",
            "LatentUpscale",
            "LatentUpscaleBy",
            "RepeatLatentBatch",
            "VAEDecode",
            "VAEDecodeTiled",
            "VAEEncode",
            "VAEEncodeTiled",
        ],
        "plugins.core.mask": [
            "FeatherMask",
            "GrowMask",
            "ImageToMask",
            "InvertMask",
            "LoadImageMask",
            "MaskComposite",
            "MaskToImage",
            "SolidMask",
        ],
        "plugins.core.inpaint": [
            "ImagePadForOutpaint",
            "InpaintModelConditioning",
            "SetLatentNoiseMask",
            "VAEEncodeForInpaint",
        ],
        "plugins.core.latent_ops": [
            "LatentBlend",
            "LatentComposite",
            "LatentCompositeMasked",
            "LatentCrop",
            "LatentFlip",
            "LatentFromBatch",
            "LatentRotate",
        ],
        "plugins.core.image_ops": [
            "EmptyImage",
            "ImageBatch",
            "ImageBlend",
            "ImageCompositeMasked",
            "ImageCrop",
            "ImageInvert",
        ],
        "plugins.core.image": [
            "ImageScale",
            "ImageScaleBy",
            "LoadImage",
            "PreviewImage",
            "SaveImage",
        ],
    }
    # Each node lives in the plugin of its ComfyUI category (more may join a module).
    for name, nodes in expected.items():
        assert set(nodes) <= set(by_plugin.get(name, ())), name
    declared = [n for nodes in by_plugin.values() for n in nodes]
    assert len(declared) == len(set(declared)), "a node type is declared by two core plugins"
