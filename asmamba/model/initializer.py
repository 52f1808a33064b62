"""Mamba Initializer (JamMa's JointMamba made multi-head): the first exchange between the two images, splitting
the encoder's coarse features into matching features ``F_match`` and geometry features ``F_geom``."""

from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .joint_mamba import JointMambaScan


class MambaInitializer(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        c_enc, c_match, c_geom = cfg.encoder.c_enc, cfg.dims.c_match, cfg.dims.c_geom
        m = cfg.mamba
        self.joint = JointMambaScan(c_enc, (c_match, c_geom), m.scan, m.heads, m.d_state, m.d_conv, m.expand)
        self.skip = nn.Conv2d(c_enc, c_match, 1) if c_enc != c_match else nn.Identity()

    def forward(self, c0: torch.Tensor, c1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """
        Args:
            c0, c1: position-encoded coarse features ``(B, C_enc, h, w)``, h and w even.
        Returns:
            ``F_match^1`` of image 0 and 1 ``(B, C_match, h, w)``, ``F_geom^1`` of image 0 and 1 ``(B, C_geom, h, w)``.
        """
        (m0, m1), (g0, g1) = self.joint(c0, c1)
        return self.skip(c0) + m0, self.skip(c1) + m1, g0, g1
