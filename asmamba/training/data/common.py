"""Pieces shared by the training datasets: image resizing and padding, depth resampling, and the item layout.

Every dataset returns the same keys so that depth-supervised and homography-supervised pairs can share a batch
(``torch.utils.data.default_collate``):

=============== ================ =========================================================================
key             shape / type     meaning
=============== ================ =========================================================================
image0, image1  (1, H, W) float  grayscale in [0, 1] at network resolution (zero padding outside the mask)
mask0, mask1    (H, W) bool      valid (non-padding) pixels
depth0, depth1  (H, W) float     metres at network resolution, 0 = invalid (zeros for homography pairs)
K0, K1          (3, 3) float     intrinsics at network resolution (identity for homography pairs)
T_0to1, T_1to0  (4, 4) float     relative poses, camera-0 to camera-1 coordinates (identity for homography)
H_0to1          (3, 3) float     image-0 pixels to image-1 pixels (identity for depth pairs)
gt_type         int              :data:`GT_DEPTH` (0) or :data:`GT_HOMOGRAPHY` (1)
sparse_gt       bool             depth known only at some pixels (SfM points): unknown cells are not negatives
scale0, scale1  (2,) float       original -> network resize ``(sx, sy)``: ``x_net = (x_orig + 0.5) * sx - 0.5``
pair_name       str              ``"name0 name1"``
=============== ================ =========================================================================

Pixel centres sit at integer coordinates (OpenCV / kornia frame).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from asmamba.io import read_image
from asmamba.training.geometry import scale_intrinsics

GT_DEPTH = 0
GT_HOMOGRAPHY = 1

PathLike = Union[str, os.PathLike]


def require_file(path: PathLike, what: str) -> Path:
    """``Path(path)`` if it is an existing file, else a FileNotFoundError naming ``what`` and the path."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    return p


def resized_size(width: int, height: int, long_side: Optional[int], divisible: int = 1) -> tuple[int, int]:
    """Network size of an image: long side scaled to ``long_side`` (None keeps the size), floored to a multiple
    of ``divisible``.

    Returns:
        ``(w_new, h_new)``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if long_side is not None:
        s = long_side / max(width, height)
        width, height = int(round(width * s)), int(round(height * s))
    w_new, h_new = (width // divisible) * divisible, (height // divisible) * divisible
    if w_new <= 0 or h_new <= 0:
        raise ValueError(f"image of size {width}x{height} is smaller than the divisibility factor {divisible}")
    return w_new, h_new


def pad_bottom_right(array: np.ndarray, size_hw: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad a ``(h, w)`` array at the bottom and right to ``size_hw``.

    Returns:
        the padded array ``(H, W)`` and the mask ``(H, W)`` bool of the original pixels.
    """
    h, w = array.shape[:2]
    H, W = int(size_hw[0]), int(size_hw[1])
    if h > H or w > W:
        raise ValueError(f"cannot pad an array of size {h}x{w} to the smaller size {H}x{W}")
    padded = np.zeros((H, W) + array.shape[2:], dtype=array.dtype)
    padded[:h, :w] = array
    mask = np.zeros((H, W), dtype=bool)
    mask[:h, :w] = True
    return padded, mask


def resize_depth_nearest(depth: np.ndarray, size_wh: Sequence[int]) -> np.ndarray:
    """Nearest-pixel resampling of a depth map (no blending across depth edges), centre-aligned.

    Network pixel ``x'`` reads original pixel ``round((x' + 0.5) * w / w' - 0.5)``.

    Args:
        depth: ``(h, w)``.
        size_wh: ``(w', h')``.
    Returns:
        ``(h', w')`` float32.
    """
    h, w = depth.shape
    w_new, h_new = int(size_wh[0]), int(size_wh[1])
    if (w_new, h_new) == (w, h):
        return depth.astype(np.float32, copy=False)
    xs = np.clip(np.round((np.arange(w_new) + 0.5) * w / w_new - 0.5), 0, w - 1).astype(np.int64)
    ys = np.clip(np.round((np.arange(h_new) + 0.5) * h / h_new - 0.5), 0, h - 1).astype(np.int64)
    return depth[ys[:, None], xs[None, :]].astype(np.float32)


