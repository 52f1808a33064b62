"""One AS-Mamba block: features -> flow -> (global path, local path) -> aggregation FFN -> new features."""

from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .ffn import AggregationFFN
from .flow import FlowPredictor
from .global_path import GlobalPath
from .local_path import LocalPath


class ASMambaBlock(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        c_match, c_geom = cfg.dims.c_match, cfg.dims.c_geom
        self.geom_feedback = bool(cfg.blocks.geom_feedback)
        self.flow = FlowPredictor(cfg)
        self.global_path = GlobalPath(cfg)
        self.local_path = LocalPath(cfg)
        # inputs: skip F_match (+ skip F_geom), global (match, geom), local (match, geom)
        in_channels = 3 * c_match + 2 * c_geom + (c_geom if self.geom_feedback else 0)
        self.ffn = AggregationFFN(in_channels, c_match, c_geom, cfg.blocks.ffn_expand)

    def forward(
        self, m0: torch.Tensor, m1: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            m0, m1: ``F_match^(i-1)`` ``(B, C_match, h, w)``; g0, g1: ``F_geom^(i-1)`` ``(B, C_geom, h, w)``.
        Returns:
            ``(F_match^i_0, F_match^i_1, F_geom^i_0, F_geom^i_1)`` and the flows ``(Phi_01, Phi_10)``, each
            ``(B, h, w, 4)`` in the other image's coarse cells.
        """
        flow01 = self.flow(m0, g0, m1)  # (B, h, w, 4)
        flow10 = self.flow(m1, g1, m0)
        gm0, gm1, gg0, gg1 = self.global_path(m0, m1)
        lm0, lm1, lg0, lg1 = self.local_path(m0, m1, flow01, flow10)
        skip_g0, skip_g1 = (g0, g1) if self.geom_feedback else (None, None)
        extra0 = [g0] if self.geom_feedback else []
        extra1 = [g1] if self.geom_feedback else []
        n0, ng0 = self.ffn([m0, *extra0, gm0, gg0, lm0, lg0], m0, skip_g0)
        n1, ng1 = self.ffn([m1, *extra1, gm1, gg1, lm1, lg1], m1, skip_g1)
        return (n0, n1, ng0, ng1), (flow01, flow10)
