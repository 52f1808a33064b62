"""AS-Mamba's training losses (SPEC section 3, kickoff section 4.1).

``L_total = w_coarse L_coarse + w_fine L_fine + w_flow L_flow + w_geom L_geom``

Every term reads the model's intermediate dict (``ASMamba(..., return_intermediate=True)`` or
:class:`asmamba.model.network.ASMambaNet`) merged with the coarse ground truth of
:func:`asmamba.training.supervision.compute_supervision_coarse`.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F


def focal_loss_dual_softmax(
    conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
    pos_weight: float = 1.0, neg_weight: float = 1.0,
) -> torch.Tensor:
    """LoFTR's focal loss on a dual-softmax confidence matrix.

    Args:
        conf: ``(B, L0, L1)`` confidences in (0, 1); gt: ``(B, L0, L1)`` 0/1 ground truth;
        valid: ``(B, L0, L1)`` bool, pairs of non-padding cells.
    Returns:
        ``pos_weight * mean_pos(-alpha (1-p)^gamma log p) + neg_weight * mean_neg(-alpha p^gamma log(1-p))``; a term
        without any element contributes 0.
    """
    p = conf.clamp(1e-6, 1 - 1e-6)
    pos = (gt > 0.5) & valid
    neg = (gt <= 0.5) & valid
    loss = conf.new_zeros(())
    if pos.any():  # few: gather them
        pp = p[pos]
        loss = loss + pos_weight * (-alpha * (1 - pp) ** gamma * pp.log()).mean()
    n_neg = neg.sum()
    if n_neg > 0:  # almost every pair: a masked sum over the matrix, no gather of ~L^2 values
        term = p.pow(gamma) * torch.log1p(-p)
        loss = loss + neg_weight * (-alpha) * torch.where(neg, term, torch.zeros_like(term)).sum() / n_neg
    return loss


def fine_l2_with_std(expec_f: torch.Tensor, expec_f_gt: torch.Tensor) -> torch.Tensor:
    """LoFTR/ASpanFormer fine loss: L2 to the GT offset, weighted by the inverse predicted std.

    Args:
        expec_f: ``(M, 3)`` predicted normalised offset (x, y) in [-1, 1] and its std; expec_f_gt: ``(M, 2)``.
    Only matches whose GT offset lies inside the window (``max |gt| < 1``) count; the weights are detached and
    normalised to mean 1. Returns 0 without any such match.
    """
    inside = expec_f_gt.abs().max(dim=1).values < 1.0
    if not inside.any():
        return expec_f.sum() * 0.0
    pred, gt, std = expec_f[inside, :2], expec_f_gt[inside], expec_f[inside, 2]
    weight = 1.0 / std.clamp(min=1e-10)
    weight = (weight / weight.mean()).detach()
    return (((pred - gt) ** 2).sum(-1) * weight).mean()


def probabilistic_flow_loss(flow: torch.Tensor, gt_xy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ASpanFormer's flow loss ``s + exp(-s) (g - mu)^2`` averaged over valid cells and both axes.

    Args:
        flow: ``(B, h, w, 4)`` = (mu_x, mu_y, s_x, s_y), mu in the other image's coarse cells, s = log-variance;
        gt_xy: ``(B, h*w, 2)`` GT locations in the same units; valid: ``(B, h*w)`` bool.
    """
    flow = flow.flatten(1, 2)  # (B, L, 4)
    if not valid.any():
        return flow.sum() * 0.0
    mu, s = flow[valid][:, :2], flow[valid][:, 2:]
    return (s + torch.exp(-s) * (gt_xy[valid] - mu) ** 2).mean()


