"""Fine matching at 1/2 resolution: a fine map decoded from the final coarse features and the encoder's 1/4 and 1/2
maps, w x w windows around each coarse match, a joint window encoder, a correlation of image 0's window centre with
image 1's window, and a sub-pixel expectation (LoFTR/ASpanFormer's fine head, with its variance).

Image 0's keypoint stays at its coarse cell centre; image 1's keypoint is refined.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from ..mamba.mamba import Mamba
from .encoder import LayerNorm2d, masked_moments, valid_mask


def separable_block(channels: int) -> nn.Sequential:
    """Depthwise 3x3 -> channel LayerNorm -> GELU -> 1x1: cheap enough to run on full 1/2-resolution maps."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels), LayerNorm2d(channels), nn.GELU(),
        nn.Conv2d(channels, channels, 1),
    )


class FineDecoder(nn.Module):
    """FPN-style decoder: coarse (1/8) -> 1/4 (+ encoder mid map) -> 1/2 (+ encoder fine map)."""

    def __init__(self, c_match: int, c_mid_enc: int, c_fine_enc: int, mid: int, out: int) -> None:
        super().__init__()
        self.lateral8 = nn.Conv2d(c_match, mid, 1)
        self.lateral4 = nn.Conv2d(c_mid_enc, mid, 1)
        self.merge4 = separable_block(mid)
        self.up4 = nn.Conv2d(mid, out, 1)
        self.lateral2 = nn.Conv2d(c_fine_enc, out, 1)
        self.merge2 = separable_block(out)

    def forward(self, coarse: torch.Tensor, mid: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        # coarse (B, C_match, h, w); mid (B, C_mid, 2h, 2w); fine (B, C_fine, 4h, 4w) -> (B, out, 4h, 4w)
        x = F.interpolate(self.lateral8(coarse), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        x = self.merge4(x + self.lateral4(mid))
        x = F.interpolate(self.up4(x), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge2(x + self.lateral2(fine))


def gather_windows(fine: torch.Tensor, b: torch.Tensor, cells: torch.Tensor, window: int, ratio: int) -> torch.Tensor:
    """The ``window x window`` grid of fine features centred on each listed coarse cell's centre.

    With ``ratio`` fine cells per coarse cell (4 for 1/8 -> 1/2), coarse cell c has its centre at fine coordinate
    ``ratio*c + (ratio-1)/2``, half-way between two fine cells; the map is first averaged over 2x2 neighbourhoods
    (bilinear sampling at half-integer positions) and the windows are read at unit spacing around that centre, with
    zeros outside the map. Only the listed cells are read, so the cost grows with the matches, not the image.

    Args:
        fine: ``(B, C, ratio*h, ratio*w)``; b, cells: ``(M,)`` batch index and flat coarse index of each window;
        window: odd.
    Returns:
        ``(M, window*window, C)``.
    """
    B, C, H, W = fine.shape
    w_cells = W // ratio
    half = (window - 1) // 2
    # averaged[a] = mean(fine[a-1], fine[a]) sits at fine coordinate a - 0.5 (index a of the padded average)
    averaged = F.avg_pool2d(F.pad(fine, (1, 1, 1, 1)), 2, stride=1)  # (B, C, H+1, W+1)
    # pad by `window` on every side so that every window index is inside; padding reads as zeros
    averaged = F.pad(averaged, (window, window, window, window)).permute(0, 2, 3, 1)  # (B, H+1+2w, W+1+2w, C)
    rows = torch.div(cells, w_cells, rounding_mode="floor")
    cols = cells % w_cells
    # the centre ratio*c + (ratio-1)/2 is averaged index ratio*c + ratio/2; the window starts `half` before it
    offsets = torch.arange(window, device=fine.device) - half + ratio // 2 + window
    ys = (ratio * rows)[:, None] + offsets  # (M, window)
    xs = (ratio * cols)[:, None] + offsets
    out = averaged[b[:, None, None], ys[:, :, None], xs[:, None, :]]  # (M, window, window, C)
    return out.reshape(-1, window * window, C)


class JointWindowEncoder(nn.Module):
    """Bidirectional Mamba over the concatenated windows of both images (window 0 tokens, then window 1)."""

    def __init__(self, dim: int, d_state: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.forward_scan = Mamba(dim, d_state=d_state, expand=1)
        self.backward_scan = Mamba(dim, d_state=d_state, expand=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (M, T, C) -> (M, T, C): every token
        y = self.norm(x)
        return x + self.forward_scan(y) + self.backward_scan(y.flip(1)).flip(1)

    def encode_pair(self, win0: torch.Tensor, win1: torch.Tensor, centre: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens fine matching reads - window 0's ``centre`` token and all of window 1 - of ``forward`` on
        ``cat([win0, win1], 1)``, without computing the others.

        The backward scan runs over the reversed sequence and is causal in it, so it stops at window 0's centre:
        ``centre + 1`` fewer steps than the full sequence.

        Args:
            win0, win1: ``(M, ww, C)``.
        Returns:
            ``(M, C)`` and ``(M, ww, C)``.
        """
        ww = win0.shape[1]
        x = torch.cat([win0, win1], dim=1)  # (M, 2ww, C)
        y = self.norm(x)
        fwd = self.forward_scan(y)
        # reversed position r holds original position 2ww-1-r; window 0's centre is reversed position 2ww-1-centre
        bwd = self.backward_scan(y.flip(1)[:, : 2 * ww - centre])
        centre_out = x[:, centre] + fwd[:, centre] + bwd[:, -1]
        window1_out = win1 + fwd[:, ww:] + bwd[:, :ww].flip(1)
        return centre_out, window1_out


class FineMatching(nn.Module):
    def __init__(self, cfg: DictConfig, c_mid_enc: int) -> None:
        super().__init__()
        f = cfg.fine
        if f.window % 2 == 0:
            raise ValueError(f"fine.window must be odd (its centre token is image 0's keypoint), got {f.window}")
        self.window, self.dim = f.window, f.dim
        self.decoder = FineDecoder(cfg.dims.c_match, c_mid_enc, cfg.encoder.c_fine, f.decoder_mid, f.dim)
        self.coarse_to_fine = nn.Linear(cfg.dims.c_match, f.dim)
        self.joint = JointWindowEncoder(f.dim, f.d_state) if f.joint_encoder == "mamba" else None

    def forward(self, data: dict) -> None:
        """Refine image 1's side of every coarse match.

        Reads ``feat_c0/1 (B, C_match, h, w)``, ``feat_mid0/1``, ``feat_fine0/1`` from the encoder and
        ``b_ids, i_ids, j_ids, mkpts0_c, mkpts1_c`` from coarse matching.
        Writes ``expec_f (M, 3)`` (normalised offset in [-1, 1] of the window half-width, and its std),
        ``fine_radius_px`` and ``mkpts0_f, mkpts1_f (M, 2)`` in padded-image pixels.
        """
        ratio = data["stride_c"] // data["stride_f"]
        b, i, j = data["b_ids"], data["i_ids"], data["j_ids"]
        half = (self.window - 1) // 2
        radius_px = float(half * data["stride_f"])
        data["fine_radius_px"] = radius_px
        M = b.numel()
        if M == 0:
            empty = data["mkpts0_c"].new_zeros((0, 3))
            data.update(expec_f=empty, mkpts0_f=data["mkpts0_c"], mkpts1_f=data["mkpts1_c"])
            return
        ww = self.window * self.window
        fine0 = self.decoder(data["feat_c0"], data["feat_mid0"], data["feat_fine0"])  # (B, D, 4h, 4w)
        fine1 = self.decoder(data["feat_c1"], data["feat_mid1"], data["feat_fine1"])
        win0 = gather_windows(fine0, b, i, self.window, ratio)  # (M, ww, D)
        win1 = gather_windows(fine1, b, j, self.window, ratio)
        c0 = data["feat_c0"].flatten(2).transpose(1, 2)[b, i]  # (M, C_match)
        c1 = data["feat_c1"].flatten(2).transpose(1, 2)[b, j]
        win0 = win0 + self.coarse_to_fine(c0)[:, None]
        win1 = win1 + self.coarse_to_fine(c1)[:, None]
        if self.joint is not None:  # (M, D) image 0's keypoint = coarse cell centre, (M, ww, D)
            centre0, win1 = self.joint.encode_pair(win0, win1, ww // 2)
        else:
            centre0 = win0[:, ww // 2]
        sim = torch.einsum("mc,mrc->mr", centre0, win1) / self.dim**0.5  # (M, ww)
        heat = F.softmax(sim, dim=1).reshape(M, self.window, self.window)
        steps = torch.linspace(-1, 1, self.window, device=heat.device, dtype=heat.dtype)
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).reshape(1, ww, 2)  # normalised window coordinates
        heat = heat.reshape(M, ww, 1)
        mean = (heat * grid).sum(1)  # (M, 2) in [-1, 1]
        var = (heat * grid**2).sum(1) - mean**2
        std = var.clamp(min=1e-10).sqrt().sum(-1, keepdim=True)  # (M, 1)
        data["expec_f"] = torch.cat([mean, std], dim=-1)
        data["mkpts0_f"] = data["mkpts0_c"]
        data["mkpts1_f"] = data["mkpts1_c"] + mean.detach() * radius_px


# --------------------------------------------------------------------------------------------------------------------
# Two-stage fine matching (EfficientLoFTR / JamMa style): a 1/2-level match inside each coarse match's window moves
# both keypoints off the 8 px grid, then a full-resolution correlation refines image 1's keypoint to sub-pixel.
# --------------------------------------------------------------------------------------------------------------------


def gather_blocks(fine: torch.Tensor, b: torch.Tensor, cells: torch.Tensor, ratio: int, margin: int) -> torch.Tensor:
    """The fine cells covering each listed coarse cell, plus ``margin`` fine cells on every side.

    Coarse cell ``(r, c)`` covers fine cells ``ratio*r .. ratio*r + ratio-1`` (rows) and likewise columns; the block
    is read row-major, with zeros outside the map.

    Args:
        fine: ``(B, C, ratio*h, ratio*w)``; b, cells: ``(M,)`` batch index and flat coarse index of each block.
    Returns:
        ``(M, s*s, C)`` with ``s = ratio + 2*margin``.
    """
    B, C, H, W = fine.shape
    w_cells = W // ratio
    size = ratio + 2 * margin
    padded = F.pad(fine, (margin, margin, margin, margin)).permute(0, 2, 3, 1)  # (B, H+2m, W+2m, C)
    rows = torch.div(cells, w_cells, rounding_mode="floor")
    cols = cells % w_cells
    offsets = torch.arange(size, device=fine.device)  # padded index ratio*r + k is fine row ratio*r + k - margin
    ys = (ratio * rows)[:, None] + offsets  # (M, s)
    xs = (ratio * cols)[:, None] + offsets
    return padded[b[:, None, None], ys[:, :, None], xs[:, None, :]].reshape(-1, size * size, C)


def sample_points(feature: torch.Tensor, b: torch.Tensor, pts: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear samples of a ``(B, C, H/stride, W/stride)`` map at pixel positions ``pts (M, K, 2)`` of item ``b``.

    Pixel centres are at integer coordinates; the map's cell ``u`` has its centre at pixel ``stride*u +
    (stride-1)/2``. Points outside the map read zeros. Returns ``(M, K, C)``.
    """
    B, C, h, w = feature.shape
    M, K, _ = pts.shape
    grid = (pts + 0.5) / stride  # map coordinates with cell u spanning [u, u+1)
    grid = torch.stack([grid[..., 0] / w, grid[..., 1] / h], dim=-1) * 2 - 1  # (M, K, 2) in [-1, 1]
    out = feature.new_zeros(M, K, C)
    for k in torch.unique(b).tolist():  # B is small: one grid_sample per item
        sel = b == k
        sampled = F.grid_sample(feature[k : k + 1], grid[sel][None].to(feature.dtype), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # (1, C, n, K)
        out[sel] = sampled[0].permute(1, 2, 0)
    return out


def standardise(image: torch.Tensor, valid_hw: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean / unit std over the valid (unpadded) pixels; padding reads 0. ``(B, 1, H, W)``."""
    valid = valid_mask(valid_hw, image.shape)  # (B, 1, H, W)
    mean, var, _ = masked_moments(image, valid)
    return (image - mean) / var.sqrt().clamp(min=1e-3) * valid


class PixelStem(nn.Module):
    """Full-resolution local features from the image: 3x3 conv, GELU, depthwise 3x3, 1x1 (receptive field 5x5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, dim, 3, padding=1)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pointwise = nn.Conv2d(dim, dim, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (B, 1, H, W) standardised -> (B, dim, H, W)
        return self.pointwise(self.depthwise(F.gelu(self.conv(image))))


class TwoStageFineMatching(nn.Module):
    """Both keypoints leave the coarse grid: stage 1 matches image 0's ``ratio x ratio`` fine (1/2) cells of a coarse
    match against image 1's ``(ratio + 2*margin)^2`` cells (dual-softmax, best pair); stage 2 correlates the chosen
    image-0 point's full-resolution feature with a ``(2R+1)^2`` pixel window around the chosen image-1 cell and takes
    the softmax expectation (sub-pixel)."""

    default_conf = {"margin": 1, "temperature": 0.1, "subpixel_radius": 2, "subpixel_dim": 16}

    def __init__(self, cfg: DictConfig, c_mid_enc: int) -> None:
        super().__init__()
        f = cfg.fine
        self.dim, self.margin = f.dim, int(f.margin)
        self.temperature, self.radius = float(f.temperature), int(f.subpixel_radius)
        self.decoder = FineDecoder(cfg.dims.c_match, c_mid_enc, cfg.encoder.c_fine, f.decoder_mid, f.dim)
        self.coarse_to_fine = nn.Linear(cfg.dims.c_match, f.dim)
        self.joint = JointWindowEncoder(f.dim, f.d_state) if f.joint_encoder == "mamba" else None
        self.pixel_stem = PixelStem(f.subpixel_dim)
        self.half_to_pixel = nn.Linear(f.dim, f.subpixel_dim)
        self.pixel_mix = nn.Sequential(nn.LayerNorm(f.subpixel_dim), nn.Linear(f.subpixel_dim, f.subpixel_dim))

    def forward(self, data: dict) -> None:
        """Refine every coarse match (both keypoints).

        Reads ``image0/1``, ``valid_hw0/1``, ``feat_c0/1 (B, C_match, h, w)``, ``feat_mid0/1``, ``feat_fine0/1`` and
        ``b_ids, i_ids, j_ids`` from coarse matching.
        Writes ``fine_conf (M, r*r, s*s)`` (stage-1 dual-softmax), ``fine_sel0, fine_sel1 (M,)`` (chosen cells),
        ``mkpts0_f (M, 2)`` (chosen image-0 fine cell centre), ``mkpts1_f_coarse (M, 2)`` (chosen image-1 fine cell
        centre), ``expec_f (M, 2)`` (stage-2 offset in units of ``subpixel_radius``), ``subpixel_radius``,
        ``mkpts1_f (M, 2)``; pixels of the padded image.
        """
        stride_c, stride_f = data["stride_c"], data["stride_f"]
        ratio = stride_c // stride_f
        b, i, j = data["b_ids"], data["i_ids"], data["j_ids"]
        h, w = data["hw_c"]
        M = b.numel()
        size1 = ratio + 2 * self.margin
        data["subpixel_radius"] = float(self.radius)
        if M == 0:
            zeros = data["mkpts0_c"].new_zeros((0, 2))
            data.update(expec_f=zeros, mkpts0_f=data["mkpts0_c"], mkpts1_f=data["mkpts1_c"],
                        mkpts1_f_coarse=data["mkpts1_c"], fine_sel0=b.new_zeros(0), fine_sel1=b.new_zeros(0),
                        fine_conf=zeros.new_zeros((0, ratio * ratio, size1 * size1)))
            return
        fine0 = self.decoder(data["feat_c0"], data["feat_mid0"], data["feat_fine0"])  # (B, D, 4h, 4w)
        fine1 = self.decoder(data["feat_c1"], data["feat_mid1"], data["feat_fine1"])

        # stage 1: image 0's r*r cells of the match vs image 1's s*s cells
        win0 = gather_blocks(fine0, b, i, ratio, 0)  # (M, r*r, D)
        win1 = gather_blocks(fine1, b, j, ratio, self.margin)  # (M, s*s, D)
        c0 = data["feat_c0"].flatten(2).transpose(1, 2)[b, i]  # (M, C_match)
        c1 = data["feat_c1"].flatten(2).transpose(1, 2)[b, j]
        win0 = win0 + self.coarse_to_fine(c0)[:, None]
        win1 = win1 + self.coarse_to_fine(c1)[:, None]
        if self.joint is not None:
            joint = self.joint(torch.cat([win0, win1], dim=1))  # (M, r*r + s*s, D)
            win0, win1 = joint[:, : ratio * ratio], joint[:, ratio * ratio :]
        sim = torch.einsum("mac,mbc->mab", win0, win1) / (self.dim * self.temperature)  # (M, r*r, s*s)
        conf = F.softmax(sim, dim=1) * F.softmax(sim, dim=2)
        data["fine_conf"] = conf
        best = conf.detach().flatten(1).argmax(dim=1)  # (M,)
        sel0 = torch.div(best, size1 * size1, rounding_mode="floor")
        sel1 = best % (size1 * size1)
        data["fine_sel0"], data["fine_sel1"] = sel0, sel1
        # fine cell u has its centre at pixel stride_f*u + (stride_f-1)/2
        off = (stride_f - 1) / 2.0
        r0, q0 = torch.div(i, w, rounding_mode="floor"), i % w
        r1, q1 = torch.div(j, w, rounding_mode="floor"), j % w
        pt0 = torch.stack([ratio * q0 + sel0 % ratio, ratio * r0 + torch.div(sel0, ratio, rounding_mode="floor")], -1)
        pt1 = torch.stack([ratio * q1 - self.margin + sel1 % size1,
                           ratio * r1 - self.margin + torch.div(sel1, size1, rounding_mode="floor")], -1)
        pt0 = pt0.to(data["mkpts0_c"].dtype) * stride_f + off  # (M, 2) pixels
        pt1 = pt1.to(data["mkpts1_c"].dtype) * stride_f + off

        # stage 2: image 0's point vs a (2R+1)^2 pixel window around image 1's cell centre, full resolution
        R = self.radius
        steps = torch.arange(-R, R + 1, device=pt1.device, dtype=pt1.dtype)
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)  # (1, K, 2) pixel offsets
        image0 = standardise(data["image0"], data["valid_hw0"])
        image1 = standardise(data["image1"], data["valid_hw1"])
        pix0 = self.pixel_stem(image0)  # (B, d, H, W)
        pix1 = self.pixel_stem(image1)
        pos1 = pt1[:, None] + grid  # (M, K, 2)
        f0 = sample_points(pix0, b, pt0[:, None], 1) + self.half_to_pixel(sample_points(fine0, b, pt0[:, None],
                                                                                          stride_f))  # (M, 1, d)
        f1 = sample_points(pix1, b, pos1, 1) + self.half_to_pixel(sample_points(fine1, b, pos1, stride_f))
        f0, f1 = self.pixel_mix(f0), self.pixel_mix(f1)  # (M, 1, d), (M, K, d)
        heat = F.softmax(torch.einsum("mxc,mkc->mk", f0, f1) / f0.shape[-1] ** 0.5, dim=1)  # (M, K)
        offset = (heat[..., None] * grid).sum(1)  # (M, 2) pixels in [-R, R]
        data["expec_f"] = offset / R
        data["mkpts0_f"] = pt0
        data["mkpts1_f_coarse"] = pt1
        data["mkpts1_f"] = pt1 + offset.detach()


def build_fine_matching(cfg: DictConfig, c_mid_enc: int) -> nn.Module:
    """The fine stage named by ``cfg.fine.kind``: ``window`` (image 1 refined in a window around the coarse match;
    image 0 stays at its cell centre) or ``two_stage`` (both keypoints refined, sub-pixel at full resolution)."""
    kinds = {"window": FineMatching, "two_stage": TwoStageFineMatching}
    if cfg.fine.kind not in kinds:
        raise ValueError(f"unknown fine.kind {cfg.fine.kind!r}; available: {', '.join(kinds)}")
    return kinds[cfg.fine.kind](cfg, c_mid_enc)
