"""Local Mamba module: each group of query cells reads a k x k span of the other image, centred at the predicted
flow and stretched by its uncertainty (ASpanFormer's adaptive span), through a short Mamba scan.

The sampled span comes first in the sequence and the group's query tokens last, so the queries read the span's
state. The flow is detached before it positions the span (ASpanFormer does the same).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from ..mamba.multihead import MultiHeadMamba
from .joint_mamba import pad_to_multiple


def span_offsets(sigma: torch.Tensor, k: int, radius_sigmas: float, min_spacing: float) -> torch.Tensor:
    """Offsets of a k x k sampling grid, per group, in cells.

    Args:
        sigma: ``(..., 2)`` standard deviation of the flow per axis (cells).
    Returns:
        ``(..., k*k, 2)`` (dx, dy) offsets, row-major over the grid; spacing per axis is
        ``max(min_spacing, 2 * radius_sigmas * sigma / k)`` (radius 5 sigma by default).
    """
    spacing = torch.clamp(2 * radius_sigmas * sigma / k, min=min_spacing)  # (..., 2)
    steps = torch.arange(k, device=sigma.device, dtype=sigma.dtype) - (k - 1) / 2  # (k,)
    gy, gx = torch.meshgrid(steps, steps, indexing="ij")
    unit = torch.stack([gx, gy], dim=-1).reshape(k * k, 2)  # (k*k, 2)
    return unit * spacing.unsqueeze(-2)


def sample_cells(feat: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a coarse map at cell coordinates (zeros outside).

    Args:
        feat: ``(B, C, h, w)``; xy: ``(B, N, 2)`` in cell units (cell centres at integers).
    Returns:
        ``(B, N, C)``.
    """
    h, w = feat.shape[-2:]
    grid = torch.stack([(xy[..., 0] + 0.5) / w * 2 - 1, (xy[..., 1] + 0.5) / h * 2 - 1], dim=-1)
    out = F.grid_sample(feat, grid[:, :, None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[..., 0].transpose(1, 2)


class LocalPath(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        b, m = cfg.blocks, cfg.mamba
        c_match, c_geom, d = cfg.dims.c_match, cfg.dims.c_geom, b.local_dim
        self.k, self.group = b.local_span, b.local_group
        self.radius_sigmas, self.min_spacing = b.local_radius_sigmas, b.local_min_spacing
        self.group_spread = bool(b.local_group_spread)
        self.proj = nn.Linear(c_match, d)
        self.norm = nn.LayerNorm(d)
        self.mamba = MultiHeadMamba(d, (c_match, c_geom), heads=m.heads, d_state=b.local_d_state, d_conv=m.d_conv,
                                    expand=b.local_expand)

    def _one_direction(self, fq: torch.Tensor, fs: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Build the sequences for queries of one image reading spans of the other.

        Args:
            fq: query features ``(B, d, h, w)``; fs: source features ``(B, d, h', w')``;
            flow: ``(B, h, w, 4)`` flow of the query cells into the source grid.
        Returns:
            sequences ``(B * G, k*k + g*g, d)`` with G = number of g x g groups.
        """
        B, d, h, w = fq.shape
        g, k = self.group, self.k
        flow = flow.detach()
        xy = pad_to_multiple(flow[..., :2].permute(0, 3, 1, 2), g)  # (B, 2, H', W')
        sigma = pad_to_multiple(torch.exp(0.5 * flow[..., 2:]).permute(0, 3, 1, 2), g)
        valid = pad_to_multiple(torch.ones_like(flow[..., :1]).permute(0, 3, 1, 2), g)
        # group centre and spread: the mean over the group's real (non-padding) cells
        count = F.avg_pool2d(valid, g).clamp(min=1e-6)  # (B, 1, Gh, Gw)
        centre = (F.avg_pool2d(xy, g) / count).flatten(2).transpose(1, 2)  # (B, G, 2)
        if self.group_spread:  # the group as a mixture: mean of the variances + variance of the means
            second = F.avg_pool2d(sigma**2 + xy**2, g) / count  # E[sigma^2 + mu^2] over the group's real cells
            mean = F.avg_pool2d(xy, g) / count
            spread = (second - mean**2).clamp(min=1e-6).sqrt().flatten(2).transpose(1, 2)  # (B, G, 2)
        else:
            spread = (F.avg_pool2d(sigma, g) / count).flatten(2).transpose(1, 2)  # (B, G, 2)
        G = centre.shape[1]
        points = centre.unsqueeze(2) + span_offsets(spread, k, self.radius_sigmas, self.min_spacing)  # (B, G, k*k, 2)
        span = sample_cells(fs, points.reshape(B, G * k * k, 2)).reshape(B * G, k * k, d)
        queries = pad_to_multiple(fq, g)  # (B, d, H', W')
        Hp, Wp = queries.shape[-2:]
        queries = queries.reshape(B, d, Hp // g, g, Wp // g, g).permute(0, 2, 4, 3, 5, 1)  # (B, Gh, Gw, g, g, d)
        return torch.cat([span, queries.reshape(B * G, g * g, d)], dim=1)

    def _ungroup(self, y: torch.Tensor, B: int, h: int, w: int) -> torch.Tensor:
        """``(B * G, g*g, C)`` query outputs -> ``(B, C, h, w)``."""
        g = self.group
        Gh, Gw = -(-h // g), -(-w // g)
        C = y.shape[-1]
        y = y.reshape(B, Gh, Gw, g, g, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, Gh * g, Gw * g)
        return y[..., :h, :w]

    def forward(
        self, f0: torch.Tensor, f1: torch.Tensor, flow01: torch.Tensor, flow10: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            f0, f1: ``F_match`` ``(B, C_match, h, w)``; flow01 ``(B, h, w, 4)`` into image 1, flow10 into image 0.
        Returns:
            local matching features of image 0 and 1 ``(B, C_match, h, w)``, geometry features ``(B, C_geom, h, w)``.
        """
        B, _, h, w = f0.shape
        p0 = self.proj(f0.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, d, h, w)
        p1 = self.proj(f1.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        seq0 = self._one_direction(p0, p1, flow01)  # image-0 queries reading image 1
        seq1 = self._one_direction(p1, p0, flow10)
        n0 = seq0.shape[0]
        match, geom = self.mamba(self.norm(torch.cat([seq0, seq1], dim=0)))  # (2BG, T, C) each
        q = self.group * self.group
        m0, m1 = match[:n0, -q:], match[n0:, -q:]
        g0, g1 = geom[:n0, -q:], geom[n0:, -q:]
        return (
            self._ungroup(m0, B, h, w), self._ungroup(m1, B, h, w),
            self._ungroup(g0, B, h, w), self._ungroup(g1, B, h, w),
        )