def geometry_loss(
    geom: torch.Tensor, gt_xy: torch.Tensor, covisible: torch.Tensor, cells: torch.Tensor, hw_other: tuple[int, int]
) -> torch.Tensor:
    """Auxiliary loss on the geometry stream: where is my match (normalised), and am I covisible at all.

    Args:
        geom: ``(B, h, w, 3)``: normalised (x, y) in [-1, 1] of the match in the other image, covisibility logit;
        gt_xy: ``(B, h*w, 2)`` GT locations in the other image's coarse cells; covisible: ``(B, h*w)`` bool;
        cells: ``(B, h*w)`` bool, the non-padding cells (covisibility is classified on all of them).
    Returns:
        ``smooth_l1(location) on covisible cells + BCE(covisibility) on all cells``.
    """
    geom = geom.flatten(1, 2)  # (B, L, 3)
    h1, w1 = hw_other
    scale = gt_xy.new_tensor([w1, h1])
    target = (gt_xy + 0.5) / scale * 2 - 1  # cell units -> [-1, 1]
    loss = F.binary_cross_entropy_with_logits(geom[..., 2][cells], covisible[cells].float()) if cells.any() \
        else geom.sum() * 0.0
    if covisible.any():
        loss = loss + F.smooth_l1_loss(geom[..., :2][covisible], target[covisible], beta=0.1)
    return loss


