"""ComfyUI's type vocabulary for node inputs and outputs.

The values behind MODEL, CLIP, VAE, CONDITIONING and LATENT are in :mod:`runner.handles`.
"""

from __future__ import annotations

MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"
"""An input whose value is one of a list of strings (ComfyUI's list-valued inputs)."""

PRIMITIVES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})
"""Types a workflow may give as a literal value rather than a link."""

SIGMAS = "SIGMAS"
"""A 1-D float tensor of noise levels, from the first step's down to the last (usually 0)."""
SAMPLER = "SAMPLER"
"""A sampler (KSamplerSelect): how to step from one sigma to the next."""
NOISE = "NOISE"
"""Where the initial noise comes from (RandomNoise, DisableNoise)."""
GUIDER = "GUIDER"
"""The model with its conditioning and guidance (BasicGuider, CFGGuider, DualCFGGuider)."""
CONTROL_NET = "CONTROL_NET"
"""A loaded ControlNet or T2I-Adapter (ControlNetLoader)."""
CLIP_VISION = "CLIP_VISION"
"""A loaded CLIP image encoder (CLIPVisionLoader, unCLIPCheckpointLoader)."""
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
"""What CLIPVisionEncode gives: image embeds and hidden states of a batch of images."""
STYLE_MODEL = "STYLE_MODEL"
"""A loaded T2I style adapter (StyleModelLoader)."""
GLIGEN = "GLIGEN"
"""A loaded GLIGEN box-conditioning model (GLIGENLoader)."""
UPSCALE_MODEL = "UPSCALE_MODEL"
"""A loaded image upscaler (UpscaleModelLoader)."""

LINK_ONLY = frozenset(
    {
        MODEL,
        CLIP,
        VAE,
        CONDITIONING,
        LATENT,
        IMAGE,
        "MASK",
        SIGMAS,
        SAMPLER,
        NOISE,
        GUIDER,
        CONTROL_NET,
        CLIP_VISION,
        CLIP_VISION_OUTPUT,
        STYLE_MODEL,
        GLIGEN,
        UPSCALE_MODEL,
    }
)
"""Types that can only arrive through a link from another node's output."""

MASK = "MASK"
"""A single-channel mask (LoadImage's second output)."""
