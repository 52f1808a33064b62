"""Dense matches -> per-image keypoints + index matches (the quantisation of hloc's ``match_dense``).

A detector-free matcher returns, for every pair, its own point positions. SfM needs one keypoint list per image
shared by all of that image's pairs, so that a 3D point's observations in different pairs land on the same
keypoint and tracks longer than two views form. As in hloc's ``match_dense``:

1. every matched point of an image (over all its pairs) falls in a square **cell** of ``cell_size`` pixels
   (``cell_size`` is raised to ``max_error`` if smaller); a cell yields at most one keypoint;
2. inside a cell, points are binned on a finer grid of ``int(max_error)`` pixels and each bin accumulates the
   matching scores of its points; the bin with the largest accumulated score wins and its accumulated score is
   the keypoint's score;
3. only the ``max_kps`` keypoints of highest score are kept (None = all);
4. each raw match end is assigned to the nearest kept keypoint within ``max_error`` pixels (else dropped), and
   a keypoint pair used by several raw matches keeps only the highest-scoring one; a match survives only if it is
   the best one of both its keypoints (no n-to-1 matches).

Grids are aligned on pixel boundaries: with pixel centres at integer coordinates, cell ``i`` along an axis
covers ``[i * s - 0.5, (i + 1) * s - 0.5)``. Two deliberate differences from hloc: the keypoint is placed at the
score-weighted mean of the points of the winning bin (hloc snaps it to the bin centre, a ``max_error`` grid), and
hloc's grid is offset by half a cell. ``cell_size = max_error = 0`` turns quantisation off: every distinct point
is its own keypoint (used for localization queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class QuantizationConf:
    """Options of the dense-to-keypoint quantisation (pixels of the original image)."""

    cell_size: float = 8.0
    max_error: float = 2.0
    max_kps: Optional[int] = 8192

    def __post_init__(self) -> None:
        if self.cell_size < 0 or self.max_error < 0:
            raise ValueError(f"cell_size and max_error must be >= 0, got {self.cell_size}, {self.max_error}")
        if self.max_kps is not None and self.max_kps < 1:
            raise ValueError(f"max_kps must be None or >= 1, got {self.max_kps}")


def grid_index(points: np.ndarray, size: float) -> np.ndarray:
    """``(K, 2)`` integer cell indices of ``(K, 2)`` points on a grid of ``size`` pixels aligned on pixel edges."""
    return np.floor((np.asarray(points, dtype=np.float64) + 0.5) / size).astype(np.int64)


def _first_order(first: np.ndarray) -> np.ndarray:
    """Permutation sorting groups by the index of their first member."""
    return np.argsort(first, kind="stable")


def quantize_points(
    points: np.ndarray, scores: np.ndarray, conf: QuantizationConf
) -> tuple[np.ndarray, np.ndarray]:
    """One image's keypoints from all its matched points.

    Args:
        points: ``(K, 2)`` matched positions of this image, over all its pairs.
        scores: ``(K,)`` their matching scores.

    Returns:
        ``keypoints (P, 2)`` float32 and ``keypoint_scores (P,)`` float32, ordered by first appearance of their cell
        (P <= ``conf.max_kps``).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if points.shape[0] != scores.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {scores.shape[0]} scores")
    if len(points) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    cell = max(conf.cell_size, conf.max_error)
    if cell <= 0:
        unique, first, inverse = np.unique(points, axis=0, return_index=True, return_inverse=True)
        summed = np.bincount(inverse.reshape(-1), weights=scores, minlength=len(unique))
        order = _first_order(first)
        keypoints, kp_scores = unique[order], summed[order]
    else:
        cells = grid_index(points, cell)
        bin_size = int(conf.max_error)
        if bin_size >= 1:
            bins = grid_index(points, bin_size)
        else:
            bins = np.unique(points, axis=0, return_inverse=True)[1].reshape(-1, 1)
        bin_keys, bin_first, bin_of_point = np.unique(
            np.concatenate([cells, bins], 1), axis=0, return_index=True, return_inverse=True
        )
        bin_of_point = bin_of_point.reshape(-1)
        bin_scores = np.bincount(bin_of_point, weights=scores, minlength=len(bin_keys))
        cell_first = np.unique(cells, axis=0, return_index=True)[1]
        cell_of_bin = np.unique(bin_keys[:, :2], axis=0, return_inverse=True)[1].reshape(-1)
        # per cell: highest accumulated score wins, ties go to the bin seen first
        order = np.lexsort((bin_first, -bin_scores, cell_of_bin))
        starts = np.r_[True, cell_of_bin[order][1:] != cell_of_bin[order][:-1]]
        winners = order[starts]
        winners = winners[_first_order(cell_first[cell_of_bin[winners]])]
        weights = np.maximum(scores, 1e-6)
        sum_w = np.bincount(bin_of_point, weights=weights, minlength=len(bin_keys))
        sum_x = np.bincount(bin_of_point, weights=weights * points[:, 0], minlength=len(bin_keys))
        sum_y = np.bincount(bin_of_point, weights=weights * points[:, 1], minlength=len(bin_keys))
        keypoints = np.stack([sum_x[winners], sum_y[winners]], -1) / sum_w[winners, None]
        kp_scores = bin_scores[winners]
    if conf.max_kps is not None and len(keypoints) > conf.max_kps:
        keep = np.sort(np.argsort(-kp_scores, kind="stable")[: conf.max_kps])
        keypoints, kp_scores = keypoints[keep], kp_scores[keep]
    return keypoints.astype(np.float32), kp_scores.astype(np.float32)


def assign_to_keypoints(points: np.ndarray, keypoints: np.ndarray, max_error: float) -> np.ndarray:
    """Index ``(K,)`` of the nearest of ``(P, 2)`` keypoints for each of ``(K, 2)`` points, -1 if farther than
    ``max_error`` pixels."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0 or len(keypoints) == 0:
        return np.full(len(points), -1, dtype=np.int64)
    from scipy.spatial import cKDTree

    distance, index = cKDTree(keypoints).query(points, k=1)
    index = np.asarray(index, dtype=np.int64)
    index[~(distance <= max_error + 1e-9)] = -1
    return index


def unique_matches(ids0: np.ndarray, ids1: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one keypoint matches from raw match assignments.

    Args:
        ids0, ids1: ``(N,)`` keypoint indices of the raw matches' ends (-1 = unassigned).
        scores: ``(N,)`` their scores.

    Returns:
        ``matches (M, 2)`` int64 sorted by the image-0 index, ``scores (M,)`` float32: a raw match is kept if both
        ends are assigned and it is the highest-scoring raw match of its image-0 keypoint and of its image-1
        keypoint (ties: the first one).
    """
    ids0, ids1 = np.asarray(ids0, np.int64), np.asarray(ids1, np.int64)
    scores = np.asarray(scores, np.float64)
    valid = np.nonzero((ids0 >= 0) & (ids1 >= 0))[0]
    order = valid[np.argsort(-scores[valid], kind="stable")]
    best0 = order[np.unique(ids0[order], return_index=True)[1]]
    best1 = order[np.unique(ids1[order], return_index=True)[1]]
    keep = np.intersect1d(best0, best1)
    keep = keep[np.argsort(ids0[keep], kind="stable")]
    return np.stack([ids0[keep], ids1[keep]], -1).reshape(-1, 2), scores[keep].astype(np.float32)
