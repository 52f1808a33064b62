"""Point warps between the two images of a pair: through depth and relative pose, or through a homography.

Pixel convention everywhere: pixel centres at integer coordinates (OpenCV / kornia frame), so an image of width
``W`` covers ``x`` in ``[-0.5, W - 0.5)`` and the pixel that holds a point is ``round(x)``.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def scale_intrinsics(K: ArrayOrTensor, scale: Sequence[float]) -> ArrayOrTensor:
    """Intrinsics of an image resized by ``scale = (sx, sy)`` (``new_size = old_size * scale``).

    With pixel centres at integers a resize maps ``x' = (x + 0.5) * sx - 0.5``, so
    ``fx' = fx * sx``, ``cx' = (cx + 0.5) * sx - 0.5`` (and likewise for y; the skew scales with ``sx``).

    Args:
        K: ``(..., 3, 3)`` intrinsics (numpy or torch).
        scale: ``(sx, sy)``.
    Returns:
        ``(..., 3, 3)`` intrinsics of the same type.
    """
    to_network = resize_transform(scale)
    if isinstance(K, torch.Tensor):
        return torch.as_tensor(to_network, dtype=K.dtype, device=K.device) @ K
    return to_network @ np.asarray(K, dtype=np.float64)


def resize_transform(scale: Sequence[float]) -> np.ndarray:
    """``(3, 3)`` pixel map of an image resize by ``scale = (sx, sy)``: ``x' = (x + 0.5) * sx - 0.5``."""
    sx, sy = float(scale[0]), float(scale[1])
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def relative_pose(T0_world_to_cam: np.ndarray, T1_world_to_cam: np.ndarray) -> np.ndarray:
    """``T_0to1 = T1 @ inv(T0)``: maps camera-0 coordinates to camera-1 coordinates (``(4, 4)`` float64)."""
    return np.asarray(T1_world_to_cam, np.float64) @ np.linalg.inv(np.asarray(T0_world_to_cam, np.float64))


def coarse_cell_centres(hc: int, wc: int, stride: int, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Pixel centres of the cells of a coarse grid, row-major.

    Cell ``(c, r)`` covers pixels ``stride*c .. stride*c + stride - 1``; its centre is
    ``(stride*c + (stride-1)/2, stride*r + (stride-1)/2)`` (``(8c+3.5, 8r+3.5)`` for stride 8).

    Returns:
        ``(hc*wc, 2)`` float32 ``(x, y)``.
    """
    offset = (stride - 1) / 2.0
    ys, xs = torch.meshgrid(
        torch.arange(hc, device=device, dtype=torch.float32),
        torch.arange(wc, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs * stride + offset, ys * stride + offset], dim=-1).reshape(-1, 2)


def sample_nearest(image: torch.Tensor, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Value of the pixel holding each point (nearest pixel: ``round(x), round(y)``).

    Args:
        image: ``(B, H, W)``.
        pts: ``(B, N, 2)`` pixel coordinates ``(x, y)``.
    Returns:
        values ``(B, N)`` (0 where the point is outside the image) and inside ``(B, N)`` bool.
    """
    B, H, W = image.shape
    ij = torch.nan_to_num(pts, nan=-1.0, posinf=-1.0, neginf=-1.0).round().long()
    x, y = ij[..., 0], ij[..., 1]
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H) & torch.isfinite(pts).all(-1)
    flat = (y.clamp(0, H - 1) * W + x.clamp(0, W - 1)).reshape(B, -1)
    values = torch.gather(image.reshape(B, H * W), 1, flat).reshape(x.shape)
    return torch.where(inside, values, torch.zeros_like(values)), inside


def _check_points(pts: torch.Tensor, name: str = "pts0") -> None:
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (B, N, 2), got {tuple(pts.shape)}")


