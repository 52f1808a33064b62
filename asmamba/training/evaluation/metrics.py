"""Metrics of the relative-pose and homography protocols (LoFTR / SuperGlue / JamMa).

Pose: the estimated ``(R, t)`` is scored by the angle between rotations and the angle between translation
directions (up to sign: an essential matrix fixes ``t`` only up to scale and sign); a pair's error is the larger
of the two, and a method's score the area under the cumulative error curve up to 5/10/20 degrees.
Homography: the mean distance between GT points warped by the estimated and by the true homography, AUC at
3/5/10 pixels. Matching precision: the fraction of matches whose squared symmetric epipolar distance
(normalised coordinates, under the true pose) is below 1e-4 (MegaDepth) or 5e-4 (ScanNet).

All point arrays are ``(N, 2)`` pixel coordinates with pixel centres at integers; ``K`` refers to the pixels the
points are given in.
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

POSE_THRESHOLDS = (5.0, 10.0, 20.0)
HOMOGRAPHY_THRESHOLDS = (3.0, 5.0, 10.0)


def _as_points(pts: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(pts, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of points, got shape {a.shape}")
    return a


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle (degrees) of the rotation ``R_est^T R_gt`` (atan2 of its sine and cosine: accurate near 0 and 180)."""
    D = np.asarray(R_est, np.float64).T @ np.asarray(R_gt, np.float64)
    cos = (np.trace(D) - 1.0) / 2.0
    sin = np.linalg.norm([D[2, 1] - D[1, 2], D[0, 2] - D[2, 0], D[1, 0] - D[0, 1]]) / 2.0
    return float(np.degrees(np.arctan2(sin, cos)))


def translation_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle (degrees) between two translation directions, sign-invariant (in [0, 90]); 0 when the true
    translation is zero, 90 when only the estimate is."""
    a, b = np.asarray(t_est, np.float64).ravel(), np.asarray(t_gt, np.float64).ravel()
    n = np.linalg.norm(a) * np.linalg.norm(b)
    if np.linalg.norm(b) == 0:  # pure rotation: the direction is undefined, only the rotation error counts
        return 0.0
    if n == 0:
        return 90.0
    angle = float(np.degrees(np.arccos(np.clip(a @ b / n, -1.0, 1.0))))
    return min(angle, 180.0 - angle)


def relative_pose_error(T_0to1: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """``(rotation error, translation error, max of both)`` in degrees of an estimate against ``T_0to1`` (4, 4)."""
    T = np.asarray(T_0to1, np.float64)
    err_R = rotation_error_deg(R, T[:3, :3])
    err_t = translation_error_deg(t, T[:3, 3])
    return err_R, err_t, max(err_R, err_t)


def error_auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the cumulative recall curve of ``errors`` up to each threshold, divided by the threshold.

    The curve passes through ``(0, 0)`` and ``(e_k, k / N)`` for the sorted errors ``e_1 <= ... <= e_N``, joined
    linearly (the SuperGlue / LoFTR convention) and held flat from the last error below the threshold up to the
    threshold. Infinite errors (failures) count in ``N`` but never enter the curve.
    """
    e = np.sort(np.nan_to_num(np.asarray(errors, dtype=np.float64), nan=np.inf))
    n = len(e)
    if n == 0:
        return [0.0 for _ in thresholds]
    xs = np.concatenate([[0.0], e])
    ys = np.arange(n + 1) / n
    aucs = []
    for thr in thresholds:
        below = int(np.searchsorted(xs, thr, side="left"))  # points with error < thr (incl. the origin)
        x = np.concatenate([xs[:below], [thr]])
        y = np.concatenate([ys[:below], [ys[below - 1]]])
        aucs.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / thr))
    return aucs


