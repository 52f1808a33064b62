"""Positional encodings of coarse cells, added to the encoder's coarse features.

Cell centres are normalised to [-1, 1] over the (padded) coarse canvas, the frame in which the flow predictor
also states where a cell's match lies in the other image.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def normalized_cell_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Centres of an ``h x w`` grid of cells in [-1, 1] (x, y): ``(h, w, 2)``."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


class MLPPositionEncoding(nn.Module):
    """JamMa's encoding: normalised cell coordinates through a two-layer MLP."""

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        # feat: (B, C, h, w) -> (B, C, h, w)
        grid = normalized_cell_grid(feat.shape[2], feat.shape[3], feat.device, feat.dtype)  # (h, w, 2)
        return feat + self.mlp(grid).permute(2, 0, 1)[None]


class SinePositionEncoding(nn.Module):
    """Fixed sine/cosine encoding of the normalised cell coordinates (LoFTR-style, resolution independent)."""

    def __init__(self, channels: int, hidden: int = 0) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"sine position encoding needs channels divisible by 4, got {channels}")
        n = channels // 4
        freqs = torch.exp(torch.arange(n, dtype=torch.float32) * (-math.log(64.0) / max(n - 1, 1))) * 32 * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        grid = normalized_cell_grid(feat.shape[2], feat.shape[3], feat.device, feat.dtype)  # (h, w, 2)
        arg = grid[..., None] * self.freqs.to(feat.dtype)  # (h, w, 2, n)
        pe = torch.cat([arg.sin(), arg.cos()], dim=-1).flatten(-2)  # (h, w, 4n)
        return feat + pe.permute(2, 0, 1)[None]


def build_position_encoding(kind: str, channels: int, hidden: int) -> nn.Module:
    if kind == "mlp":
        return MLPPositionEncoding(channels, hidden)
    if kind == "sine":
        return SinePositionEncoding(channels)
    raise ValueError(f"unknown position encoding {kind!r}; available: mlp, sine")
