"""Self-supervised pairs: two random homographic views of one image, with the exact homography between them.

The geometry is drawn first, in view pixels: a homography ``H`` from view 0 to view 1 (perspective corner jitter,
for a ``tilt_prob`` share of the pairs a camera tilt of 20-60 degrees out of the plane (:func:`tilt_homography`:
the strong, coherent perspective of an oblique view, which corner jitter alone never makes), then a zoom and an
in-plane rotation, then a shift). Zoom and rotation each come from a mixture: most pairs from a
*core* range (``scale``, ``rotation_deg``: what real pairs mostly show), a share (``scale_wide_prob``,
``rotation_wide_prob``) from a *wide* range (``scale_wide`` up to 4x both ways, ``rotation_wide_deg``), so large
zooms and rotations are common without dominating. The zoom centre is placed so that the zoomed-in view can lie
anywhere inside the other, and an ``H`` whose two views share too little (``min_overlap``, counted on 8 px cells
of the finer view) is drawn again. Then the crop: the union of both views' footprints is fitted into the source
image (a random fraction ``crop_scale`` of the largest fit, at a random place), so neither view runs off the
source. Each view is rendered from the source pre-shrunk to its own resolution (no aliasing in the zoomed-out view,
no blur from a shared low-resolution copy in the zoomed-in one); ``H`` maps view-0 pixels to view-1 pixels exactly.
Each view then gets independent photometric changes. Everything random is drawn from
``numpy.random.default_rng(seed + index)``, so an item is the same whichever worker loads it.

The distribution before the wide ranges existed (zoom 0.75-1.33, +-25 degrees only) is
``scale_wide_prob=0, rotation_wide_prob=0`` (``configs/data/homography_photos_narrow.yaml``).

Sources: a folder of images, a list of image files, in-memory arrays, or scikit-image's shipped images
(``"skimage"`` for :data:`SKIMAGE_IMAGES`, or ``"skimage:astronaut,brick"``).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
from torch.utils.data import Dataset

from asmamba.io import list_images, read_image
from asmamba.training.data.common import make_pair_item
from asmamba.training.data.photometric import photometric_jitter
from asmamba.training.geometry import resize_transform

PathLike = Union[str, os.PathLike]
SourceSpec = Union[PathLike, np.ndarray, Sequence[Union[PathLike, np.ndarray]]]

#: scikit-image images shipped inside its wheel (no download at run time).
SKIMAGE_IMAGES = ("astronaut", "coffee", "chelsea", "camera", "brick", "grass", "gravel", "rocket", "moon")

default_conf: dict[str, Any] = {
    "output_size": (320, 240),  # (w, h) of both views
    "pairs_per_image": 1,  # dataset length = number of sources * pairs_per_image
    "crop_scale": (0.5, 1.0),  # both views' joint footprint, relative to the largest that fits in the source
    "scale": (0.75, 1.33),  # core zoom of view 1 (view-1 px per view-0 px), log-uniform
    "scale_wide": (0.25, 4.0),  # wide zoom, log-uniform ...
    "scale_wide_prob": 0.5,  # ... drawn for this share of the pairs (0: core only)
    "rotation_deg": 25.0,  # core in-plane rotation of view 1, uniform in [-r, r]
    "rotation_wide_deg": 60.0,  # wide rotation, uniform in [-r, r] ...
    "rotation_wide_prob": 0.5,  # ... drawn for this share of the pairs (0: core only)
    "perspective": 0.12,  # corner displacement of view 1, fraction of the output size
    "tilt_prob": 0.0,  # share of the pairs whose view 1 looks at the plane from a tilted camera (0: none) ...
    "tilt_deg": (20.0, 60.0),  # ... tilted by this angle (uniform), about a random axis in the plane ...
    "tilt_focal": (0.7, 1.4),  # ... with this focal length, in units of the view's long side (log-uniform)
    "translation": 0.1,  # shift of view 1, fraction of the output size
    "min_overlap": 0.25,  # redraw H while fewer of the finer view's 8 px cells warp inside the other view
    "max_tries": 50,  # draws of H before the last one is kept without its shift and perspective
    "photometric": True,
    "brightness": 0.15,  # additive, uniform in [-b, b]
    "contrast": (0.75, 1.3),
    "gamma": (0.75, 1.35),
    "noise_std": 0.02,  # Gaussian noise std drawn uniformly in [0, noise_std]
    "blur_prob": 0.25,
    "blur_sigma": (0.5, 1.2),
}


def _skimage_image(name: str) -> np.ndarray:
    import skimage.data

    if name not in SKIMAGE_IMAGES:
        raise ValueError(f"unknown scikit-image source {name!r}; shipped images: {', '.join(SKIMAGE_IMAGES)}")
    return np.asarray(getattr(skimage.data, name)())


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (uint8, or float in [0, 1]) -> uint8 grayscale."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
            raise TypeError(f"image arrays must be uint8 or float in [0, 1], got {a.dtype}")
        a = np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = cv2.cvtColor(a[..., :3], cv2.COLOR_RGB2GRAY)
    if a.ndim != 2:
        raise ValueError(f"an image array must be (H, W) or (H, W, 3|4), got shape {a.shape}")
    return a


SourceItem = Union[Path, str, np.ndarray]  # an image file, "skimage/<name>", or a uint8 grayscale array


def resolve_sources(sources: SourceSpec) -> list[tuple[str, SourceItem]]:
    """``(name, item)`` of every source image, ``item`` being what :func:`load_source` reads (plain data, so
    the dataset pickles into DataLoader workers).

    Raises:
        FileNotFoundError: a folder or file does not exist. ValueError: nothing to load / unknown skimage name.
    """
    if isinstance(sources, (str, os.PathLike, np.ndarray)):
        sources = [sources]
    resolved: list[tuple[str, SourceItem]] = []
    for k, src in enumerate(sources):
        if isinstance(src, np.ndarray):
            resolved.append((f"array{k}", to_gray_uint8(src)))
            continue
        text = str(src)
        if text == "skimage" or text.startswith("skimage:"):
            names = SKIMAGE_IMAGES if text == "skimage" else [n for n in text[8:].split(",") if n]
            for n in names:
                if n not in SKIMAGE_IMAGES:
                    _skimage_image(n)  # raises the ValueError naming the shipped images
                resolved.append((f"skimage/{n}", f"skimage/{n}"))
            continue
        p = Path(src)
        if p.is_dir():
            resolved += [(rel, p / rel) for rel in list_images(p)]
        elif p.is_file():
            resolved.append((p.name, p))
        else:
            raise FileNotFoundError(f"homography source {text!r} is neither an image file nor a folder")
    if not resolved:
        raise ValueError("no homography source image given")
    return resolved


def load_source(item: SourceItem) -> np.ndarray:
    """uint8 grayscale ``(H, W)`` of one resolved source."""
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, str) and item.startswith("skimage/"):
        return to_gray_uint8(_skimage_image(item[len("skimage/"):]))
    return read_image(item, grayscale=True)


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _log_uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return math.exp(_uniform(rng, (math.log(bounds[0]), math.log(bounds[1]))))


def sample_zoom_rotation(rng: np.random.Generator, conf: dict) -> tuple[float, float]:
    """Zoom (view-1 px per view-0 px) and in-plane rotation (degrees) of view 1, each from its core / wide
    mixture. The same four numbers are drawn whatever the probabilities, so items stay aligned across configs."""
    wide_zoom = rng.uniform() < conf["scale_wide_prob"]
    zoom = _log_uniform(rng, conf["scale_wide"] if wide_zoom else conf["scale"])
    wide_rotation = rng.uniform() < conf["rotation_wide_prob"]
    r = conf["rotation_wide_deg"] if wide_rotation else conf["rotation_deg"]
    return zoom, _uniform(rng, (-r, r))


def similarity(zoom: float, angle_deg: float, p0: Sequence[float], p1: Sequence[float]) -> np.ndarray:
    """``(3, 3)`` zoom by ``zoom`` and rotation by ``angle_deg`` that takes point ``p0`` to ``p1``."""
    a = math.radians(angle_deg)
    R = zoom * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    S = np.eye(3)
    S[:2, :2], S[:2, 2] = R, np.asarray(p1, np.float64) - R @ np.asarray(p0, np.float64)
    return S


def tilt_homography(tilt_deg: float, axis_deg: float, focal: float, centre: Sequence[float]) -> np.ndarray:
    """``(3, 3)`` homography from a fronto-parallel view of a plane to the view of a camera that orbits the point
    the first looks at (pixel ``centre``) by ``tilt_deg`` about an axis in the plane at ``axis_deg`` from the image
    x axis, at the same distance, with the same pinhole intrinsics (focal length ``focal`` px, principal point
    ``centre``): foreshortening by ``cos(tilt)`` across the axis, and the perspective of a real oblique view.

    With camera 0 at the origin looking down +z at the plane z = d, camera 1 maps X to ``R (X - c1)`` with
    ``c1 = d (e_z - R^T e_z)``; the plane's homography ``K (R + t n^T / d) K^-1`` with ``t = -R c1`` and ``n = e_z``
    reduces to ``K [r_1, r_2, e_z] K^-1`` (``r_i`` the columns of R), independent of d.
    """
    t, a = math.radians(tilt_deg), math.radians(axis_deg)
    axis = np.array([math.cos(a), math.sin(a), 0.0])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + math.sin(t) * cross + (1 - math.cos(t)) * cross @ cross  # Rodrigues
    K = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1.0]])
    M = np.stack([R[:, 0], R[:, 1], np.array([0, 0, 1.0])], axis=1)
    H = K @ M @ np.linalg.inv(K)
    return H / H[2, 2]


def _draw_tilted(rng: np.random.Generator, conf: dict) -> bool:
    """Whether a pair's view 1 is tilted (a ``tilt_prob`` share); draws nothing when ``tilt_prob`` is 0."""
    return float(conf["tilt_prob"]) > 0 and rng.uniform() < conf["tilt_prob"]


