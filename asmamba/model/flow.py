"""Flow prediction: per coarse cell, where its match lies in the other image and how sure the model is.

``Phi = (x, y, s_x, s_y)``: (x, y) in the other image's coarse grid (cell units, cell centres at integers) and the
log-variance ``s`` per axis (sigma = exp(s / 2) cells), predicted by a KAN (or ASpanFormer's MLP) from
``concat(F_match, F_geom)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from ..kan import KAN, MLP


class FlowPredictor(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        b = cfg.blocks
        in_dim = cfg.dims.c_match + (cfg.dims.c_geom if b.geom_feedback else 0)
        widths = [in_dim, b.flow_hidden, 4]
        if b.flow_predictor == "kan":
            self.net = KAN(widths, num_basis=b.kan_num_basis, basis=b.kan_basis)
        else:
            self.net = MLP(widths)
        self.use_geom = bool(b.geom_feedback)
        self.logvar_min, self.logvar_max = (float(v) for v in b.logvar_range)
        # start uncertain: a fresh predictor knows nothing, so its sigma should span the image, not one cell
        self.logvar_init = float(b.logvar_init)

    def forward(self, f_match: torch.Tensor, f_geom: torch.Tensor, other_hw: tuple[int, int]) -> torch.Tensor:
        """
        Args:
            f_match: ``(B, C_match, h, w)``; f_geom: ``(B, C_geom, h, w)``.
            other_hw: coarse size ``(h', w')`` of the other image's grid.
        Returns:
            ``Phi (B, h, w, 4)``: (x, y) in the other image's coarse cells, log-variances (s_x, s_y).
        """
        x = torch.cat([f_match, f_geom], dim=1) if self.use_geom else f_match
        out = self.net(x.permute(0, 2, 3, 1))  # (B, h, w, 4)
        h1, w1 = other_hw
        # (x, y) are predicted in [-1, 1] over the other canvas, mapped to cell units
        xy = (out[..., :2] + 1) / 2 * out.new_tensor([w1, h1]) - 0.5
        logvar = (out[..., 2:] + self.logvar_init).clamp(self.logvar_min, self.logvar_max)
        return torch.cat([xy, logvar], dim=-1)