@torch.no_grad()
def warp_points_depth(
    pts0: torch.Tensor,
    depth0: torch.Tensor,
    depth1: torch.Tensor,
    T_0to1: torch.Tensor,
    K0: torch.Tensor,
    K1: torch.Tensor,
    depth_consistency: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp image-0 pixels into image 1 through depth and relative pose, with visibility checks.

    Each point takes the depth of its nearest pixel in ``depth0`` and is unprojected with ``K0``, moved by
    ``T_0to1`` and projected with ``K1``. A point is valid when its depth0 is positive, it lies in front of
    camera 1, it lands inside image 1 (its nearest pixel exists), that pixel's ``depth1`` is positive and the
    relative depth error ``|z_warped - depth1| / depth1`` is below ``depth_consistency`` (occlusion test).

    Args:
        pts0: ``(B, N, 2)`` pixel coordinates in image 0.
        depth0: ``(B, H0, W0)`` metres, 0 = invalid.
        depth1: ``(B, H1, W1)`` metres, 0 = invalid.
        T_0to1: ``(B, 4, 4)`` (or ``(B, 3, 4)``) camera-0 to camera-1 transform.
        K0, K1: ``(B, 3, 3)`` intrinsics at the depth maps' resolution.
        depth_consistency: largest relative depth error still accepted (exclusive).
    Returns:
        valid ``(B, N)`` bool and pts1 ``(B, N, 2)`` warped coordinates (NaN where the point has no depth or lands
        behind camera 1; occluded and out-of-image points keep their projection).
    """
    _check_points(pts0)
    if depth0.ndim != 3 or depth1.ndim != 3:
        raise ValueError(f"depth maps must be (B, H, W), got {tuple(depth0.shape)} and {tuple(depth1.shape)}")
    dtype = torch.float64 if pts0.dtype == torch.float64 else torch.float32
    pts0 = pts0.to(dtype)
    z0, inside0 = sample_nearest(depth0.to(dtype), pts0)
    ones = torch.ones_like(pts0[..., :1])
    rays = torch.cat([pts0, ones], dim=-1) @ torch.linalg.inv(K0.to(dtype)).transpose(1, 2)  # (B, N, 3)
    cam0 = rays * z0[..., None]
    T = T_0to1.to(dtype)
    cam1 = cam0 @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    z1 = cam1[..., 2]
    in_front = z1 > 1e-6
    proj = cam1 @ K1.to(dtype).transpose(1, 2)
    safe_z = torch.where(in_front, proj[..., 2], torch.ones_like(z1))
    pts1 = proj[..., :2] / safe_z[..., None]
    computable = in_front & inside0 & (z0 > 0)
    pts1 = torch.where(computable[..., None], pts1, torch.full_like(pts1, float("nan")))
    d1, inside1 = sample_nearest(depth1.to(dtype), pts1)
    has_depth1 = d1 > 0
    rel_err = (z1 - d1).abs() / torch.where(has_depth1, d1, torch.ones_like(d1))
    valid = computable & inside1 & has_depth1 & (rel_err < depth_consistency)
    return valid, pts1.to(pts0.dtype)


@torch.no_grad()
def warp_points_homography(
    pts0: torch.Tensor, H_0to1: torch.Tensor, hw1: Union[Sequence[int], torch.Size]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp image-0 pixels into image 1 with a homography.

    Args:
        pts0: ``(B, N, 2)`` pixel coordinates in image 0.
        H_0to1: ``(B, 3, 3)`` mapping image-0 pixels to image-1 pixels.
        hw1: ``(H1, W1)`` size of image 1.
    Returns:
        valid ``(B, N)`` bool and pts1 ``(B, N, 2)``. A point is valid when it lands inside image 1 (its nearest
        pixel exists) with a positive homogeneous coordinate, ``H`` being taken with ``H[2, 2] >= 0``; pts1 is NaN
        where that coordinate is not positive.
    """
    _check_points(pts0)
    if H_0to1.ndim != 3 or H_0to1.shape[-2:] != (3, 3):
        raise ValueError(f"H_0to1 must have shape (B, 3, 3), got {tuple(H_0to1.shape)}")
    h1, w1 = int(hw1[0]), int(hw1[1])
    dtype = torch.float64 if pts0.dtype == torch.float64 else torch.float32
    p = torch.cat([pts0.to(dtype), torch.ones_like(pts0[..., :1], dtype=dtype)], dim=-1)
    H = H_0to1.to(dtype)
    H = H * torch.where(H[:, 2:3, 2:3] < 0, -1.0, 1.0).to(dtype)  # sign convention: H[2, 2] >= 0
    q = p @ H.transpose(1, 2)
    positive = q[..., 2] > 1e-12
    pts1 = q[..., :2] / torch.where(positive, q[..., 2], torch.ones_like(q[..., 2]))[..., None]
    pts1 = torch.where(positive[..., None], pts1, torch.full_like(pts1, float("nan")))
    rounded = pts1.round()
    inside = (rounded[..., 0] >= 0) & (rounded[..., 0] < w1) & (rounded[..., 1] >= 0) & (rounded[..., 1] < h1)
    return positive & inside, pts1.to(pts0.dtype)
