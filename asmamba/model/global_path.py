"""Global path of an AS-Mamba block: ``F_match`` pooled to 1/32, a joint multi-head Mamba scan of both images at
that size, and the result upsampled back to 1/8."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from .joint_mamba import JointMambaScan, pad_to_multiple


class GlobalPath(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        c_match, c_geom, m = cfg.dims.c_match, cfg.dims.c_geom, cfg.mamba
        self.pool = cfg.blocks.global_pool
        self.joint = JointMambaScan(c_match, (c_match, c_geom), m.scan, m.heads, m.d_state, m.d_conv, m.expand)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """
        Args:
            f0, f1: ``F_match`` of both images ``(B, C_match, h, w)``.
        Returns:
            global matching features of image 0 and 1 ``(B, C_match, h, w)`` and geometry features
            ``(B, C_geom, h, w)``.
        """
        h, w = f0.shape[-2:]
        # pad so the pooled map has even sides (the joint scan's stride-2 sub-grids)
        p0 = F.avg_pool2d(pad_to_multiple(f0, 2 * self.pool), self.pool)  # (B, C, h', w'), h' w' even
        p1 = F.avg_pool2d(pad_to_multiple(f1, 2 * self.pool), self.pool)
        (m0, m1), (g0, g1) = self.joint(p0, p1)

        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=self.pool, mode="bilinear", align_corners=False)[..., :h, :w]

        return up(m0), up(m1), up(g0), up(g1)
