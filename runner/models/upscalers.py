"""Image upscaling models (ComfyUI's ``models/upscale_models``): ESRGAN-family networks
read from their own files, and tiled upscaling so a 4x upscale of a large image fits in
memory.

ComfyUI loads these through ``spandrel``; spandrel 0.4.2 imports ``torchvision`` when it
is imported (its LaMa and RestoreFormer architectures), and torchvision does not install
beside the torch easel runs on, so easel reads the most shared family itself:

**RRDBNet** (ESRGAN, Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks"; Real-ESRGAN, Wang et al. 2021): a first convolution, a trunk of
Residual-in-Residual Dense Blocks (each three dense blocks of five 3x3 convolutions with
growth channels, LeakyReLU 0.2, residuals scaled by 0.2), a trunk convolution added back,
nearest-neighbour x2 upsampling steps each followed by a convolution, then two
convolutions. Real-ESRGAN's x2 and x1 models first fold the image into channels (pixel
unshuffle by 2 or 4). Both key layouts are read: the original ESRGAN one (``model.0``,
``model.1.sub.N.RDB1.conv1.0``...) and BasicSR's (``conv_first``, ``body.N.rdb1.conv1``...),
from ``.safetensors`` or (operator's files only) ``.pth`` through the restricted unpickler.
Sizes (channels, growth, blocks, scale) are read off the tensor shapes.

**Tiling** (:func:`tiled_scale`, as ComfyUI's ``tiled_scale``): the image is cut into
overlapping tiles (512 px, 32 px overlap), each upscaled on its own and blended back
with weights that ramp down linearly across the overlap, so seams do not show.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from runner.errors import ModelError


class _DenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the input and every earlier output."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1 = _DenseBlock(nf, gc)
        self.rdb2 = _DenseBlock(nf, gc)
        self.rdb3 = _DenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


@dataclass(frozen=True)
class RRDBConfig:
    """An RRDBNet's sizes, as read off a state dict."""

    in_nc: int
    out_nc: int
    nf: int
    gc: int
    nb: int
    ups: int
    """Number of x2 upsampling steps."""
    unshuffle: int
    """Pixel-unshuffle factor at the input (1: none; 2 or 4 for Real-ESRGAN x2 / x1)."""

    @property
    def scale(self) -> int:
        return 2**self.ups // self.unshuffle


