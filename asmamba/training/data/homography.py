"""Self-supervised pairs: two random homographic views of one image, with the exact homography between them.

Both views are rendered from the source image: view 0 is a random crop (a similarity ``A0`` from source pixels
to view-0 pixels) and view 1 applies a random homography ``H`` on top (``H @ A0``), so ``H`` maps view-0 pixels
to view-1 pixels exactly. Each view then gets independent photometric changes. Everything random is drawn
from ``numpy.random.default_rng(seed + index)``, so an item is the same whichever worker loads it.

Sources: a folder of images, a list of image files, in-memory arrays, or scikit-image's shipped images
(``"skimage"`` for :data:`SKIMAGE_IMAGES`, or ``"skimage:astronaut,brick"``).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, Union

import cv2
import numpy as np
from torch.utils.data import Dataset

from asmamba.io import list_images, read_image
from asmamba.training.data.common import make_pair_item
from asmamba.training.geometry import resize_transform

PathLike = Union[str, os.PathLike]
SourceSpec = Union[PathLike, np.ndarray, Sequence[Union[PathLike, np.ndarray]]]

#: scikit-image images shipped inside its wheel (no download at run time).
SKIMAGE_IMAGES = ("astronaut", "coffee", "chelsea", "camera", "brick", "grass", "gravel", "rocket", "moon")

default_conf: dict[str, Any] = {
    "output_size": (320, 240),  # (w, h) of both views
    "pairs_per_image": 1,  # dataset length = number of sources * pairs_per_image
    "crop_scale": (0.5, 1.0),  # view-0 crop side, relative to the largest crop of the output's aspect
    "rotation_deg": 25.0,  # in-plane rotation of view 1, uniform in [-r, r]
    "scale": (0.75, 1.33),  # zoom of view 1, log-uniform
    "perspective": 0.12,  # corner displacement of view 1, fraction of the output size
    "translation": 0.1,  # shift of view 1, fraction of the output size
    "min_valid_fraction": 0.35,  # redraw H (up to 20 times) while less of either view is shared
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


def sample_homography(rng: np.random.Generator, size_wh: Sequence[int], conf: dict) -> np.ndarray:
    """A random view-0 -> view-1 homography ``(3, 3)``: perspective corner jitter, then zoom and rotation about the
    image centre, then a shift."""
    w, h = float(size_wh[0]), float(size_wh[1])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    jitter = rng.uniform(-1, 1, (4, 2)) * conf["perspective"] * np.array([w, h])
    P = cv2.getPerspectiveTransform(corners, (corners + jitter).astype(np.float32)).astype(np.float64)
    angle = math.radians(_uniform(rng, (-conf["rotation_deg"], conf["rotation_deg"])))
    zoom = math.exp(_uniform(rng, np.log(conf["scale"])))
    shift = rng.uniform(-1, 1, 2) * conf["translation"] * np.array([w, h])
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = zoom * math.cos(angle), zoom * math.sin(angle)
    similarity = np.array(
        [[c, -s, cx - c * cx + s * cy + shift[0]], [s, c, cy - s * cx - c * cy + shift[1]], [0, 0, 1]]
    )
    H = similarity @ P
    return H / H[2, 2]


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


def photometric_jitter(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, conf: dict) -> np.ndarray:
    """Random brightness, contrast, gamma, blur and noise on a float ``(H, W)`` image in [0, 1] (pixels outside
    ``mask`` stay 0)."""
    out = image.astype(np.float32)
    if rng.uniform() < conf["blur_prob"]:
        out = cv2.GaussianBlur(out, (0, 0), _uniform(rng, conf["blur_sigma"]))
    mean = float(out[mask].mean()) if mask.any() else 0.5
    brightness = _uniform(rng, (-conf["brightness"], conf["brightness"]))
    out = (out - mean) * _uniform(rng, conf["contrast"]) + mean + brightness
    out = np.clip(out, 0.0, 1.0) ** _uniform(rng, conf["gamma"])
    out = out + rng.normal(0.0, _uniform(rng, (0.0, conf["noise_std"])), out.shape).astype(np.float32)
    return np.where(mask, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


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

    def _crop(self, rng: np.random.Generator, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pre-shrunk source and the similarity ``A0`` (3, 3) from its pixels to view-0 pixels."""
        W, H = self.size_wh
        h, w = src.shape
        crop_w = min(w, h * W / H) * _uniform(rng, self.conf["crop_scale"])
        shrink = min(1.0, 1.25 * W / crop_w)  # avoid aliasing when the crop is much larger than the view
        if shrink < 1.0:
            new_wh = (max(1, int(round(w * shrink))), max(1, int(round(h * shrink))))
            to_small = resize_transform((new_wh[0] / w, new_wh[1] / h))
            src = cv2.resize(src, new_wh, interpolation=cv2.INTER_AREA)
            h, w = src.shape
            crop_w *= to_small[0, 0]
        crop_w = min(crop_w, w, h * W / H)
        crop_h = crop_w * H / W
        left = -0.5 + rng.uniform(0, max(w - crop_w, 0.0))
        top = -0.5 + rng.uniform(0, max(h - crop_h, 0.0))
        k = W / crop_w
        A0 = np.array([[k, 0, -left * k - 0.5], [0, k, -top * k - 0.5], [0, 0, 1]])
        return src, A0

    def _render(self, src: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        src, A0 = self._crop(rng, self._load(source))
        min_shared = float(self.conf["min_valid_fraction"])
        for _ in range(20):
            H = sample_homography(rng, self.size_wh, self.conf)
            shared1 = _covered(H @ A0, src.shape, self.size_wh, step=8).mean()
            shared0 = _covered(np.linalg.inv(H), (self.size_wh[1], self.size_wh[0]), self.size_wh, step=8).mean()
            if min(shared0, shared1) >= min_shared:
                break
        image0, mask0 = self._render(src, A0)
        image1, mask1 = self._render(src, H @ A0)
        if self.conf["photometric"]:
            image0 = photometric_jitter(image0, mask0, rng, self.conf)
            image1 = photometric_jitter(image1, mask1, rng, self.conf)
        name = self.sources[source][0]
        return make_pair_item(image0, image1, mask0, mask1, f"{name}#{idx}a {name}#{idx}b", H_0to1=H)