def normalize_points(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel points -> normalised image coordinates ``K^-1 (x, y, 1)`` (first two components)."""
    p = _as_points(pts, "points")
    h = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ np.linalg.inv(np.asarray(K, np.float64)).T
    return h[:, :2] / h[:, 2:]


def essential_from_pose(T_0to1: np.ndarray) -> np.ndarray:
    """``E = [t]_x R`` (3, 3) of ``T_0to1``: ``x1^T E x0 = 0`` for normalised points."""
    T = np.asarray(T_0to1, np.float64)
    t = T[:3, 3]
    tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    return tx @ T[:3, :3]


def symmetric_epipolar_distance(
    pts0: np.ndarray, pts1: np.ndarray, T_0to1: np.ndarray, K0: np.ndarray, K1: np.ndarray
) -> np.ndarray:
    """Squared symmetric epipolar distance ``(N,)`` in normalised coordinates under the true pose:
    ``(x1^T E x0)^2 * (1 / |(E x0)_12|^2 + 1 / |(E^T x1)_12|^2)`` (LoFTR's ``epi_errs``)."""
    x0 = np.concatenate([normalize_points(pts0, K0), np.ones((len(pts0), 1))], axis=1)
    x1 = np.concatenate([normalize_points(pts1, K1), np.ones((len(pts1), 1))], axis=1)
    if len(x0) != len(x1):
        raise ValueError(f"pts0 and pts1 must pair up, got {len(x0)} and {len(x1)} points")
    E = essential_from_pose(T_0to1)
    Ex0, Etx1 = x0 @ E.T, x1 @ E
    residual = np.sum(x1 * Ex0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = residual**2 * (1.0 / (Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2) + 1.0 / (Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2))
    return np.nan_to_num(d, nan=np.inf)


def matching_precision(epipolar_errors: np.ndarray, threshold: float) -> float:
    """Fraction of matches with error below ``threshold`` (0 when there is no match)."""
    e = np.asarray(epipolar_errors)
    return float(np.mean(e < threshold)) if e.size else 0.0


#: findEssentialMat runs on the matches in up to this many orders when OpenCV's solver raises (see below)
ESSENTIAL_ATTEMPTS = 4


def estimate_pose_opencv(
    pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray, threshold_px: float = 0.5,
    confidence: float = 0.99999,
) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Relative pose by OpenCV's 5-point RANSAC on K-normalised points (the LoFTR / SuperGlue protocol).

    The inlier threshold is ``threshold_px`` divided by the mean focal length of both cameras; when RANSAC
    returns several essential matrices, the one with the most ``recoverPose`` inliers wins.

    Returns:
        ``(R (3, 3), t (3,) unit, inlier mask (N,) bool)``, or None with fewer than 5 matches / no solution (also
        when OpenCV's solver raises in every one of :data:`ESSENTIAL_ATTEMPTS` orders of the matches).
    """
    p0, p1 = _as_points(pts0, "pts0"), _as_points(pts1, "pts1")
    if len(p0) < 5:
        return None
    n0, n1 = normalize_points(p0, K0), normalize_points(p1, K1)
    focal = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    order = np.arange(len(p0))
    for attempt in range(ESSENTIAL_ATTEMPTS):
        try:
            E, mask = cv2.findEssentialMat(
                n0[order], n1[order], np.eye(3), method=cv2.RANSAC, prob=confidence, threshold=threshold_px / focal
            )
            break
        except cv2.error:
            # OpenCV 5's five-point solver asserts on a degenerate minimal sample (solvePoly) instead of skipping
            # it, which ends the whole RANSAC: retry with the matches in another (fixed) order, so other samples
            # are drawn; the same input always gives the same answer
            order = np.random.default_rng(attempt).permutation(len(p0))
    else:
        return None
    if E is None or mask is None:
        return None
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    mask = mask[inverse]  # back to the caller's order
    best = None
    for k in range(E.shape[0] // 3):
        n_in, R, t, _ = cv2.recoverPose(E[3 * k : 3 * k + 3], n0, n1, np.eye(3), 1e9, mask=mask.copy())
        if best is None or n_in > best[0]:
            best = (n_in, R, t.ravel())
    return best[1], best[2], mask.ravel() > 0


def estimate_pose_poselib(
    pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray, threshold_px: float = 0.5,
    size0: Optional[Sequence[int]] = None, size1: Optional[Sequence[int]] = None,
) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Relative pose by poselib's LO-RANSAC with non-linear refinement (JamMa's protocol), epipolar threshold in
    pixels.

    Args:
        size0, size1: ``(w, h)`` of the images (default: twice the principal point).
    Returns:
        ``(R (3, 3), t (3,) unit, inlier mask (N,) bool)``, or None with fewer than 5 matches / no solution.
    """
    import poselib

    p0, p1 = _as_points(pts0, "pts0"), _as_points(pts1, "pts1")
    if len(p0) < 5:
        return None

    def camera(K: np.ndarray, size: Optional[Sequence[int]]) -> dict:
        K = np.asarray(K, np.float64)
        w, h = size if size is not None else (int(round(2 * K[0, 2] + 1)), int(round(2 * K[1, 2] + 1)))
        return {"model": "PINHOLE", "width": int(w), "height": int(h), "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}

    pose, info = poselib.estimate_relative_pose(
        p0, p1, camera(K0, size0), camera(K1, size1), {"max_epipolar_error": float(threshold_px)}, {}
    )
    inliers = np.asarray(info.get("inliers", []), dtype=bool)
    if info.get("num_inliers", 0) < 5 or not np.isfinite(pose.t).all():
        return None
    t = np.asarray(pose.t, np.float64)
    norm = np.linalg.norm(t)
    return np.asarray(pose.R, np.float64), (t / norm if norm > 0 else t), inliers


def estimate_homography(
    pts0: np.ndarray, pts1: np.ndarray, threshold_px: float = 3.0, confidence: float = 0.99999,
    max_iters: int = 10000,
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Homography image 0 -> image 1 by OpenCV RANSAC. Returns ``(H (3, 3), inlier mask (N,))`` or None."""
    p0, p1 = _as_points(pts0, "pts0"), _as_points(pts1, "pts1")
    if len(p0) < 4:
        return None
    H, mask = cv2.findHomography(p0, p1, cv2.RANSAC, threshold_px, maxIters=max_iters, confidence=confidence)
    if H is None:
        return None
    return H, mask.ravel() > 0


def warp_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points through a ``(3, 3)`` homography."""
    p = _as_points(pts, "points")
    q = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ np.asarray(H, np.float64).T
    return q[:, :2] / q[:, 2:]


def homography_error(H_est: Optional[np.ndarray], H_gt: np.ndarray, pts: np.ndarray) -> float:
    """Mean distance (pixels of image 1) between ``pts`` warped by the estimate and by the truth; inf for no
    estimate."""
    if H_est is None:
        return float("inf")
    d = np.linalg.norm(warp_points(H_est, pts) - warp_points(H_gt, pts), axis=1)
    return float(np.mean(d)) if np.isfinite(d).all() else float("inf")


def image_corners(width: int, height: int) -> np.ndarray:
    """The four corner pixel centres ``(4, 2)`` of a ``width x height`` image (the HPatches corner error)."""
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)
