"""Homography evaluation of any kornia-contract matcher on HPatches-, VGG- and CMP-layout folders.

Layouts (a folder may also hold several such sequences as sub-folders):

- HPatches: ``1.ppm .. 6.ppm`` and ``H_1_k`` (3x3 text, image 1 -> image k).
- CMP ``homogr``: ``1.png 2.png``, ``H_1_2`` and ``points_1.txt`` (GT points clicked in image 1).
- VGG / Oxford: ``img1.ppm .. imgK.ppm`` and ``H1tokp``.

A pair is scored by the mean error (pixels of the original image k) of the GT points of image 1 - ``points_1.txt``
when present, else the four image corners (HPatches' corner error) - mapped by the estimated and the true
homography. Homographies are estimated at the resolution the matcher saw (RANSAC threshold in those pixels)
and mapped back to the original resolution, with OpenCV RANSAC and with poselib LO-RANSAC.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from asmamba.io import IMAGE_SUFFIXES, load_image
from asmamba.training.evaluation.common import check_matcher, median, run_matcher, summarise_records, summary_markdown
from asmamba.training.evaluation.metrics import (
    HOMOGRAPHY_THRESHOLDS,
    estimate_homography,
    homography_error,
    image_corners,
)
from asmamba.training.geometry import resize_transform

PathLike = Union[str, os.PathLike]


@dataclass
class HomographyPair:
    """One evaluation pair: ``H`` (3, 3) maps ``path0``'s pixels to ``path1``'s (original resolution);
    ``points`` (N, 2) are GT points of image 0 (None: use its corners)."""

    name: str
    path0: Path
    path1: Path
    H: np.ndarray
    points: Optional[np.ndarray] = None


def read_matrix(path: PathLike, shape: tuple[int, ...] = (3, 3)) -> np.ndarray:
    """A whitespace-separated text matrix, checked against ``shape``.

    Raises:
        FileNotFoundError: missing file. ValueError: unreadable or of the wrong shape.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ground-truth file {str(p)!r} does not exist")
    try:
        m = np.loadtxt(p, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"ground-truth file {str(p)!r} is not a matrix of numbers: {err}") from None
    if shape and m.shape != shape:
        raise ValueError(f"ground-truth file {str(p)!r} holds a {m.shape} matrix, expected {shape}")
    return m


def _image_named(folder: Path, stem: str) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _sequence_pairs(folder: Path, prefix: str) -> list[HomographyPair]:
    """Pairs of one sequence folder in either layout (empty when the folder holds neither)."""
    pairs = []
    hpatches = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"H_1_(\d+)", p.name)) and p.is_file()
    )
    vgg = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"H1to(\d+)p", p.name)) and p.is_file()
    )
    for entries, stem0, stem_k in ((hpatches, "1", "{}"), (vgg, "img1", "img{}")):
        if not entries:
            continue
        path0 = _image_named(folder, stem0)
        if path0 is None:
            raise FileNotFoundError(
                f"{str(folder)!r} has homography files but no image {stem0}.* (tried {IMAGE_SUFFIXES})"
            )
        points_file = folder / "points_1.txt"
        points = read_matrix(points_file, ()) if points_file.is_file() else None
        if points is not None and (points.ndim != 2 or points.shape[1] != 2):
            raise ValueError(f"GT points file {str(points_file)!r} must have two columns, got shape {points.shape}")
        for k, h_file in entries:
            path1 = _image_named(folder, stem_k.format(k))
            if path1 is None:
                raise FileNotFoundError(
                    f"{str(folder)!r}: {h_file.name} exists but image {stem_k.format(k)}.* does not"
                )
            name = f"{prefix}{path0.name}-{path1.name}"
            pairs.append(HomographyPair(name, path0, path1, read_matrix(h_file), points))
    return pairs


