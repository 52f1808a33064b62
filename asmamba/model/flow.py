"""Flow prediction: per coarse cell, where its match lies in the other image and how sure the model is.

``Phi = (x, y, s_x, s_y)``: (x, y) in the other image's coarse grid (cell units, cell centres at integers) and the
log-variance ``s`` per axis (sigma = exp(s / 2) cells), predicted by a KAN (or ASpanFormer's MLP) from
``concat(F_match, F_geom)``.

With ``blocks.flow_prior: correlation`` the flow starts from the features' own evidence: a global soft-argmax of each
cell against the other image pooled to 1/32, then a local soft-argmax over the 1/8 cells around it; its mean and
variance are the prior, and the KAN predicts a residual offset and log-variance correction. Without it (the first
release) the KAN regresses absolute positions from each cell's features alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

from ..kan import KAN, MLP
from .local_path import sample_cells


class CorrelationFlowPrior(nn.Module):
    """Mean and variance of each cell's match from feature correlation, coarse to fine.

    A global soft-argmax against the other image's features pooled by ``pool`` gives a first position; a local
    soft-argmax over the ``(2r+1)^2`` cells of the other image's 1/8 grid around it gives the prior's mean; its
    variance is the spread of the local distribution plus that of the global one (an unsure global stage may have put
    the local window in the wrong place) plus the 1/12 cell^2 of quantisation.
    """

    default_conf = {"dim": 64, "pool": 4, "radius": 2, "temperature": 0.1}

    def __init__(self, c_match: int, dim: int, pool: int, radius: int, temperature: float) -> None:
        super().__init__()
        self.query = nn.Linear(c_match, dim)
        self.key = nn.Linear(c_match, dim)
        self.pool, self.radius = pool, radius
        self.scale = 1.0 / (dim**0.5 * temperature)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            f0: queries ``(B, C, h, w)``; f1: the other image ``(B, C, h1, w1)``.
        Returns:
            mean ``(B, h, w, 2)`` in the other image's cells and variance ``(B, h, w, 2)`` in cells^2.
        """
        B, _, h, w = f0.shape
        h1, w1 = f1.shape[-2:]
        q = self.query(f0.flatten(2).transpose(1, 2)) * self.scale  # (B, L0, d)
        k = self.key(f1.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, d, h1, w1)
        # global: the other image pooled to 1/(8 pool); a pooled cell u has its centre at 1/8 cell pool*u + (pool-1)/2
        pooled = F.avg_pool2d(k, self.pool, ceil_mode=True)  # (B, d, hp, wp)
        hp, wp = pooled.shape[-2:]
        ys = (torch.arange(hp, device=f0.device, dtype=q.dtype) * self.pool + (self.pool - 1) / 2).clamp(max=h1 - 1)
        xs = (torch.arange(wp, device=f0.device, dtype=q.dtype) * self.pool + (self.pool - 1) / 2).clamp(max=w1 - 1)
        centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(1, hp * wp, 2)
        prob = torch.softmax(q @ pooled.flatten(2), dim=-1)  # (B, L0, Lp)
        first = prob @ centres  # (B, L0, 2)
        var_global = prob @ centres**2 - first**2  # (B, L0, 2): how unsure the global stage is
        # local: the (2r+1)^2 cells of the 1/8 grid around the rounded first guess
        r = self.radius
        steps = torch.arange(-r, r + 1, device=f0.device, dtype=q.dtype)
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        offsets = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2)  # (1, 1, K, 2)
        points = first.detach().round()[:, :, None] + offsets  # (B, L0, K, 2)
        K = points.shape[2]
        local = sample_cells(k, points.reshape(B, -1, 2)).reshape(B, h * w, K, -1)  # (B, L0, K, d)
        logits = torch.einsum("bld,blkd->blk", q, local)
        inside = (points[..., 0] >= 0) & (points[..., 0] <= w1 - 1) & (points[..., 1] >= 0) & (points[..., 1] <= h1 - 1)
        logits = logits.masked_fill(~inside, -1e4)
        weights = torch.softmax(logits, dim=-1)[..., None]  # (B, L0, K, 1)
        mean = (weights * points).sum(2)  # (B, L0, 2)
        # the local spread, plus the global stage's (a wrong global guess puts the local window in the wrong place),
        # plus the 1/12 cell^2 of quantisation
        var = (weights * (points - mean[:, :, None]) ** 2).sum(2) + var_global.clamp(min=0) + 1.0 / 12
        return mean.reshape(B, h, w, 2), var.reshape(B, h, w, 2)


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
        self.prior = None
        if b.flow_prior == "correlation":
            self.prior = CorrelationFlowPrior(cfg.dims.c_match, b.flow_corr_dim, b.global_pool, b.flow_corr_radius,
                                              b.flow_corr_temperature)
        self.logvar_min, self.logvar_max = (float(v) for v in b.logvar_range)
        # start uncertain: a fresh predictor knows nothing, so its sigma should span the image, not one cell
        self.logvar_init = float(b.logvar_init)

    def forward(self, f_match: torch.Tensor, f_geom: torch.Tensor, f_other: torch.Tensor) -> torch.Tensor:
        """
        Args:
            f_match: ``(B, C_match, h, w)``; f_geom: ``(B, C_geom, h, w)``; f_other: the other image's ``F_match``
                ``(B, C_match, h', w')``.
        Returns:
            ``Phi (B, h, w, 4)``: (x, y) in the other image's coarse cells, log-variances (s_x, s_y).
        """
        x = torch.cat([f_match, f_geom], dim=1) if self.use_geom else f_match
        out = self.net(x.permute(0, 2, 3, 1))  # (B, h, w, 4)
        if self.prior is not None:  # residual on the correlation prior: offset in cells, log-variance correction
            mean, var = self.prior(f_match, f_other)
            logvar = (var.log() + out[..., 2:]).clamp(self.logvar_min, self.logvar_max)
            return torch.cat([mean + out[..., :2], logvar], dim=-1)
        h1, w1 = f_other.shape[-2:]
        # (x, y) are predicted in [-1, 1] over the other canvas, mapped to cell units
        xy = (out[..., :2] + 1) / 2 * out.new_tensor([w1, h1]) - 0.5
        logvar = (out[..., 2:] + self.logvar_init).clamp(self.logvar_min, self.logvar_max)
        return torch.cat([xy, logvar], dim=-1)
