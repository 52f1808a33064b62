"""Coarse matching: dual-softmax over all cell pairs, threshold, border removal, padding masks, and mutual nearest
neighbours (LoFTR) or JamMa's union of one-way nearest neighbours.

Training (and any call that asks for ``conf_matrix``) builds the dense ``(B, L0, L1)`` confidence. Inference streams
over blocks of rows instead, never holding the matrix: the dual-softmax needs each row's and each column's
log-sum-exp (pass 1, an online log-sum-exp for the columns) and then each row's and column's best partner (pass 2),
so the similarities are computed twice in cache-sized blocks. Same matches, a fraction of the memory traffic.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig

NEG_INF = -1e9

# similarities per block of the streamed inference path (B x rows x L1 values): about a CPU's L2/L3 cache, but at
# least STREAM_MIN_ROWS rows, so that the block's matrix product stays efficient on large images (measured here:
# 19200 cells, 4.5 s with 256-row blocks against 6.3 s with 54-row ones)
STREAM_BLOCK_ELEMENTS = 2**20
STREAM_MIN_ROWS = 256


def cell_centres(ids: torch.Tensor, w: int, stride: int) -> torch.Tensor:
    """Pixel centres ``(N, 2)`` (x, y) of flat coarse-cell indices on a grid ``w`` cells wide.

    Cell (c, r) covers pixels [stride*c, stride*c + stride) so its centre is ``stride*c + (stride-1)/2`` with pixel
    centres at integer coordinates.
    """
    xy = torch.stack([ids % w, torch.div(ids, w, rounding_mode="floor")], dim=-1)
    return xy.float() * stride + (stride - 1) / 2


def border_mask(valid_hw: torch.Tensor, h: int, w: int, border: int) -> torch.Tensor:
    """``(B, h*w)`` bool: cells inside each image's valid region and at least ``border`` cells from its edges.

    Args:
        valid_hw: ``(B, 2)`` long, the valid coarse height and width of each image (the rest is padding).
    """
    rows = torch.arange(h, device=valid_hw.device)[None, :, None]
    cols = torch.arange(w, device=valid_hw.device)[None, None, :]
    vh, vw = valid_hw[:, 0, None, None], valid_hw[:, 1, None, None]
    inside = (rows >= border) & (rows < vh - border) & (cols >= border) & (cols < vw - border)
    return inside.flatten(1)


class CoarseMatching(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        c = cfg.coarse
        self.temperature, self.threshold, self.border = c.temperature, c.threshold, c.border_rm
        self.rule = c.rule
        self.train_fine_samples = c.train_fine_samples
        self.dense_budget = int(c.dense_budget_mb) * 2**20  # bytes of the L0 x L1 matrix built in one pass
        self.covisibility_threshold = float(c.covisibility_threshold)
        self.proj = nn.Linear(cfg.dims.c_match, cfg.dims.c_match)

    def confidence(self, f0: torch.Tensor, f1: torch.Tensor, valid0: torch.Tensor, valid1: torch.Tensor) -> torch.Tensor:
        """Dual-softmax confidence ``(B, L0, L1)`` of ``(B, L, C)`` features; padded cells get 0.

        Without gradients the matrix is built in place (one ``L0 x L1`` buffer) to keep large images in memory.
        """
        f0 = self.proj(f0)
        f1 = self.proj(f1)
        scale = 1.0 / (f0.shape[-1] * self.temperature)
        sim = torch.einsum("blc,bsc->bls", f0, f1)  # (B, L0, L1)
        invalid_rows = None if bool(valid0.all()) else ~valid0[:, :, None]
        invalid_cols = None if bool(valid1.all()) else ~valid1[:, None, :]
        if torch.is_grad_enabled():
            sim = sim * scale
            if invalid_rows is not None:
                sim = sim.masked_fill(invalid_rows, NEG_INF)
            if invalid_cols is not None:
                sim = sim.masked_fill(invalid_cols, NEG_INF)
            return F.softmax(sim, 1) * F.softmax(sim, 2)
        sim.mul_(scale)
        if invalid_rows is not None:
            sim.masked_fill_(invalid_rows, NEG_INF)
        if invalid_cols is not None:
            sim.masked_fill_(invalid_cols, NEG_INF)
        lse_rows = torch.logsumexp(sim, dim=2, keepdim=True)  # (B, L0, 1)
        lse_cols = torch.logsumexp(sim, dim=1, keepdim=True)  # (B, 1, L1)
        return sim.mul_(2).sub_(lse_rows).sub_(lse_cols).exp_()

    def streamed_best(self, f0: torch.Tensor, f1: torch.Tensor, valid0: torch.Tensor, valid1: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's and each column's best dual-softmax partner without building the confidence matrix.

        With scaled similarities s, conf_ij = exp(2 s_ij - lse_row_i - lse_col_j), so row i's best column is the
        argmax of 2 s_ij - lse_col_j and column j's best row the argmax of 2 s_ij - lse_row_i.

        Args:
            f0, f1: ``(B, L, C)`` features (before the projection); valid0, valid1: ``(B, L)`` bool.
        Returns:
            ``row_log_conf (B, L0)``, ``row_arg (B, L0)``, ``col_log_conf (B, L1)``, ``col_arg (B, L1)``: the
            log-confidence of each row's (column's) best match and its index.
        """
        scale = 1.0 / (f0.shape[-1] * self.temperature)
        f0 = self.proj(f0) * scale
        f1t = self.proj(f1).transpose(1, 2)  # (B, C, L1)
        B, L0, L1 = f0.shape[0], f0.shape[1], f1t.shape[2]
        rows = max(STREAM_MIN_ROWS, STREAM_BLOCK_ELEMENTS // (B * L1))
        invalid1 = None if bool(valid1.all()) else ~valid1[:, None, :]
        invalid0 = None if bool(valid0.all()) else ~valid0[:, :, None]

        def similarities(r0: int) -> torch.Tensor:  # (B, R, L1) scaled, padded cells at NEG_INF
            sim = torch.bmm(f0[:, r0: r0 + rows], f1t)
            if invalid1 is not None:
                sim.masked_fill_(invalid1, NEG_INF)
            if invalid0 is not None:
                sim.masked_fill_(invalid0[:, r0: r0 + rows], NEG_INF)
            return sim

        # pass 1: row log-sum-exp, and the columns' by an online log-sum-exp (running max, rescaled sum)
        lse_row = f0.new_empty(B, L0)
        col_max = f0.new_full((B, 1, L1), NEG_INF)
        col_sum = f0.new_zeros(B, 1, L1)
        for r0 in range(0, L0, rows):
            sim = similarities(r0)
            lse_row[:, r0: r0 + rows] = torch.logsumexp(sim, dim=2)
            new_max = torch.maximum(col_max, sim.amax(dim=1, keepdim=True))
            col_sum.mul_((col_max - new_max).exp_()).add_(sim.sub_(new_max).exp_().sum(dim=1, keepdim=True))
            col_max = new_max
        lse_col = (col_max + col_sum.log()).squeeze(1)  # (B, L1)
        # pass 2: best partners
        row_best, row_arg = f0.new_empty(B, L0), torch.empty(B, L0, dtype=torch.long, device=f0.device)
        col_best = f0.new_full((B, L1), -math.inf)
        col_arg = torch.zeros(B, L1, dtype=torch.long, device=f0.device)
        for r0 in range(0, L0, rows):
            sim2 = similarities(r0).mul_(2)  # 2 s
            best, arg = (sim2 - lse_col[:, None, :]).max(dim=2)
            row_best[:, r0: r0 + rows], row_arg[:, r0: r0 + rows] = best, arg
            best, arg = (sim2.sub_(lse_row[:, r0: r0 + rows, None])).max(dim=1)
            better = best > col_best  # strict: the lowest row index wins a tie
            col_best = torch.where(better, best, col_best)
            col_arg = torch.where(better, arg + r0, col_arg)
        return row_best - lse_row, row_arg, col_best - lse_col, col_arg

    def select_streamed(self, f0: torch.Tensor, f1: torch.Tensor, valid0: torch.Tensor, valid1: torch.Tensor,
                        keep0: torch.Tensor, keep1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`select`'s matches computed by :meth:`streamed_best`: ``(b_ids, i_ids, j_ids, mconf)``."""
        row_log, row_arg, col_log, col_arg = self.streamed_best(f0, f1, valid0, valid1)
        log_threshold = math.log(self.threshold) if self.threshold > 0 else -math.inf
        B, L0 = row_arg.shape
        L1 = col_arg.shape[1]
        i_all = torch.arange(L0, device=f0.device)[None].expand(B, L0)
        row_ok = (row_log > log_threshold) & keep0 & keep1.gather(1, row_arg)
        if self.rule == "mutual":
            keep = row_ok & (col_arg.gather(1, row_arg) == i_all)
            b_ids, i_ids = torch.nonzero(keep, as_tuple=True)
            return b_ids, i_ids, row_arg[keep], row_log[keep].exp()
        # union of one-way nearest neighbours, in the dense path's (b, i, j) order
        col_ok = (col_log > log_threshold) & keep1 & keep0.gather(1, col_arg)
        rb, ri = torch.nonzero(row_ok, as_tuple=True)
        cb, cj = torch.nonzero(col_ok, as_tuple=True)
        b = torch.cat([rb, cb])
        i = torch.cat([ri, col_arg[cb, cj]])
        j = torch.cat([row_arg[rb, ri], cj])
        conf = torch.cat([row_log[rb, ri], col_log[cb, cj]]).exp()
        key, inverse = torch.unique(((b * L0 + i) * L1 + j), return_inverse=True)
        # one confidence per unique match (a mutual match appears once from each side, with the same value)
        out_conf = conf.new_empty(key.numel()).scatter_(0, inverse, conf)
        return (torch.div(key, L0 * L1, rounding_mode="floor"), torch.div(key, L1, rounding_mode="floor") % L0,
                key % L1, out_conf)

    def select(self, conf: torch.Tensor, keep0: torch.Tensor, keep1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Matches ``(b_ids, i_ids, j_ids, mconf)`` from a confidence matrix ``(B, L0, L1)``.

        Args:
            keep0, keep1: ``(B, L)`` cells allowed to match (valid and away from the border).
        """
        with torch.no_grad():
            row_max, row_arg = conf.max(dim=2)  # (B, L0)
            col_max, col_arg = conf.max(dim=1)  # (B, L1)
            if self.rule == "mutual":
                # candidate i -> j = argmax of row i; keep it when i is also the argmax of column j
                B, L0 = row_arg.shape
                b_all = torch.arange(B, device=conf.device)[:, None].expand(B, L0)
                i_all = torch.arange(L0, device=conf.device)[None].expand(B, L0)
                keep = (col_arg.gather(1, row_arg) == i_all) & (row_max > self.threshold) & keep0
                keep &= keep1.gather(1, row_arg)
                b_ids, i_ids, j_ids = b_all[keep], i_all[keep], row_arg[keep]
            else:
                mask = (conf > self.threshold) & keep0[:, :, None] & keep1[:, None, :]
                mask &= (conf == row_max[:, :, None]) | (conf == col_max[:, None, :])
                b_ids, i_ids, j_ids = torch.nonzero(mask, as_tuple=True)
        return b_ids, i_ids, j_ids, conf[b_ids, i_ids, j_ids]

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, data: dict) -> None:
        """Match ``F_match`` tokens and write the results into ``data``.

        Args:
            f0, f1: ``(B, L, C_match)`` on the common coarse grid ``data['hw_c']``.
            data: reads ``hw_c``, ``valid_hw0_c``, ``valid_hw1_c`` ``(B, 2)``, optional ``mask_c0``, ``mask_c1``
                ``(B, L)`` bool, ``keep_conf_matrix`` (build ``conf_matrix`` at inference too) and in training the
                GT keys ``spv_b_ids``/``spv_i_ids``/``spv_j_ids``.
        Writes:
            ``conf_matrix (B, L0, L1)`` (in training, with gradients, or when ``keep_conf_matrix``);
            ``b_ids, i_ids, j_ids, mconf (N,)``; ``mkpts0_c, mkpts1_c (N, 2)`` pixel
            centres of the matched cells. In training the fine stage runs on (a sample of) the GT matches, given as
            ``b_ids/i_ids/j_ids`` with ``fine_on_gt = True``.
        """
        h, w = data["hw_c"]
        stride = data["stride_c"]
        valid0 = border_mask(data["valid_hw0_c"], h, w, 0)
        valid1 = border_mask(data["valid_hw1_c"], h, w, 0)
        if "mask_c0" in data:
            valid0 = valid0 & data["mask_c0"]
        if "mask_c1" in data:
            valid1 = valid1 & data["mask_c1"]
        keep0 = border_mask(data["valid_hw0_c"], h, w, self.border) & valid0
        keep1 = border_mask(data["valid_hw1_c"], h, w, self.border) & valid1
        if self.covisibility_threshold > 0 and "covisibility0" in data:
            # the geometry stream's covisibility head (trained by L_geom) vetoes cells it sees no partner for
            keep0 = keep0 & (data["covisibility0"] > self.covisibility_threshold)
            keep1 = keep1 & (data["covisibility1"] > self.covisibility_threshold)
        B, L0, L1 = f0.shape[0], f0.shape[1], f1.shape[1]
        one_pass = B * L0 * L1 * f0.element_size() <= self.dense_budget
        if self.training or torch.is_grad_enabled() or data.get("keep_conf_matrix", False):
            conf = self.confidence(f0, f1, valid0, valid1)
            data["conf_matrix"] = conf
            b_ids, i_ids, j_ids, mconf = self.select(conf, keep0, keep1)
        elif one_pass:  # the matrix fits the budget: one similarity product, built in place
            b_ids, i_ids, j_ids, mconf = self.select(self.confidence(f0, f1, valid0, valid1), keep0, keep1)
        else:
            b_ids, i_ids, j_ids, mconf = self.select_streamed(f0, f1, valid0, valid1, keep0, keep1)
        data.update(pred_b_ids=b_ids, pred_i_ids=i_ids, pred_j_ids=j_ids, pred_mconf=mconf)
        data["fine_on_gt"] = False
        if self.training and "spv_b_ids" in data:
            n_gt = data["spv_b_ids"].numel()
            pick = torch.randperm(n_gt, device=f0.device)[: self.train_fine_samples]
            b_ids, i_ids, j_ids = data["spv_b_ids"][pick], data["spv_i_ids"][pick], data["spv_j_ids"][pick]
            mconf = conf[b_ids, i_ids, j_ids]
            data["fine_on_gt"] = True
        data.update(
            b_ids=b_ids, i_ids=i_ids, j_ids=j_ids, mconf=mconf,
            mkpts0_c=cell_centres(i_ids, w, stride), mkpts1_c=cell_centres(j_ids, w, stride),
        )
