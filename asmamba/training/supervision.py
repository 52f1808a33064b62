"""Coarse ground truth of the LoFTR family, from depth + pose or from a homography (per item, by ``gt_type``).

Every coarse cell centre of one image is warped into the other image; a warp that leaves the image, hits
invalid depth, fails the depth-consistency test or lands in padding is dropped, and the rest are assigned to
the nearest coarse cell. LoFTR keeps a pair only when the reverse warp of that cell comes back (``"mutual"``);
JamMa keeps the assignments of both directions (``"union"``).

Cell ``(c, r)`` of a grid with stride ``s`` has its centre at pixel ``(s*c + (s-1)/2, s*r + (s-1)/2)``
(``(8c+3.5, 8r+3.5)``); cells are numbered row-major, ``i = r * wc + c``.
"""

from __future__ import annotations

from typing import Any

import torch

from asmamba.training.data.common import GT_DEPTH, GT_HOMOGRAPHY
from asmamba.training.geometry import coarse_cell_centres, sample_nearest, warp_points_depth, warp_points_homography

RULES = ("mutual", "union")


def _warp(
    batch: dict, pts: torch.Tensor, gt_type: torch.Tensor, forward: bool, hw_target: tuple[int, int],
    depth_consistency: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``pts`` (B, N, 2) of the source image (image 0 if ``forward``) into the target image, choosing the
    depth or homography warp per item. Returns valid (B, N) and warped points (B, N, 2)."""
    B, N, _ = pts.shape
    valid = torch.zeros(B, N, dtype=torch.bool, device=pts.device)
    warped = torch.zeros_like(pts)
    src, dst = ("0", "1") if forward else ("1", "0")
    depth_items = torch.nonzero(gt_type == GT_DEPTH).flatten()
    if len(depth_items):
        T = batch["T_0to1"] if forward else batch.get("T_1to0")
        if T is None:
            T = torch.linalg.inv(batch["T_0to1"])
        v, w = warp_points_depth(
            pts[depth_items], batch[f"depth{src}"][depth_items], batch[f"depth{dst}"][depth_items],
            T[depth_items], batch[f"K{src}"][depth_items], batch[f"K{dst}"][depth_items], depth_consistency,
        )
        valid[depth_items], warped[depth_items] = v, w
    hom_items = torch.nonzero(gt_type == GT_HOMOGRAPHY).flatten()
    if len(hom_items):
        H = batch["H_0to1"][hom_items].double()
        H = H if forward else torch.linalg.inv(H)
        v, w = warp_points_homography(pts[hom_items], H, hw_target)
        valid[hom_items], warped[hom_items] = v, w
    unknown = ~((gt_type == GT_DEPTH) | (gt_type == GT_HOMOGRAPHY))
    if unknown.any():
        raise ValueError(f"gt_type must be {GT_DEPTH} (depth) or {GT_HOMOGRAPHY} (homography), got {gt_type.tolist()}")
    if f"mask{src}" in batch:
        valid &= sample_nearest(batch[f"mask{src}"].float(), pts)[0] > 0.5
    if f"mask{dst}" in batch:
        valid &= sample_nearest(batch[f"mask{dst}"].float(), warped)[0] > 0.5
    warped = torch.where(torch.isfinite(warped), warped, torch.zeros_like(warped))
    return valid, warped


def _nearest_cell(
    pts: torch.Tensor, hc: int, wc: int, stride: int, border: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse-grid coordinates ``(x - o) / stride`` (B, N, 2), nearest cell index (B, N) and whether that cell
    exists and is at least ``border`` cells from the grid's edge (B, N)."""
    offset = (stride - 1) / 2.0
    flow = (pts - offset) / stride
    cell = flow.round().long()
    c, r = cell[..., 0], cell[..., 1]
    ok = (c >= border) & (c < wc - border) & (r >= border) & (r < hc - border)
    index = torch.where(ok, r * wc + c, torch.zeros_like(c))
    return flow, index, ok


def fundamental_from_pose(K0: torch.Tensor, K1: torch.Tensor, T_0to1: torch.Tensor) -> torch.Tensor:
    """``F`` (B, 3, 3) with ``x1^T F x0 = 0`` for pixels (centres at integers) of one 3D point:
    ``F = K1^-T [t]_x R K0^-1`` for ``T_0to1 = [R | t]``."""
    T = T_0to1.double()
    R, t = T[:, :3, :3], T[:, :3, 3]
    zero = torch.zeros_like(t[:, 0])
    tx = torch.stack([
        torch.stack([zero, -t[:, 2], t[:, 1]], -1),
        torch.stack([t[:, 2], zero, -t[:, 0]], -1),
        torch.stack([-t[:, 1], t[:, 0], zero], -1),
    ], 1)
    return torch.linalg.inv(K1.double()).transpose(1, 2) @ tx @ R @ torch.linalg.inv(K0.double())


def epipolar_distance_to_lines(pts0: torch.Tensor, pts1: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """``(B, N0, N1)``: distance in image-1 pixels of every ``pts1`` (B, N1, 2) from the epipolar line ``F x0`` of
    every ``pts0`` (B, N0, 2)."""
    ones0 = torch.ones_like(pts0[..., :1])
    lines = torch.cat([pts0, ones0], -1).double() @ F.transpose(1, 2)  # (B, N0, 3): a x + b y + c = 0 in image 1
    ones1 = torch.ones_like(pts1[..., :1])
    num = lines @ torch.cat([pts1, ones1], -1).double().transpose(1, 2)  # (B, N0, N1)
    norm = lines[..., :2].norm(dim=-1).clamp(min=1e-12)
    return (num.abs() / norm[..., None]).float()


def _interior(hc: int, wc: int, border: int, device: torch.device) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(hc, device=device), torch.arange(wc, device=device), indexing="ij")
    return ((c >= border) & (c < wc - border) & (r >= border) & (r < hc - border)).reshape(-1)


@torch.no_grad()
def compute_supervision_coarse(
    batch: dict[str, Any],
    stride: int = 8,
    rule: str = "mutual",
    border: int = 0,
    depth_consistency: float = 0.2,
    dense: bool = True,
    epipolar_margin: float = 12.0,
) -> dict[str, Any]:
    """Add the coarse ground truth to a batch (in place; the batch is also returned).

    Reads ``image0`` (B, 1, H0, W0), ``image1`` (B, 1, H1, W1), ``gt_type`` (B,) (all depth when absent),
    optional ``mask0``/``mask1`` (B, H, W); for depth items ``depth0``, ``depth1``, ``K0``, ``K1``, ``T_0to1``
    (``T_1to0``); for homography items ``H_0to1`` - see :mod:`asmamba.training.data.common`.

    Args:
        stride: coarse stride; the grids are ``(H0 // stride, W0 // stride)`` and ``(H1 // stride, W1 // stride)``.
        rule: ``"mutual"`` (LoFTR: a pair needs the loop-back) or ``"union"`` (JamMa: both directions' pairs).
        border: cells closer than ``border`` cells to the grid's edge get no ground truth (0 = none dropped).
        depth_consistency: relative depth error above which a depth warp counts as occluded.
        dense: also build ``conf_matrix_gt`` (B, L0, L1) and ``spv_supervised`` - large at high resolution.
        epipolar_margin: for sparse-depth items (``sparse_gt``), a cell pair counts as a certain negative when image
            1's cell centre lies farther than this (pixels) from the epipolar line of image 0's cell centre. The
            matched cell of a true correspondence lies within half a cell diagonal (5.7 px at stride 8) of it; the
            rest of the margin absorbs camera errors.

    Adds:
        ``spv_pt0_i`` (B, L0, 2), ``spv_pt1_i`` (B, L1, 2): cell centres in pixels;
        ``spv_w_pt0_i`` (B, L0, 2): image-0 centres warped into image-1 pixels (0 where not computable);
        ``spv_valid0`` (B, L0) bool: warp valid (covisible, depth-consistent, in a cell of image 1);
        ``spv_w_pt1_i``, ``spv_valid1``: the same from image 1 into image 0;
        ``spv_flow0`` (B, L0, 2): ``spv_w_pt0_i`` in image 1's coarse-grid units, ``(x - 3.5) / 8``;
        ``spv_flow1`` (B, L1, 2): the reverse;
        ``conf_matrix_gt`` (B, L0, L1) float 0/1 (when ``dense``);
        ``spv_supervised`` (B, L0, L1) bool (when ``dense``): the pairs the ground truth decides - all of them for
        dense items; for sparse items the rows and columns holding a GT match and the epipolar negatives;
        ``spv_sparse`` (B,) bool: the sparse items;
        ``spv_b_ids``, ``spv_i_ids``, ``spv_j_ids`` (M,) long: the ground-truth matches, sorted.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if stride <= 0 or border < 0:
        raise ValueError(f"stride must be positive and border non-negative, got stride={stride}, border={border}")
    image0, image1 = batch["image0"], batch["image1"]
    B, _, H0, W0 = image0.shape
    _, _, H1, W1 = image1.shape
    device = image0.device
    hc0, wc0, hc1, wc1 = H0 // stride, W0 // stride, H1 // stride, W1 // stride
    if min(hc0, wc0, hc1, wc1) == 0:
        raise ValueError(f"images {H0}x{W0} and {H1}x{W1} are smaller than one coarse cell of stride {stride}")
    gt_type = batch.get("gt_type")
    gt_type = torch.full((B,), GT_DEPTH, device=device) if gt_type is None else torch.as_tensor(gt_type, device=device)

    pt0 = coarse_cell_centres(hc0, wc0, stride, device)[None].expand(B, -1, -1).contiguous()
    pt1 = coarse_cell_centres(hc1, wc1, stride, device)[None].expand(B, -1, -1).contiguous()
    valid0, w_pt0 = _warp(batch, pt0, gt_type, True, (H1, W1), depth_consistency)
    valid1, w_pt1 = _warp(batch, pt1, gt_type, False, (H0, W0), depth_consistency)
    flow0, nn1, ok0 = _nearest_cell(w_pt0, hc1, wc1, stride, border)
    flow1, nn0, ok1 = _nearest_cell(w_pt1, hc0, wc0, stride, border)
    valid0 &= ok0 & _interior(hc0, wc0, border, device)[None]
    valid1 &= ok1 & _interior(hc1, wc1, border, device)[None]

    L0, L1 = hc0 * wc0, hc1 * wc1
    b0 = torch.arange(B, device=device)[:, None].expand(B, L0)
    i0 = torch.arange(L0, device=device)[None].expand(B, L0)
    if rule == "mutual":
        back = torch.gather(nn0, 1, nn1)  # cell of image 0 that the matched image-1 cell warps back to
        back_valid = torch.gather(valid1, 1, nn1)
        keep = valid0 & back_valid & (back == i0)
        pairs = torch.stack([b0[keep], i0[keep], nn1[keep]], dim=1)
    else:
        b1 = torch.arange(B, device=device)[:, None].expand(B, L1)
        j1 = torch.arange(L1, device=device)[None].expand(B, L1)
        forward = torch.stack([b0[valid0], i0[valid0], nn1[valid0]], 1)
        backward = torch.stack([b1[valid1], nn0[valid1], j1[valid1]], 1)
        pairs = torch.cat([forward, backward])
    keys = torch.unique((pairs[:, 0] * L0 + pairs[:, 1]) * L1 + pairs[:, 2])  # sorted, duplicates removed
    b_ids, rem = keys // (L0 * L1), keys % (L0 * L1)
    i_ids, j_ids = rem // L1, rem % L1

    out = {
        "spv_pt0_i": pt0,
        "spv_pt1_i": pt1,
        "spv_w_pt0_i": w_pt0,
        "spv_valid0": valid0,
        "spv_w_pt1_i": w_pt1,
        "spv_valid1": valid1,
        "spv_flow0": flow0,
        "spv_flow1": flow1,
        "spv_b_ids": b_ids,
        "spv_i_ids": i_ids,
        "spv_j_ids": j_ids,
    }
    # a new tensor: the batch's own sparse_gt is not modified
    sparse = torch.as_tensor(batch.get("sparse_gt", False), device=device).bool() & (gt_type == GT_DEPTH)
    out["spv_sparse"] = sparse
    if dense:
        conf = torch.zeros(B, L0, L1, device=device)
        conf[b_ids, i_ids, j_ids] = 1.0
        out["conf_matrix_gt"] = conf
        supervised = torch.ones(B, L0, L1, dtype=torch.bool, device=device)
        items = torch.nonzero(sparse).flatten()
        if len(items):
            F = fundamental_from_pose(batch["K0"][items], batch["K1"][items], batch["T_0to1"][items])
            far = epipolar_distance_to_lines(pt0[items], pt1[items], F) > epipolar_margin
            gt = conf[items] > 0.5
            supervised[items] = far | gt.any(2, keepdim=True) | gt.any(1, keepdim=True)
        out["spv_supervised"] = supervised
    batch.update(out)
    return batch


def warp_matched_points(
    data: dict, b: torch.Tensor, pts: torch.Tensor, depth_consistency: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp image-0 points of given batch items into image 1 (depth + pose or homography, per item).

    Args:
        data: the batch (``gt_type``, ``depth0/1``, ``K0/1``, ``T_0to1`` or ``H_0to1``, optional masks).
        b: ``(M,)`` batch index of each row; pts: ``(M, K, 2)`` image-0 pixels.
    Returns:
        valid ``(M, K)`` bool and warped ``(M, K, 2)`` image-1 pixels (0 where not computable).
    """
    B = data["image0"].shape[0]
    M, K, _ = pts.shape
    device = pts.device
    gt_type = data.get("gt_type")
    gt_type = torch.full((B,), GT_DEPTH, device=device) if gt_type is None else torch.as_tensor(gt_type, device=device)
    counts = torch.bincount(b, minlength=B)
    n = int(counts.max()) * K if M else 0
    order = torch.argsort(b, stable=True)
    # slot of each row inside its item: rows of item k are laid out one after another
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(b)
    slot[order] = torch.arange(M, device=device) - starts[b[order]]
    flat = pts.new_zeros(B, max(n, 1), 2)
    index = (slot[:, None] * K + torch.arange(K, device=device)[None]).reshape(-1)  # (M*K,)
    items = b[:, None].expand(M, K).reshape(-1)
    flat[items, index] = pts.reshape(-1, 2)
    valid, warped = _warp(data, flat, gt_type, True, tuple(data["image1"].shape[-2:]), depth_consistency)
    return valid[items, index].reshape(M, K), warped[items, index].reshape(M, K, 2)