def fine_ground_truth(data: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """GT normalised offset ``(M, 2)`` of every fine-stage match: where image 0's cell centre truly lands in image
    1, relative to the matched cell's centre, in units of the fine window's half-width (``fine_radius_px``)."""
    b, i = data["b_ids"], data["i_ids"]
    warped = data["spv_w_pt0_i"][b, i]  # (M, 2) pixels in image 1
    return (warped - data["mkpts1_c"]) / data["fine_radius_px"]


def two_stage_fine_loss(data: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of :class:`asmamba.model.fine_matching.TwoStageFineMatching` on the GT coarse matches it ran on.

    Stage 1: negative log of the dual-softmax confidence of the true image-1 fine cell for every image-0 fine cell of
    the match whose warp lands inside image 1's block. Stage 2: L2 between the predicted sub-pixel offset and the true
    one (where the chosen image-0 point lands, relative to the chosen image-1 cell centre, in units of the radius), on
    matches whose true offset lies inside the window. Items with sparse depth (SfM) give no fine targets: their depth
    is a low-resolution splat, too coarse for pixel-level ground truth. Returns ``(stage1, stage2)``.
    """
    from .supervision import warp_matched_points

    conf = data["fine_conf"]  # (M, r*r, s*s)
    zero = conf.sum() * 0.0
    M, rr, ss = conf.shape
    if M == 0:
        return zero, zero
    b, i, j = data["b_ids"], data["i_ids"], data["j_ids"]
    r, s = int(round(rr**0.5)), int(round(ss**0.5))
    margin = (s - r) // 2
    stride_f = data["stride_f"]
    w = data["hw_c"][1]
    keep = torch.ones(M, dtype=torch.bool, device=conf.device)
    if "spv_sparse" in data:
        keep = ~data["spv_sparse"][b]
    # stage 1: every image-0 fine cell of the match
    cell0 = torch.stack([r * (i % w), r * torch.div(i, w, rounding_mode="floor")], -1)  # (M, 2) first fine cell
    a = torch.arange(rr, device=conf.device)
    sub = torch.stack([a % r, torch.div(a, r, rounding_mode="floor")], -1)  # (rr, 2)
    off = (stride_f - 1) / 2.0
    pts0 = (cell0[:, None] + sub[None]).to(data["mkpts0_f"].dtype) * stride_f + off  # (M, rr, 2)
    valid, warped = warp_matched_points(data, b, pts0)
    origin1 = torch.stack([r * (j % w), r * torch.div(j, w, rounding_mode="floor")], -1) - margin  # (M, 2)
    target = ((warped - off) / stride_f).round().long() - origin1[:, None]  # (M, rr, 2) cell in image 1's block
    inside = (target >= 0).all(-1) & (target < s).all(-1)
    ok = valid & inside & keep[:, None]
    t_index = (target[..., 1] * s + target[..., 0]).clamp(0, ss - 1)
    picked = torch.gather(conf, 2, t_index[..., None])[..., 0]  # (M, rr)
    stage1 = -picked[ok].clamp(min=1e-6).log().mean() if ok.any() else zero
    # stage 2: the chosen image-0 point
    v2, w2 = warp_matched_points(data, b, data["mkpts0_f"][:, None])
    R = data["subpixel_radius"]
    gt = (w2[:, 0] - data["mkpts1_f_coarse"]) / R  # (M, 2)
    ok2 = v2[:, 0] & keep & (gt.abs().max(-1).values < 1.0)
    stage2 = ((data["expec_f"][ok2] - gt[ok2]) ** 2).sum(-1).mean() if ok2.any() else zero
    return stage1, stage2


class ASMambaLoss(nn.Module):
    """The weighted sum of the four terms; ``forward`` returns the total and a dict of every term (detached)."""

    def __init__(self, weights: Mapping[str, float], focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 pos_weight: float = 1.0, neg_weight: float = 1.0) -> None:
        super().__init__()
        unknown = set(weights) - {"coarse", "fine", "flow", "geom"}
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; terms are coarse, fine, flow, geom")
        self.weights = {k: float(weights.get(k, 0.0)) for k in ("coarse", "fine", "flow", "geom")}
        self.focal = dict(alpha=focal_alpha, gamma=focal_gamma, pos_weight=pos_weight, neg_weight=neg_weight)

    def forward(self, data: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        h, w = data["hw_c"]
        cells0 = _cells(data, "0", h, w)
        cells1 = _cells(data, "1", h, w)
        terms: dict[str, torch.Tensor] = {}
        pair_valid = cells0[:, :, None] & cells1[:, None, :]
        if "spv_supervised" in data:  # sparse-depth items: only the pairs the ground truth decides
            pair_valid = pair_valid & data["spv_supervised"]
        terms["coarse"] = focal_loss_dual_softmax(data["conf_matrix"], data["conf_matrix_gt"], pair_valid,
                                                  **self.focal)
        if data.get("fine_on_gt") and "fine_conf" in data:  # two-stage fine matching
            stage1, stage2 = two_stage_fine_loss(data)
            terms["fine"] = stage1 + stage2
        elif data.get("fine_on_gt") and data["expec_f"].shape[0] > 0:
            gt = fine_ground_truth(data)
            # a match whose cell has no valid warp (possible under the union rule) has no fine target
            warped_ok = data["spv_valid0"][data["b_ids"], data["i_ids"]]
            gt = torch.where(warped_ok[:, None], gt, torch.full_like(gt, 2.0))
            terms["fine"] = fine_l2_with_std(data["expec_f"], gt)
        else:
            terms["fine"] = data["conf_matrix"].sum() * 0.0
        valid0, valid1 = data["spv_valid0"] & cells0, data["spv_valid1"] & cells1
        flow = data["conf_matrix"].new_zeros(())
        for flow01, flow10 in data["flows"]:
            flow = flow + probabilistic_flow_loss(flow01, data["spv_flow0"], valid0)
            flow = flow + probabilistic_flow_loss(flow10, data["spv_flow1"], valid1)
        terms["flow"] = flow
        # covisibility is known for dense ground truth only: a sparse item's cell without depth may well be covisible
        dense_items = ~data["spv_sparse"][:, None] if "spv_sparse" in data else True
        terms["geom"] = geometry_loss(data["geom0"], data["spv_flow0"], valid0, cells0 & dense_items, (h, w)) + \
            geometry_loss(data["geom1"], data["spv_flow1"], valid1, cells1 & dense_items, (h, w))
        total = sum(self.weights[k] * v for k, v in terms.items())
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["total"] = float(total.detach())
        return total, logged


def _cells(data: Mapping[str, torch.Tensor], k: str, h: int, w: int) -> torch.Tensor:
    """``(B, h*w)`` bool: the coarse cells inside image k's valid (unpadded) area and its mask."""
    from ..model.coarse_matching import border_mask

    cells = border_mask(data[f"valid_hw{k}_c"], h, w, 0)
    if f"mask_c{k}" in data:
        cells = cells & data[f"mask_c{k}"]
    return cells