def load_gray_for_network(
    path: PathLike, long_side: Optional[int], divisible: int, fixed_size_wh: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Read an image as grayscale and resize it to network resolution.

    Args:
        path: image file.
        long_side, divisible: see :func:`resized_size` (ignored when ``fixed_size_wh`` is given).
        fixed_size_wh: resize to exactly this ``(w, h)`` instead.
    Returns:
        the uint8 ``(h', w')`` image, the original ``(w, h)`` and the scale ``(sx, sy)`` float32.
    """
    image = read_image(path, grayscale=True)
    h, w = image.shape
    w_new, h_new = fixed_size_wh if fixed_size_wh is not None else resized_size(w, h, long_side, divisible)
    if (w_new, h_new) != (w, h):
        interp = cv2.INTER_AREA if w_new < w else cv2.INTER_LINEAR
        image = cv2.resize(image, (int(w_new), int(h_new)), interpolation=interp)
    return image, (w, h), np.array([w_new / w, h_new / h], dtype=np.float32)


def image_tensor(gray: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W)`` -> float ``(1, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(gray)).float().div_(255.0)[None]


def make_pair_item(
    image0: np.ndarray,
    image1: np.ndarray,
    mask0: np.ndarray,
    mask1: np.ndarray,
    pair_name: str,
    *,
    depth0: Optional[np.ndarray] = None,
    depth1: Optional[np.ndarray] = None,
    K0: Optional[np.ndarray] = None,
    K1: Optional[np.ndarray] = None,
    T_0to1: Optional[np.ndarray] = None,
    H_0to1: Optional[np.ndarray] = None,
    scale0: Sequence[float] = (1.0, 1.0),
    scale1: Sequence[float] = (1.0, 1.0),
    sparse_gt: bool = False,
) -> dict:
    """Assemble one item with every key of the shared layout (see the module docstring).

    Give either the depth ground truth (``K0, K1, T_0to1``; depth maps optional, zeros when absent) or
    ``H_0to1``; the other kind is filled with dummies (identity / zeros) so mixed batches collate. ``sparse_gt``
    marks depth maps that are known only at some pixels (zeros elsewhere mean "unknown", not "no surface").

    Args:
        image0, image1: uint8 ``(H, W)`` or float ``(H, W)`` in [0, 1], at network resolution.
        mask0, mask1: ``(H, W)`` bool.
    """
    depth_gt = T_0to1 is not None
    if depth_gt == (H_0to1 is not None):
        raise ValueError("give exactly one kind of ground truth: T_0to1 (+K0, K1) or H_0to1")
    if depth_gt and (K0 is None or K1 is None):
        raise ValueError("depth ground truth needs K0 and K1")
    if sparse_gt and not depth_gt:
        raise ValueError("sparse_gt applies to depth ground truth only")

    def as_image(a: np.ndarray) -> torch.Tensor:
        return image_tensor(a) if a.dtype == np.uint8 else torch.from_numpy(np.ascontiguousarray(a)).float()[None]

    def as_depth(d: Optional[np.ndarray], like: np.ndarray) -> torch.Tensor:
        if d is None:
            return torch.zeros(like.shape[:2], dtype=torch.float32)
        if d.shape != like.shape[:2]:
            raise ValueError(f"depth map of shape {d.shape} does not match its image {like.shape[:2]}")
        return torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))

    eye3, eye4 = np.eye(3), np.eye(4)
    T = np.asarray(T_0to1, np.float64) if depth_gt else eye4
    return {
        "image0": as_image(image0),
        "image1": as_image(image1),
        "mask0": torch.from_numpy(np.ascontiguousarray(mask0, dtype=bool)),
        "mask1": torch.from_numpy(np.ascontiguousarray(mask1, dtype=bool)),
        "depth0": as_depth(depth0, image0),
        "depth1": as_depth(depth1, image1),
        "K0": torch.tensor(K0 if depth_gt else eye3, dtype=torch.float32),
        "K1": torch.tensor(K1 if depth_gt else eye3, dtype=torch.float32),
        "T_0to1": torch.tensor(T, dtype=torch.float32),
        "T_1to0": torch.tensor(np.linalg.inv(T), dtype=torch.float32),
        "H_0to1": torch.tensor(eye3 if depth_gt else H_0to1, dtype=torch.float32),
        "gt_type": GT_DEPTH if depth_gt else GT_HOMOGRAPHY,
        "sparse_gt": bool(sparse_gt),
        "scale0": torch.tensor(np.asarray(scale0, np.float32)),
        "scale1": torch.tensor(np.asarray(scale1, np.float32)),
        "pair_name": pair_name,
    }


def prepare_view(
    image_path: PathLike,
    K: np.ndarray,
    depth: Optional[np.ndarray],
    *,
    long_side: Optional[int],
    divisible: int,
    pad_square: bool,
    fixed_size_wh: Optional[Sequence[int]] = None,
    K_size_wh: Optional[Sequence[int]] = None,
) -> dict:
    """One view of a depth-supervised pair at network resolution.

    The image is resized (:func:`load_gray_for_network`), the depth map is resampled to the same size by
    nearest pixel (it may come at another resolution than the image, as long as it covers the same field of
    view), ``K`` is rescaled exactly (it refers to the image file's resolution, or to ``K_size_wh`` when
    given), and with ``pad_square`` everything is zero-padded at the bottom/right to a
    square of side ``long_side`` floored to ``divisible`` (so every item of a dataset has one shape).

    Returns:
        dict with ``image`` uint8 ``(H, W)``, ``mask`` bool ``(H, W)``, ``depth`` float32 ``(H, W)`` or None,
        ``K`` ``(3, 3)`` float64 at network resolution and ``scale`` ``(2,)``.
    """
    gray, _, scale = load_gray_for_network(image_path, long_side, divisible, fixed_size_wh)
    h, w = gray.shape
    scale_K = scale if K_size_wh is None else (w / K_size_wh[0], h / K_size_wh[1])
    if depth is not None:
        depth = resize_depth_nearest(depth, (w, h))
    mask = np.ones((h, w), dtype=bool)
    if pad_square:
        side = max(h, w) if long_side is None else (long_side // divisible) * divisible
        gray, mask = pad_bottom_right(gray, (side, side))
        if depth is not None:
            depth, _ = pad_bottom_right(depth, (side, side))
    return {"image": gray, "mask": mask, "depth": depth, "K": scale_intrinsics(K, scale_K), "scale": scale}


def depth_pair_item(view0: dict, view1: dict, T_0to1: np.ndarray, pair_name: str, sparse_gt: bool = False) -> dict:
    """Item of a depth-supervised pair from two :func:`prepare_view` results."""
    return make_pair_item(
        view0["image"], view1["image"], view0["mask"], view1["mask"], pair_name,
        depth0=view0["depth"], depth1=view1["depth"], K0=view0["K"], K1=view1["K"], T_0to1=T_0to1,
        scale0=view0["scale"], scale1=view1["scale"], sparse_gt=sparse_gt,
    )
