"""Validation during training, per data source, for checkpoint selection on held-out *training* scenes.

Every validation pair goes through the same inference path users get (:class:`asmamba.ASMamba`, sharing the trainer's
network). Scores per source:

- pairs with a pose (synthetic and SfM scenes): relative-pose AUC@5/10/20 (poselib LO-RANSAC, 0.5 px, the evaluation
  protocol) and the matching precision (symmetric epipolar distance below 5e-4 in normalised coordinates);
- planar pairs: the fraction of matches within 3 px of the exact homography and the AUC@3/5/10 px of the mean corner
  error of a RANSAC homography.

``score`` (the selection criterion) is the mean over sources of pose AUC@10 (posed sources) and homography AUC@5
(planar), so no single source decides alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .data.common import GT_HOMOGRAPHY
from .evaluation.metrics import (
    error_auc,
    estimate_homography,
    estimate_pose_poselib,
    homography_error,
    image_corners,
    matching_precision,
    relative_pose_error,
    symmetric_epipolar_distance,
    warp_points,
)

POSE_THRESHOLDS = (5.0, 10.0, 20.0)
HOMOGRAPHY_THRESHOLDS = (3.0, 5.0, 10.0)


def _valid_hw(mask: Optional[torch.Tensor], image: torch.Tensor) -> tuple[int, int]:
    """(h, w) of the unpadded top-left part (the whole image without a mask)."""
    if mask is None or bool(mask.all()):
        return int(image.shape[-2]), int(image.shape[-1])
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows.max()) + 1, int(cols.max()) + 1


def score_item(matcher: torch.nn.Module, item: Mapping[str, Any]) -> dict[str, float]:
    """Match one dataset item (cropped to its valid area) and score it against its ground truth."""
    h0, w0 = _valid_hw(item.get("mask0"), item["image0"])
    h1, w1 = _valid_hw(item.get("mask1"), item["image1"])
    image0 = item["image0"][None, :, :h0, :w0]
    image1 = item["image1"][None, :, :h1, :w1]
    with torch.no_grad():
        out = matcher({"image0": image0, "image1": image1})
    k0 = out["keypoints0"].double().cpu().numpy()
    k1 = out["keypoints1"].double().cpu().numpy()
    if int(item.get("gt_type", 0)) == GT_HOMOGRAPHY:
        H = item["H_0to1"].double().numpy()
        err = np.linalg.norm(warp_points(H, k0) - k1, axis=1) if len(k0) else np.zeros(0)
        est = estimate_homography(k0, k1, 3.0) if len(k0) >= 4 else None
        corner = homography_error(None if est is None else est[0], H, image_corners(w0, h0))
        return {"matches": float(len(k0)), "within3": float((err <= 3.0).mean()) if len(err) else 0.0,
                "corner_error": corner}
    K0, K1 = item["K0"].double().numpy(), item["K1"].double().numpy()
    T = item["T_0to1"].double().numpy()
    epi = symmetric_epipolar_distance(k0, k1, T, K0, K1) if len(k0) else np.zeros(0)
    est = estimate_pose_poselib(k0, k1, K0, K1, 0.5, (w0, h0), (w1, h1)) if len(k0) >= 5 else None
    pose_err = float("inf") if est is None else relative_pose_error(T, est[0], est[1])[2]
    return {"matches": float(len(k0)), "precision": matching_precision(epi, 5e-4), "pose_error": pose_err}


def summarise(records: Mapping[str, list[dict[str, float]]]) -> dict[str, float]:
    """Per-source metrics (``<source>/<metric>``) and the selection ``score``."""
    out: dict[str, float] = {}
    criteria = []
    for source, rows in sorted(records.items()):
        out[f"{source}/pairs"] = float(len(rows))
        out[f"{source}/matches"] = float(np.mean([r["matches"] for r in rows]))
        if "pose_error" in rows[0]:
            aucs = error_auc([r["pose_error"] for r in rows], POSE_THRESHOLDS)
            for t, a in zip(POSE_THRESHOLDS, aucs):
                out[f"{source}/pose_auc@{t:g}"] = 100.0 * a
            out[f"{source}/precision"] = 100.0 * float(np.mean([r["precision"] for r in rows]))
            criteria.append(100.0 * aucs[1])
        else:
            aucs = error_auc([r["corner_error"] for r in rows], HOMOGRAPHY_THRESHOLDS)
            for t, a in zip(HOMOGRAPHY_THRESHOLDS, aucs):
                out[f"{source}/hom_auc@{t:g}px"] = 100.0 * a
            out[f"{source}/within3"] = 100.0 * float(np.mean([r["within3"] for r in rows]))
            criteria.append(100.0 * aucs[1])
    out["score"] = float(np.mean(criteria)) if criteria else math.nan
    return out


def validate(matcher: torch.nn.Module, dataset: Dataset, max_pairs: Optional[int] = None,
             progress: bool = False) -> dict[str, float]:
    """Score ``matcher`` on the first ``max_pairs`` items of ``dataset`` (all by default), grouped by ``source``."""
    from tqdm import tqdm

    n = len(dataset) if max_pairs is None else min(len(dataset), int(max_pairs))
    records: dict[str, list[dict[str, float]]] = defaultdict(list)
    for index in tqdm(range(n), desc="validate", disable=not progress, leave=False):
        item = dataset[index]
        records[str(item.get("source", "all"))].append(score_item(matcher, item))
    return summarise(records)