class RRDBNet(nn.Module):
    """ESRGAN's generator in BasicSR's key names (see the module docstring)."""

    def __init__(self, config: RRDBConfig):
        super().__init__()
        self.config = config
        c = config
        self.conv_first = nn.Conv2d(c.in_nc * c.unshuffle**2, c.nf, 3, 1, 1)
        self.body = nn.Sequential(*[_RRDB(c.nf, c.gc) for _ in range(c.nb)])
        self.conv_body = nn.Conv2d(c.nf, c.nf, 3, 1, 1)
        for i in range(c.ups):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(c.nf, c.nf, 3, 1, 1))
        self.conv_hr = nn.Conv2d(c.nf, c.nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(c.nf, c.out_nc, 3, 1, 1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.config.ups):
            up = getattr(self, f"conv_up{i + 1}")
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def esrgan_to_basicsr(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ESRGAN keys (``model.0``, ``model.1.sub.N.RDBk.convj.0``, ``model.1.sub.M``
    trunk, then the upsampling convolutions, HR conv and last conv by position) as
    BasicSR's names. Keys already in BasicSR's names are returned unchanged."""
    if "conv_first.weight" in sd:
        return dict(sd)
    top = sorted({int(m[1]) for k in sd if (m := re.fullmatch(r"model\.(\d+)\.weight", k))})
    if not top or top[0] != 0 or len(top) < 3:
        raise ModelError("not an ESRGAN model: no model.0 / conv_first convolution")
    tail = top[1:]
    names = {top[0]: "conv_first", tail[-1]: "conv_last", tail[-2]: "conv_hr"}
    for i, index in enumerate(tail[:-2]):
        names[index] = f"conv_up{i + 1}"
    out: dict[str, torch.Tensor] = {}
    trunk = max(
        (int(m[1]) for k in sd if (m := re.fullmatch(r"model\.1\.sub\.(\d+)\.weight", k))),
        default=None,
    )
    for key, value in sd.items():
        if m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
            out[f"{names[int(m[1])]}.{m[2]}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif (m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key)) and int(
            m[1]
        ) == trunk:
            out[f"conv_body.{m[2]}"] = value
        else:
            raise ModelError(f"not an ESRGAN model: unexpected key {key!r}")
    return out


def rrdb_config(sd: Mapping[str, torch.Tensor]) -> RRDBConfig:
    """The sizes of an RRDBNet in BasicSR's names, read off its shapes."""
    try:
        first = sd["conv_first.weight"].shape
        last = sd["conv_last.weight"].shape
        gc = sd["body.0.rdb1.conv1.weight"].shape[0]
    except KeyError as exc:
        raise ModelError(f"not an ESRGAN (RRDBNet) model: no {exc.args[0]!r}") from None
    nb = 1 + max(int(m[1]) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
    ups = sum(1 for k in sd if re.fullmatch(r"conv_up\d\.weight", k))
    out_nc, nf = int(last[0]), int(first[0])
    folded = int(first[1])
    unshuffle = {out_nc: 1, out_nc * 4: 2, out_nc * 16: 4}.get(folded)
    if unshuffle is None:
        raise ModelError(
            f"ESRGAN model with {folded} input and {out_nc} output channels: not a layout "
            "easel knows (expected equal, or 4x / 16x for pixel-unshuffled inputs)"
        )
    return RRDBConfig(out_nc, out_nc, nf, int(gc), nb, ups, unshuffle)


def upscaler_from_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> RRDBNet:
    """An RRDBNet from a state dict in either key layout; ModelError naming ``source``."""
    try:
        converted = esrgan_to_basicsr(sd)
        model = RRDBNet(rrdb_config(converted))
        model.load_state_dict(converted, strict=True)
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None
    except RuntimeError as exc:
        raise ModelError(
            f"{source}: the tensors do not fit an ESRGAN (RRDBNet) model: {exc}"
        ) from exc
    return model.eval()


def tiled_scale(
    image: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: int,
    tile: int = 512,
    overlap: int = 32,
    out_channels: int | None = None,
) -> torch.Tensor:
    """``fn`` (an NCHW upscaler by ``scale``) applied tile by tile to ``image`` (NCHW) and
    blended back: tiles of ``tile`` px overlap by ``overlap`` px, and in each overlap the
    two tiles' results are mixed with weights ramping linearly from one to the other."""
    n, c, h, w = image.shape
    out_c = out_channels or c
    out = torch.zeros((n, out_c, h * scale, w * scale), dtype=torch.float32)
    weight = torch.zeros((1, 1, h * scale, w * scale), dtype=torch.float32)
    stride = max(1, tile - overlap)

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        found = list(range(0, size - tile, stride))
        return [*found, size - tile]

    for y in starts(h):
        for x in starts(w):
            piece = image[:, :, y : y + tile, x : x + tile]
            result = fn(piece).float().cpu()
            th, tw = result.shape[-2:]
            mask = torch.ones((1, 1, th, tw))
            ramp = overlap * scale
            for side, at_edge in (
                ("top", y == 0),
                ("bottom", y + tile >= h),
                ("left", x == 0),
                ("right", x + tile >= w),
            ):
                if at_edge or ramp <= 0:
                    continue
                r = min(ramp, th if side in ("top", "bottom") else tw)
                values = (torch.arange(r, dtype=torch.float32) + 1) / (r + 1)
                if side == "top":
                    mask[..., :r, :] *= values.view(-1, 1)
                elif side == "bottom":
                    mask[..., th - r :, :] *= values.flip(0).view(-1, 1)
                elif side == "left":
                    mask[..., :, :r] *= values.view(1, -1)
                else:
                    mask[..., :, tw - r :] *= values.flip(0).view(1, -1)
            oy, ox = y * scale, x * scale
            out[:, :, oy : oy + th, ox : ox + tw] += result * mask
            weight[:, :, oy : oy + th, ox : ox + tw] += mask
    return out / weight


def upscale_image(
    model: Any, image: torch.Tensor, *, device: torch.device, tile: int = 512, overlap: int = 32
) -> torch.Tensor:
    """IMAGE ``[batch, height, width, 3]`` in 0..1 upscaled by ``model`` tile by tile; on
    running out of memory the tile size halves and it tries again (down to 128 px), as
    ComfyUI does. Returns an IMAGE on the CPU, clamped to 0..1."""
    from runner.errors import is_out_of_memory

    x = image.movedim(-1, 1).float()
    dtype = next(model.parameters()).dtype

    def run(piece: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(piece.to(device, dtype))

    while True:
        try:
            out = tiled_scale(x, run, scale=model.scale, tile=tile, overlap=overlap)
            break
        except Exception as exc:
            if not is_out_of_memory(exc) or tile <= 128:
                raise
            tile //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out.clamp(0, 1).movedim(1, -1)


__all__ = [
    "RRDBConfig",
    "RRDBNet",
    "esrgan_to_basicsr",
    "rrdb_config",
    "tiled_scale",
    "upscale_image",
    "upscaler_from_state_dict",
]
