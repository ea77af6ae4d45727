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

LINK_ONLY = frozenset({MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, "MASK"})
"""Types that can only arrive through a link from another node's output."""

MASK = "MASK"
"""A single-channel mask (LoadImage's second output)."""
