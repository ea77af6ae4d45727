"""ComfyUI's specs for the text encoder loaders (``nodes.py``: CLIPLoader, DualCLIPLoader)
and the model merging nodes (``comfy_extras/nodes_model_merging.py``). COMBO choices that
depend on files are left out."""

from runner.models.text_encoders import CLIP_LOADER_TYPES, DUAL_CLIP_LOADER_TYPES

_DEVICE = {"type": "COMBO", "choices": ["default", "cpu"], "required": False}
_RATIO = {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}

SPECS = {
    "CLIPLoader": {
        "clip_name": {"type": "COMBO"},
        "type": {"type": "COMBO", "choices": list(CLIP_LOADER_TYPES)},
        "device": _DEVICE,
    },
    "DualCLIPLoader": {
        "clip_name1": {"type": "COMBO"},
        "clip_name2": {"type": "COMBO"},
        "type": {"type": "COMBO", "choices": list(DUAL_CLIP_LOADER_TYPES)},
        "device": _DEVICE,
    },
}

EXCEPTIONS: dict[str, str] = {}
