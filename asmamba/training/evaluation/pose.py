"""Relative-pose evaluation of any kornia-contract matcher.

Sources: SuperGlue-format ``pairs.txt`` files (``name0 name1 rot0 rot1 K0 K1 T_0to1``; images read from
``<pairs dir>/images`` when it exists, else the pairs file's folder) and datasets of the shared item layout
(:class:`~asmamba.training.data.megadepth.MegaDepthScene`, :class:`~asmamba.training.data.scannet.ScanNetPairs`
or a ``ConcatDataset`` of them; items come at network resolution with ``K`` already scaled).

Each pair is scored with both solvers - OpenCV RANSAC on K-normalised points (LoFTR / ASpanFormer) and poselib
LO-RANSAC (JamMa) - at the same pixel threshold, measured at the resolution the matcher saw.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from asmamba.io import load_image, read_pose_pairs
from asmamba.training.evaluation.common import check_matcher, run_matcher, summarise_records, summary_markdown
from asmamba.training.evaluation.metrics import (
    POSE_THRESHOLDS,
    estimate_pose_opencv,
    estimate_pose_poselib,
    matching_precision,
    relative_pose_error,
    symmetric_epipolar_distance,
)
from asmamba.training.geometry import scale_intrinsics

PathLike = Union[str, os.PathLike]
PoseSource = Union[PathLike, Dataset]

#: default precision threshold for pairs files (MegaDepth's; ScanNet datasets bring their own 5e-4)
DEFAULT_EPIPOLAR_THRESHOLD = 1e-4


def _pairs_file_items(path: Path, resize_max: Optional[int], image_dir: Optional[PathLike]):
    """Yield ``(name, image0, image1, mask0, mask1, K0, K1, T_0to1)`` per line of a pairs file (masks None),
    images resized so their long side is at most ``resize_max`` and K rescaled to match."""
    pairs = read_pose_pairs(path)
    if image_dir is not None:
        folder = Path(image_dir)
    else:
        folder = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    for pair in pairs:
        if pair.rot0 or pair.rot1:
            raise ValueError(f"{path}: pair {pair.name0} {pair.name1} asks for image rotation, which is not supported")
        image0, scale0 = load_image(folder / pair.name0, grayscale=True, max_side=resize_max)
        image1, scale1 = load_image(folder / pair.name1, grayscale=True, max_side=resize_max)
        yield (
            f"{pair.name0} {pair.name1}", image0, image1, None, None,
            scale_intrinsics(pair.K0, scale0), scale_intrinsics(pair.K1, scale1), pair.T_0to1,
        )


def _valid_size(mask: torch.Tensor) -> tuple[int, int]:
    """``(w, h)`` of the non-padded part of a bottom-right padded image."""
    cols, rows = torch.nonzero(mask.any(0)).flatten(), torch.nonzero(mask.any(1)).flatten()
    return (int(cols.max()) + 1 if len(cols) else mask.shape[1], int(rows.max()) + 1 if len(rows) else mask.shape[0])


def _dataset_items(dataset: Dataset):
    for idx in range(len(dataset)):
        item = dataset[idx]
        m0, m1 = item["mask0"], item["mask1"]
        padded = not (bool(m0.all()) and bool(m1.all()))
        yield (
            item["pair_name"], item["image0"][None], item["image1"][None],
            m0[None] if padded else None, m1[None] if padded else None,
            item["K0"].double().numpy(), item["K1"].double().numpy(), item["T_0to1"].double().numpy(),
        )


def _dataset_threshold(dataset: Dataset) -> Optional[float]:
    if isinstance(dataset, ConcatDataset):
        values = {getattr(d, "epipolar_threshold", None) for d in dataset.datasets}
        return values.pop() if len(values) == 1 else None
    return getattr(dataset, "epipolar_threshold", None)


def _score_pair(
    k0: np.ndarray, k1: np.ndarray, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray, size0, size1,
    ransac_threshold: float, ransac_confidence: float, epipolar_threshold: float,
) -> dict[str, Any]:
    epi = symmetric_epipolar_distance(k0, k1, T_0to1, K0, K1) if len(k0) else np.zeros(0)
    result: dict[str, Any] = {"matches": int(len(k0)), "precision": matching_precision(epi, epipolar_threshold)}
    estimates = {
        "opencv": estimate_pose_opencv(k0, k1, K0, K1, ransac_threshold, ransac_confidence),
        "poselib": estimate_pose_poselib(k0, k1, K0, K1, ransac_threshold, size0, size1),
    }
    for solver, est in estimates.items():
        if est is None:
            err_R = err_t = err = float("inf")
            inliers = 0
        else:
            err_R, err_t, err = relative_pose_error(T_0to1, est[0], est[1])
            inliers = int(np.sum(est[2]))
        result[solver] = {"err_R": err_R, "err_t": err_t, "err": err, "inliers": inliers}
    return result


def _summarise(name: str, pairs: list[dict], epipolar_threshold: float) -> dict[str, Any]:
    summary = summarise_records(name, pairs, POSE_THRESHOLDS, lambda record, solver: record[solver]["err"])
    summary["epipolar_threshold"] = epipolar_threshold
    summary["precision"] = 100.0 * float(np.mean([p["precision"] for p in pairs])) if pairs else 0.0
    return summary


def evaluate_pose(
    matcher: nn.Module,
    sources: Union[PoseSource, Sequence[PoseSource]],
    *,
    resize_max: Optional[int] = 640,
    device: Union[str, torch.device] = "cpu",
    image_dir: Optional[PathLike] = None,
    ransac_threshold: float = 0.5,
    ransac_confidence: float = 0.99999,
    epipolar_threshold: Optional[float] = None,
    max_pairs: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Relative-pose AUC (both solvers), matching precision, matches and latency of ``matcher`` on each source.

    Args:
        matcher: kornia-contract ``nn.Module`` (already on ``device``).
        sources: pairs files and/or datasets (see the module docstring).
        resize_max: long-side limit for pairs-file images (datasets bring their own resolution).
        image_dir: image folder for pairs files (default: see the module docstring).
        ransac_threshold: inlier threshold in pixels at the evaluated resolution (both solvers).
        ransac_confidence: OpenCV RANSAC confidence.
        epipolar_threshold: precision threshold (squared symmetric epipolar distance, normalised); default: the
            dataset's own (ScanNet 5e-4, MegaDepth 1e-4), 1e-4 for pairs files.
        max_pairs: evaluate at most this many pairs per source.
        names: display names of the sources (default: the pairs file's folder / the dataset's ``name``).
    Returns:
        ``{"task": "pose", "protocol": {...}, "datasets": [summary, ...]}``; a summary holds ``auc_opencv`` and
        ``auc_poselib`` (percent at 5/10/20 degrees), ``precision`` (percent), ``mean_matches``,
        ``median_latency_ms`` and ``per_pair`` records.
    """
    matcher = check_matcher(matcher)
    if isinstance(sources, (str, os.PathLike, Dataset)):
        sources = [sources]
    if not sources:
        raise ValueError("no pose source given (pairs files or datasets)")
    if names is not None and len(names) != len(sources):
        raise ValueError(f"got {len(names)} names for {len(sources)} sources")
    datasets = []
    for k, source in enumerate(sources):
        if isinstance(source, Dataset):
            items, total = _dataset_items(source), len(source)
            thr = epipolar_threshold or _dataset_threshold(source) or DEFAULT_EPIPOLAR_THRESHOLD
            name = getattr(source, "name", type(source).__name__)
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"pose pairs file {str(path)!r} does not exist")
            items, total = _pairs_file_items(path, resize_max, image_dir), len(read_pose_pairs(path))
            thr = epipolar_threshold or DEFAULT_EPIPOLAR_THRESHOLD
            name = path.parent.name or path.stem
        name = names[k] if names is not None else name
        total = min(total, max_pairs) if max_pairs is not None else total
        records = []
        for pair_name, im0, im1, m0, m1, K0, K1, T in tqdm(
            islice(items, total), total=total, desc=f"pose {name}", disable=not progress
        ):
            k0, k1, _, latency = run_matcher(matcher, im0, im1, m0, m1, device)
            size0 = _valid_size(m0[0]) if m0 is not None else (im0.shape[-1], im0.shape[-2])
            size1 = _valid_size(m1[0]) if m1 is not None else (im1.shape[-1], im1.shape[-2])
            record = _score_pair(k0, k1, K0, K1, T, size0, size1, ransac_threshold, ransac_confidence, thr)
            record.update({"pair": pair_name, "latency_ms": latency})
            records.append(record)
        datasets.append(_summarise(name, records, thr))
    protocol = {
        "resize_max": resize_max, "device": str(device), "ransac_threshold_px": ransac_threshold,
        "ransac_confidence": ransac_confidence, "solvers": {"opencv": "cv2.findEssentialMat RANSAC (K-normalised)",
        "poselib": "poselib.estimate_relative_pose LO-RANSAC"}, "thresholds_deg": list(POSE_THRESHOLDS),
    }
    return {"task": "pose", "protocol": protocol, "datasets": datasets}


def pose_markdown(results: dict[str, Any]) -> str:
    """The summaries of :func:`evaluate_pose` as a markdown table."""
    return summary_markdown(results, POSE_THRESHOLDS, "", [("precision %", "precision")], "Relative pose")