def _draw_tilt(rng: np.random.Generator, size_wh: Sequence[int], conf: dict, tilted: bool) -> np.ndarray:
    """The tilt of view 1, or the identity. Draws nothing when ``tilt_prob`` is 0, so the pairs of a config
    without tilt stay what they were before the option existed."""
    if float(conf["tilt_prob"]) <= 0:
        return np.eye(3)
    tilt, axis = _uniform(rng, conf["tilt_deg"]), float(rng.uniform(0.0, 360.0))
    focal = _log_uniform(rng, conf["tilt_focal"]) * max(size_wh)
    if not tilted:
        return np.eye(3)
    return tilt_homography(tilt, axis, focal, ((size_wh[0] - 1) / 2, (size_wh[1] - 1) / 2))


def _draw_homography(rng: np.random.Generator, size_wh: Sequence[int], conf: dict,
                     tilted: bool = False) -> tuple[np.ndarray, float, float]:
    w, h = float(size_wh[0]), float(size_wh[1])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    jitter = rng.uniform(-1, 1, (4, 2)) * conf["perspective"] * np.array([w, h])
    P = cv2.getPerspectiveTransform(corners, (corners + jitter).astype(np.float32)).astype(np.float64)
    P = _draw_tilt(rng, size_wh, conf, tilted) @ P
    zoom, angle = sample_zoom_rotation(rng, conf)
    shift = rng.uniform(-1, 1, 2) * conf["translation"] * np.array([w, h])
    # the zoom centre: view-0 point p0 lands on view-1 point p1. A zoom-in shows a part 1/zoom as large of view 0,
    # which may sit anywhere in it; a zoom-out shows view 0 shrunk, anywhere in view 1. No zoom: both centres.
    half = np.array([(w - 1) / 2, (h - 1) / 2])
    p0 = half + rng.uniform(-1, 1, 2) * half * (1 - 1 / max(zoom, 1.0))
    p1 = half + rng.uniform(-1, 1, 2) * half * (1 - min(zoom, 1.0)) + shift
    H = similarity(zoom, angle, p0, p1) @ P
    return H / H[2, 2], zoom, angle


