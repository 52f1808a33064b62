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
from .encoder import LayerNorm2d


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
