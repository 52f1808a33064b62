"""ASpanFormer-style convolutional aggregation FFN (its ``merge_f``): fuses the global path, the local path and
the skip connection into the block's new matching and geometry features."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoder import LayerNorm2d


class AggregationFFN(nn.Module):
    """1x1 conv -> GELU -> 3x3 conv -> channel LayerNorm, added to the skip features.

    Args:
        in_channels: channels of all concatenated inputs.
        c_match, c_geom: output widths of the two streams.
        expand: hidden width = expand * (c_match + c_geom).
    """

    def __init__(self, in_channels: int, c_match: int, c_geom: int, expand: int = 2) -> None:
        super().__init__()
        hidden = expand * (c_match + c_geom)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, c_match + c_geom, 3, padding=1)
        self.norm = LayerNorm2d(c_match + c_geom)
        self.c_match = c_match

    def forward(
        self, inputs: list[torch.Tensor], skip_match: torch.Tensor, skip_geom: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            inputs: maps ``(B, C_k, h, w)`` whose channels add up to ``in_channels``.
            skip_match: ``(B, c_match, h, w)``; skip_geom: ``(B, c_geom, h, w)`` or None (no geometry feedback).
        Returns:
            ``F_match (B, c_match, h, w)``, ``F_geom (B, c_geom, h, w)``.
        """
        y = self.norm(self.conv3(F.gelu(self.conv1(torch.cat(inputs, dim=1)))))
        match, geom = y[:, : self.c_match], y[:, self.c_match :]
        return skip_match + match, geom if skip_geom is None else skip_geom + geom