def sample_homography(rng: np.random.Generator, size_wh: Sequence[int], conf: dict) -> np.ndarray:
    """A random view-0 -> view-1 homography ``(3, 3)``: perspective corner jitter, a camera tilt (for a
    ``tilt_prob`` share), then zoom and rotation about a random zoom centre, then a shift (no overlap check: see
    :class:`HomographyPairs`)."""
    return _draw_homography(rng, size_wh, conf, _draw_tilted(rng, conf))[0]


def _warp(H: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pts (N, 2)`` through ``H``; also whether each lands in front (positive homogeneous coordinate)."""
    q = pts @ H[:, :2].T + H[:, 2]
    front = q[:, 2] > 1e-9
    return q[:, :2] / np.where(front, q[:, 2], 1.0)[:, None], front


def _cell_centres(size_wh: Sequence[int], stride: int = 8) -> np.ndarray:
    offset = stride / 2 - 0.5
    xs, ys = np.meshgrid(np.arange(offset, size_wh[0], stride), np.arange(offset, size_wh[1], stride))
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def cell_overlap(H: np.ndarray, size_wh: Sequence[int], stride: int = 8) -> tuple[float, float]:
    """Shares of view 0's and of view 1's ``stride``-pixel cells (both of size ``size_wh``) whose centre warps,
    through ``H`` (view 0 -> view 1) or its inverse, inside the other view. A zoom of ``s`` caps the coarser
    view's share at ``1 / s**2``; the finer view's share is what the pair really has in common."""
    w, h = size_wh

    def inside(pts: np.ndarray, front: np.ndarray) -> np.ndarray:
        return front & (pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)

    cells = _cell_centres(size_wh, stride)
    return float(inside(*_warp(H, cells)).mean()), float(inside(*_warp(np.linalg.inv(H), cells)).mean())


def _union_box(H: np.ndarray, size_wh: Sequence[int]) -> Optional[np.ndarray]:
    """``(x0, y0, x1, y1)`` in view-0 pixels (pixel edges) of view 0 and of view 1's footprint together, or None
    when part of view 1 sees beyond the horizon of view 0's plane."""
    w, h = size_wh
    edges = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    footprint, front = _warp(np.linalg.inv(H), edges)
    if not front.all():
        return None
    pts = np.concatenate([edges, footprint])
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


@lru_cache(maxsize=8)
def _pixel_grid(size_wh: tuple[int, int], step: int = 1) -> np.ndarray:
    """``(N, 1, 2)`` float64 pixel centres of a ``size_wh`` view every ``step`` pixels, row-major."""
    xs, ys = np.meshgrid(np.arange(0, size_wh[0], step), np.arange(0, size_wh[1], step))
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float64)[:, None]


