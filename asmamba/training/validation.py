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


def main(argv: Optional[list[str]] = None) -> int:
    """``asmamba validate WEIGHTS [key=value ...]``: the trainer's validation of any weights, with model overrides.

    For choosing an inference setting (e.g. ``coarse.covisibility_threshold``) on held-out training scenes, never on
    the evaluation scenes. Prints the per-source table and, with ``--json``, writes the row.
    """
    import json
    from pathlib import Path

    from ..clitools import ArgumentParser, add_overrides, gather_overrides
    from ..config import ConfigError
    from ..matcher import ASMamba
    from .data import build_dataset

    parser = ArgumentParser(prog="asmamba validate", description=main.__doc__.splitlines()[0])
    parser.add_argument("weights", help="a shipped weights name, 'default' or a checkpoint path")
    add_overrides(parser, "coarse.covisibility_threshold=0.3")
    parser.add_argument("--data", default="corpus_val",
                        help="configs/data preset, YAML file or inline YAML mapping of the validation pairs")
    parser.add_argument("--pairs", type=int, default=36, help="the first N pairs (the trainer's val.max_pairs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the row here")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    overrides = gather_overrides(args, "asmamba validate")
    torch.set_num_threads(args.threads)
    try:
        matcher = ASMamba(pretrained=args.weights, overrides=overrides).eval()
    except ConfigError as err:
        parser.error(str(err))
    data = args.data
    if data.lstrip().startswith("{"):  # an inline YAML mapping, as in the trainer's data.train=...
        from omegaconf import OmegaConf

        data = OmegaConf.create(data)
    row = validate(matcher, build_dataset(data), args.pairs, progress=True)
    sources = sorted({key.split("/")[0] for key in row if "/" in key})
    print(f"weights {args.weights} {' '.join(overrides)}: score {row['score']:.2f}")
    for source in sources:
        metrics = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith(source + "/")}
        print(f"  {source}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"weights": str(args.weights), "overrides": overrides, **row}, indent=1))
    return 0