def find_homography_pairs(folder: PathLike) -> list[HomographyPair]:
    """Every pair of a sequence folder, or of its sequence sub-folders (one level down).

    Raises:
        FileNotFoundError: the folder does not exist. ValueError: no sequence in a known layout.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"homography folder {str(root)!r} does not exist or is not a directory")
    pairs = _sequence_pairs(root, "")
    if not pairs:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            pairs += _sequence_pairs(sub, f"{sub.name}/")
    if not pairs:
        raise ValueError(
            f"no homography sequence in {str(root)!r}: expected H_1_k + 1.*, k.* (HPatches/CMP) or "
            "H1tokp + img1.*, imgk.* (VGG), in the folder or its sub-folders"
        )
    return pairs


def _to_original(H_net: Optional[np.ndarray], scale0: np.ndarray, scale1: np.ndarray) -> Optional[np.ndarray]:
    """A homography between resized images -> between the original images."""
    if H_net is None:
        return None
    return np.linalg.inv(resize_transform(scale1)) @ H_net @ resize_transform(scale0)


def _estimate_poselib(k0: np.ndarray, k1: np.ndarray, threshold: float) -> Optional[np.ndarray]:
    import poselib

    if len(k0) < 4:
        return None
    H, info = poselib.estimate_homography(k0, k1, {"max_reproj_error": float(threshold)}, {})
    H = np.asarray(H, np.float64)
    return H if info.get("num_inliers", 0) >= 4 and np.isfinite(H).all() else None


def evaluate_homography(
    matcher: nn.Module,
    dirs: Union[PathLike, Sequence[PathLike]],
    *,
    resize_max: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    ransac_threshold: float = 3.0,
    max_pairs: Optional[int] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Homography AUC at 3/5/10 px (OpenCV RANSAC and poselib LO-RANSAC), matches and latency per folder.

    Args:
        matcher: kornia-contract ``nn.Module`` (already on ``device``).
        dirs: sequence folders or folders of sequences (see the module docstring).
        resize_max: long-side limit of the images given to the matcher (None: original size).
        ransac_threshold: inlier threshold in pixels at the matcher's resolution.
        max_pairs: at most this many pairs per folder.
    Returns:
        ``{"task": "homography", "protocol": {...}, "datasets": [summary, ...]}``, a summary holding
        ``auc_opencv`` / ``auc_poselib`` (percent), ``median_error_opencv`` (px), ``mean_matches``,
        ``median_latency_ms`` and ``per_pair`` records.
    """
    matcher = check_matcher(matcher)
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not dirs:
        raise ValueError("no homography folder given")
    datasets = []
    for folder in dirs:
        pairs = find_homography_pairs(folder)[:max_pairs]
        name = Path(folder).name
        records = []
        for pair in tqdm(pairs, desc=f"homography {name}", disable=not progress):
            im0, scale0 = load_image(pair.path0, grayscale=True, max_side=resize_max)
            im1, scale1 = load_image(pair.path1, grayscale=True, max_side=resize_max)
            k0, k1, _, latency = run_matcher(matcher, im0, im1, device=device)
            if pair.points is not None:
                points = pair.points
            else:
                # original size: load_image's scale is new_size / original_size exactly
                points = image_corners(round(im0.shape[-1] / scale0[0]), round(im0.shape[-2] / scale0[1]))
            opencv = estimate_homography(k0, k1, ransac_threshold)
            estimates = {
                "opencv": _to_original(opencv[0] if opencv is not None else None, scale0, scale1),
                "poselib": _to_original(_estimate_poselib(k0, k1, ransac_threshold), scale0, scale1),
            }
            record: dict[str, Any] = {"pair": pair.name, "matches": int(len(k0)), "latency_ms": latency}
            for solver, H in estimates.items():
                record[f"err_{solver}"] = homography_error(H, pair.H, points)
            records.append(record)
        summary = summarise_records(name, records, HOMOGRAPHY_THRESHOLDS, lambda r, solver: r[f"err_{solver}"])
        summary["median_error_opencv"] = median([r["err_opencv"] for r in records])
        datasets.append(summary)
    protocol = {
        "resize_max": resize_max, "device": str(device), "ransac_threshold_px": ransac_threshold,
        "thresholds_px": list(HOMOGRAPHY_THRESHOLDS), "error": "mean error of points_1.txt, else of image corners, "
        "in original pixels", "solvers": {"opencv": "cv2.findHomography RANSAC", "poselib": "poselib LO-RANSAC"},
    }
    return {"task": "homography", "protocol": protocol, "datasets": datasets}


def homography_markdown(results: dict[str, Any]) -> str:
    """The summaries of :func:`evaluate_homography` as a markdown table (errors in original pixels)."""
    extra = [("median err px", "median_error_opencv")]
    return summary_markdown(results, HOMOGRAPHY_THRESHOLDS, "px", extra, "Homography (errors in original pixels)")