def _covered(A_src_to_view: np.ndarray, src_hw: Sequence[int], size_wh: Sequence[int], step: int = 1) -> np.ndarray:
    """Which view pixels see the source image: ``inv(A)`` maps them inside ``[-0.5, w-0.5] x [-0.5, h-0.5]``."""
    size_wh = (int(size_wh[0]), int(size_wh[1]))
    uv = cv2.perspectiveTransform(_pixel_grid(size_wh, step), np.linalg.inv(A_src_to_view))[:, 0]
    u, v = uv[:, 0], uv[:, 1]
    inside = (u >= -0.5) & (u <= src_hw[1] - 0.5) & (v >= -0.5) & (v <= src_hw[0] - 0.5)
    return inside.reshape((size_wh[1] + step - 1) // step, (size_wh[0] + step - 1) // step)


#: view 1's footprint (with view 0) may span at most this many view sizes, times 1 / zoom for a zoom-out
MAX_FOOTPRINT = 3.0


def _local_scale(H: np.ndarray, point: np.ndarray) -> float:
    """``sqrt(|det J|)`` of the Jacobian of homography ``H`` at ``point`` (x, y)."""
    x, y = float(point[0]), float(point[1])
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    u, v = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / w, (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / w
    J = (H[:2, :2] - np.outer([u, v], H[2, :2])) / w
    return math.sqrt(abs(float(np.linalg.det(J))))


def _acceptable(H: np.ndarray, zoom: float, size_wh: Sequence[int], min_overlap: float) -> bool:
    """The views share ``min_overlap`` of the finer view's cells and view 1's footprint is bounded."""
    box = _union_box(H, size_wh)
    if box is None:
        return False
    limit = MAX_FOOTPRINT / min(zoom, 1.0)
    if box[2] - box[0] > limit * size_wh[0] or box[3] - box[1] > limit * size_wh[1]:
        return False
    return max(cell_overlap(H, size_wh)) >= min_overlap


def _check_conf(conf: dict) -> None:
    """Clear errors for geometry options out of range."""
    for key in ("scale", "scale_wide", "crop_scale", "tilt_focal"):
        lo, hi = (float(v) for v in conf[key])
        if not 0 < lo <= hi:
            raise ValueError(f"homography option {key} must be a range 0 < lo <= hi, got {list(conf[key])}")
    if float(conf["crop_scale"][1]) > 1.0:
        raise ValueError(f"homography option crop_scale must lie in (0, 1], got {list(conf['crop_scale'])}")
    lo, hi = (float(v) for v in conf["tilt_deg"])
    if not 0 <= lo <= hi < 90:
        raise ValueError(f"homography option tilt_deg must be a range 0 <= lo <= hi < 90, got {list(conf['tilt_deg'])}")
    for key in ("scale_wide_prob", "rotation_wide_prob", "min_overlap", "tilt_prob"):
        if not 0.0 <= float(conf[key]) <= 1.0:
            raise ValueError(f"homography option {key} must lie in [0, 1], got {conf[key]}")
    for key in ("rotation_deg", "rotation_wide_deg", "perspective", "translation"):
        if float(conf[key]) < 0:
            raise ValueError(f"homography option {key} must be >= 0, got {conf[key]}")
    if int(conf["max_tries"]) < 1:
        raise ValueError(f"homography option max_tries must be >= 1, got {conf['max_tries']}")


class HomographyPairs(Dataset):
    """Random homographic pairs as items of the shared layout (:mod:`asmamba.training.data.common`),
    ``gt_type = 1`` and ``H_0to1`` at network resolution.

    Args:
        sources: see :func:`resolve_sources`.
        seed: base seed; item ``i`` uses ``seed + i``.
        conf: overrides of :data:`default_conf`.
    """

    def __init__(self, sources: SourceSpec, seed: int = 0, **conf: Any):
        unknown = set(conf) - set(default_conf)
        if unknown:
            raise TypeError(f"unknown homography options {sorted(unknown)}; known: {sorted(default_conf)}")
        self.conf = {**default_conf, **conf}
        w, h = self.conf["output_size"]
        if int(w) <= 0 or int(h) <= 0:
            raise ValueError(f"output_size must be a positive (w, h), got {self.conf['output_size']}")
        _check_conf(self.conf)
        self.size_wh = (int(w), int(h))
        self.seed = int(seed)
        self.sources = resolve_sources(sources)
        self._cache: dict[int, np.ndarray] = {}  # a few decoded sources (per worker)

    def _load(self, k: int) -> np.ndarray:
        if k not in self._cache:
            if len(self._cache) >= 16:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = load_source(self.sources[k][1])
        return self._cache[k]

    def __len__(self) -> int:
        return len(self.sources) * int(self.conf["pairs_per_image"])

    def _geometry(self, rng: np.random.Generator) -> np.ndarray:
        """View-0 -> view-1 ``H``: drawn until the views share ``min_overlap`` of the finer view's cells and
        view 1's footprint is bounded; after ``max_tries`` draws the last zoom and rotation are kept about the
        image centre, without shift and perspective. Whether view 1 is tilted is decided once per pair, before the
        draws, so that ``tilt_prob`` is the share of tilted pairs (tilted draws are rejected more often)."""
        tilted = _draw_tilted(rng, self.conf)
        for _ in range(int(self.conf["max_tries"])):
            H, zoom, angle = _draw_homography(rng, self.size_wh, self.conf, tilted)
            if _acceptable(H, zoom, self.size_wh, self.conf["min_overlap"]):
                return H
        centre = ((self.size_wh[0] - 1) / 2, (self.size_wh[1] - 1) / 2)
        return similarity(zoom, angle, centre, centre)

    def _crop(self, rng: np.random.Generator, H: np.ndarray, src_hw: Sequence[int]) -> np.ndarray:
        """The similarity ``A0`` (3, 3) from source pixels to view-0 pixels: both views' joint footprint, scaled
        to a random ``crop_scale`` of the largest size that fits in the source, at a random place."""
        x0, y0, x1, y1 = _union_box(H, self.size_wh)
        h, w = src_hw
        k = max((x1 - x0) / w, (y1 - y0) / h) / _uniform(rng, self.conf["crop_scale"])  # view-0 px per source px
        left = -0.5 + rng.uniform(0, max(w - (x1 - x0) / k, 0.0))  # the footprint's corner, in source pixels
        top = -0.5 + rng.uniform(0, max(h - (y1 - y0) / k, 0.0))
        return np.array([[k, 0, x0 - k * left], [0, k, y0 - k * top], [0, 0, 1]])

    def _render(self, src: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The view of ``A`` (source -> view pixels), from the source pre-shrunk to about the view's own
        resolution at its centre (no aliasing where the view is zoomed out), and its valid-pixel mask."""
        centre = np.array([(self.size_wh[0] - 1) / 2, (self.size_wh[1] - 1) / 2])
        view_per_source = 1.0 / _local_scale(np.linalg.inv(A), centre)
        shrink = min(1.0, 1.25 * view_per_source)
        if shrink < 1.0:
            h, w = src.shape
            new_wh = (max(1, int(round(w * shrink))), max(1, int(round(h * shrink))))
            A = A @ np.linalg.inv(resize_transform((new_wh[0] / w, new_wh[1] / h)))
            src = cv2.resize(src, new_wh, interpolation=cv2.INTER_AREA)
        view = cv2.warpPerspective(
            src, A, self.size_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        ).astype(np.float32) / 255.0
        mask = _covered(A, src.shape, self.size_wh)
        return np.where(mask, view, 0.0).astype(np.float32), mask

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} homography pairs")
        source = idx % len(self.sources)
        rng = np.random.default_rng(self.seed + idx)
        src = self._load(source)
        H = self._geometry(rng)
        A0 = self._crop(rng, H, src.shape)
        image0, mask0 = self._render(src, A0)
        image1, mask1 = self._render(src, H @ A0)
        if self.conf["photometric"]:
            image0 = photometric_jitter(image0, mask0, rng, self.conf)
            image1 = photometric_jitter(image1, mask1, rng, self.conf)
        name = self.sources[source][0]
        return make_pair_item(image0, image1, mask0, mask1, f"{name}#{idx}a {name}#{idx}b", H_0to1=H)
