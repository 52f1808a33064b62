"""Test-time scale adaptation: match again after resizing one image by the scale ratio between the two.

A detector-free matcher compares the two images cell by cell at one resolution, so a strong zoom between them
(one 8 px cell of image 0 covering 3x3 cells of image 1) is outside what its coarse stage can match. The fix needs
no training: estimate the scale ratio between the images, resize one of them by that ratio so both show the scene
at one scale, match that pair, and map the keypoints back to the original pixels.

>>> import functools, torch
>>> from asmamba import ASMamba
>>> from asmamba.scale_adaptation import ScaleAdaptConfig, match_with_scale_adaptation
>>> matcher = ASMamba()
>>> single = functools.partial(matcher.forward, scale_adapt=False)      # one pass, no adaptation
>>> config = ScaleAdaptConfig(search_ratios=[2.5, 5.0])               # also search when the first pass fails
>>> out, info = match_with_scale_adaptation(single, {"image0": img0, "image1": img1}, config=config)
>>> info[0].ratio, info[0].chosen.kind    # e.g. (3.01, 'crop'): image 1 is a 3x zoom of part of image 0

``ASMamba`` runs this on every call when ``scale_adapt.enabled`` is set in its config (configs/model/base.yaml),
or with ``matcher(data, scale_adapt=True)``.

Per pair of the batch:

1. A pass's matches are fitted with a RANSAC homography *at the resolution they were matched at*; the inliers are
   the matches whose transfer error is below ``ransac_threshold`` pixels in both directions. A pass is *trusted*
   when it has at least ``min_inliers`` inliers making at least ``min_inlier_fraction`` of its matches.
2. The scale ratio of image 1 to image 0 is the homography's local scale ``sqrt(|det J|)`` (``J`` its Jacobian)
   at the inliers' centroid: above 1, image 1 shows the scene larger (zoomed in). The spread of the keypoints is
   not used: when a zoom defeats the first pass, its (wrong) matches spread over both images alike.
3. A trusted first pass whose ratio is beyond ``min_ratio`` either way guides a *crop pass*: the zoomed-out image
   is cropped to the footprint of the other (through the fitted homography, plus ``crop_margin``) and enlarged
   by the ratio, so both images show the overlap at one scale and at the zoomed-in image's full resolution.
4. With ``search_ratios`` (off by default: it costs passes on every pair whose first pass is untrusted, zoomed or
   not), an untrusted first pass (a zoom of about 3x or more leaves no signal at all in the shipped model's
   matches) starts a search: *shrink passes* with the image that would be zoomed in shrunk by each ratio, both
   ways, in order, until one is trusted; that one guides a crop pass as in 3.
5. The trusted pass with the most inliers is returned, if it has more than the first pass; otherwise the first
   pass is returned unchanged. Without a strong ratio in a trusted first pass (most pairs) that costs one RANSAC
   and no extra matching. Keypoints of every pass are mapped back to the original pixels exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PassResult",
    "ScaleAdaptConfig",
    "ScaleAdaptInfo",
    "ScaleEstimate",
    "asmamba_adapted",
    "asmamba_single_pass",
    "estimate_scale_ratio",
    "match_with_scale_adaptation",
    "resize_image",
]

MatchFn = Callable[[dict], Mapping[str, torch.Tensor]]

#: the resized image keeps at least this many pixels on its short side (the matcher needs >= 32)
MIN_RESIZED_SIDE = 48


@dataclass
class ScaleAdaptConfig:
    """Settings of :func:`match_with_scale_adaptation` (the ``scale_adapt`` section of the model config).

    Attributes:
        enabled: run the adaptation in ``ASMamba.forward`` (the function itself ignores it).
        min_ratio: adapt only when the estimated ratio is at least this, or at most its inverse.
        max_ratio: largest ratio a pass resizes by (also bounded so the resized image keeps
            :data:`MIN_RESIZED_SIDE` pixels).
        min_inliers: a pass is trusted with at least this many homography inliers ...
        min_inlier_fraction: ... making at least this fraction of its matches.
        ransac_threshold: inlier threshold in pixels at the resolution a pass matched at.
        search_ratios: ratios tried both ways, in order, when the first pass is not trusted (empty, the default:
            no search); the search stops at the first trusted pass. ``[2.5, 5.0]`` recovers zooms of 3-4x, at up to
            four extra passes on every pair whose first pass is untrusted, zoomed or not.
        crop_margin: the crop around the zoomed-in image's footprint adds this fraction of the footprint's size on
            each side.
        crop_thin: keep one match (the most confident) per 8 px cell of the enlarged image's original pixels: the
            density of a plain pass, which per-image keypoint quantisation (SfM, hloc) relies on; the crop pass
            otherwise puts ``ratio**2`` times as many matches there and its points crowd out the other pairs'.
        max_extra_passes: at most this many passes after the first, per pair.
    """

    enabled: bool = True
    min_ratio: float = 1.5
    max_ratio: float = 8.0
    min_inliers: int = 24
    min_inlier_fraction: float = 0.2
    ransac_threshold: float = 4.0
    search_ratios: Sequence[float] = field(default_factory=list)
    crop_margin: float = 0.1
    crop_thin: bool = True
    max_extra_passes: int = 5

    def __post_init__(self) -> None:
        if not self.min_ratio > 1.0:
            raise ValueError(f"scale_adapt.min_ratio must be > 1, got {self.min_ratio}")
        if not self.max_ratio >= self.min_ratio:
            raise ValueError(f"scale_adapt.max_ratio ({self.max_ratio}) must be >= min_ratio ({self.min_ratio})")
        if self.min_inliers < 4:
            raise ValueError(f"scale_adapt.min_inliers must be >= 4 (a homography needs 4), got {self.min_inliers}")
        if not 0.0 <= self.min_inlier_fraction <= 1.0:
            raise ValueError(f"scale_adapt.min_inlier_fraction must lie in [0, 1], got {self.min_inlier_fraction}")
        if not self.ransac_threshold > 0:
            raise ValueError(f"scale_adapt.ransac_threshold must be > 0, got {self.ransac_threshold}")
        if any(not float(r) > 1.0 for r in self.search_ratios):
            raise ValueError(f"scale_adapt.search_ratios must all be > 1, got {list(self.search_ratios)}")
        if not 0.0 <= self.crop_margin <= 1.0:
            raise ValueError(f"scale_adapt.crop_margin must lie in [0, 1], got {self.crop_margin}")
        if self.max_extra_passes < 0:
            raise ValueError(f"scale_adapt.max_extra_passes must be >= 0, got {self.max_extra_passes}")
        self.search_ratios = [float(r) for r in self.search_ratios]

    @classmethod
    def from_mapping(cls, conf: Optional[Mapping[str, Any]]) -> "ScaleAdaptConfig":
        """From a dict or DictConfig section; unknown keys raise a ValueError naming them."""
        if conf is None:
            return cls()
        conf = dict(conf)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(conf) - known)
        if unknown:
            raise ValueError(f"unknown scale_adapt keys {unknown}; known: {sorted(known)}")
        if "search_ratios" in conf:
            conf["search_ratios"] = list(conf["search_ratios"])
        return cls(**conf)


@dataclass
class ScaleEstimate:
    """A homography fitted to one pass's matches.

    Attributes:
        ratio: local scale of image 1 relative to image 0 at the inliers' centroid (> 1: image 1 zoomed in);
            NaN without a usable homography.
        inliers: matches within the threshold both ways.
        matches: matches given.
        H: ``(3, 3)`` image-0 -> image-1 homography, or None.
    """

    ratio: float
    inliers: int
    matches: int
    H: Optional[np.ndarray] = None

    def trusted(self, config: ScaleAdaptConfig) -> bool:
        """Enough inliers, and a large enough share of the matches, and a finite ratio."""
        return (
            math.isfinite(self.ratio)
            and self.inliers >= config.min_inliers
            and self.inliers >= config.min_inlier_fraction * max(self.matches, 1)
        )


def _transfer(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = pts @ H[:, :2].T + H[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return q[:, :2] / q[:, 2:]


def _local_scale(H: np.ndarray, point: np.ndarray) -> float:
    """``sqrt(|det J|)`` of the homography's Jacobian at ``point`` (x, y)."""
    x, y = float(point[0]), float(point[1])
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    if abs(w) < 1e-12:
        return float("nan")
    u = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / w
    v = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / w
    J = (H[:2, :2] - np.outer([u, v], H[2, :2])) / w
    det = float(np.linalg.det(J))
    return math.sqrt(abs(det)) if math.isfinite(det) and det != 0.0 else float("nan")


def estimate_scale_ratio(
    kpts0: np.ndarray | torch.Tensor, kpts1: np.ndarray | torch.Tensor, threshold: float = 4.0
) -> ScaleEstimate:
    """Scale ratio of image 1 to image 0 from matches, by a RANSAC homography (OpenCV, deterministic).

    Args:
        kpts0, kpts1: ``(N, 2)`` matched ``(x, y)`` pixels.
        threshold: inlier threshold in pixels; an inlier's transfer error is below it in image 1 (forward)
            and in image 0 (backward).
    Returns:
        the :class:`ScaleEstimate` (ratio NaN and 0 inliers with fewer than 4 matches or no homography).
    Raises:
        ValueError: the arrays are not ``(N, 2)`` of one length.
    """
    k0 = np.asarray(kpts0.detach().cpu() if isinstance(kpts0, torch.Tensor) else kpts0, np.float64)
    k1 = np.asarray(kpts1.detach().cpu() if isinstance(kpts1, torch.Tensor) else kpts1, np.float64)
    if k0.ndim != 2 or k0.shape[1:] != (2,) or k0.shape != k1.shape:
        raise ValueError(f"keypoints must be two (N, 2) arrays of one length, got {k0.shape} and {k1.shape}")
    n = len(k0)
    if n < 4:
        return ScaleEstimate(float("nan"), 0, n)
    H, _ = cv2.findHomography(k0, k1, cv2.RANSAC, float(threshold), maxIters=2000, confidence=0.999)
    if H is None or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
        return ScaleEstimate(float("nan"), 0, n)
    forward = np.linalg.norm(_transfer(H, k0) - k1, axis=1)
    backward = np.linalg.norm(_transfer(np.linalg.inv(H), k1) - k0, axis=1)
    inlier = (forward < threshold) & (backward < threshold)  # NaN (points at infinity) compare False
    count = int(inlier.sum())
    if count < 4:
        return ScaleEstimate(float("nan"), count, n, H)
    return ScaleEstimate(_local_scale(H, k0[inlier].mean(axis=0)), count, n, H)


def resize_image(image: torch.Tensor, factor: float) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize ``(B, C, H, W)`` by ``factor`` (< 1 shrinks, antialiased bilinear).

    Returns:
        the image and the exact per-axis scale ``(sx, sy) = new_size / old_size``, so a point maps as
        ``x' = (x + 0.5) * sx - 0.5`` (pixel centres at integers; what ``F.interpolate`` with ``size`` does).
    """
    h, w = image.shape[-2:]
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    if (new_h, new_w) == (h, w):
        return image, (1.0, 1.0)
    out = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=factor < 1)
    return out.clamp_(0.0, 1.0), (new_w / w, new_h / h)


def _view(
    image: torch.Tensor, mask: Optional[torch.Tensor], box: Optional[Sequence[int]], factor: float
) -> tuple[torch.Tensor, Optional[torch.Tensor], np.ndarray]:
    """Crop ``image`` (and ``mask``) to ``box = (x0, y0, x1, y1)`` (integer pixel bounds, None: whole image), then
    resize by ``factor``. Returns both and the ``(3, 3)`` map ``T`` from original to new pixels:
    ``x' = (x - x0 + 0.5) * sx - 0.5``."""
    x0, y0 = 0, 0
    if box is not None:
        x0, y0, x1, y1 = box
        image = image[..., y0:y1, x0:x1]
        mask = mask[..., y0:y1, x0:x1] if mask is not None else None
    image, (sx, sy) = resize_image(image, factor)
    if mask is not None and (sx, sy) != (1.0, 1.0):
        mask = F.interpolate(mask[:, None].float(), size=image.shape[-2:], mode="nearest")[:, 0]
    T = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]])
    return image, mask, T


def _back(points: torch.Tensor, T: np.ndarray) -> torch.Tensor:
    """Points of a view back to original pixels (``T`` is axis-aligned: a scale and a shift per axis)."""
    if np.array_equal(T, np.eye(3)):
        return points
    scale = points.new_tensor([T[0, 0], T[1, 1]])
    shift = points.new_tensor([T[0, 2], T[1, 2]])
    return (points - shift) / scale


@dataclass
class PassResult:
    """One matching pass of a pair.

    Attributes:
        kind: ``"first"``, ``"shrink"`` (the zoomed-in image shrunk) or ``"crop"`` (the zoomed-out image cropped to
            the other's footprint and enlarged).
        T0, T1: ``(3, 3)`` maps from each image's original pixels to the pixels it was matched at.
        estimate: the homography fit at the matched resolution.
        keypoints0, keypoints1, confidence: the pass's matches, keypoints in original pixels.
    """

    kind: str
    T0: np.ndarray
    T1: np.ndarray
    estimate: ScaleEstimate
    keypoints0: torch.Tensor
    keypoints1: torch.Tensor
    confidence: torch.Tensor

    @property
    def ratio(self) -> float:
        """The zoom of image 1 relative to image 0 that the pass's resizes undo: image 0's resize over image 1's
        (1.0 for the first pass; 3.0 for image 1 shrunk 3x or image 0 enlarged 3x)."""
        return math.sqrt(abs(np.linalg.det(self.T0[:2, :2]) / np.linalg.det(self.T1[:2, :2])))

    @property
    def total_ratio(self) -> float:
        """The scale of image 1 relative to image 0 in original pixels that this pass's matches imply."""
        return self.estimate.ratio * self.ratio

    def homography(self) -> Optional[np.ndarray]:
        """The fitted homography in original pixels (image 0 -> image 1), or None."""
        H = self.estimate.H
        return None if H is None else np.linalg.inv(self.T1) @ H @ self.T0


@dataclass
class ScaleAdaptInfo:
    """What the adaptation did for one pair: ``ratio`` its best estimate of the scale of image 1 relative to
    image 0 (NaN when no pass was trusted), ``passes`` every pass in order, ``chosen_index`` the returned one's
    index in ``passes`` (0: the first pass)."""

    ratio: float
    passes: list[PassResult]
    chosen_index: int = 0

    @property
    def chosen(self) -> PassResult:
        return self.passes[self.chosen_index]


def _pair(data: Mapping[str, Any], b: int) -> dict:
    """Pair ``b`` alone; with masks, each image cut to the top-left rectangle holding its mask's nonzero pixels
    (padding sits at the bottom and right, kornia's layout), so a padded pair adapts exactly as the bare one and
    keypoints keep their coordinates."""
    pair = {"image0": data["image0"][b : b + 1], "image1": data["image1"][b : b + 1]}
    if "mask0" in data and "mask1" in data:
        for k in ("0", "1"):
            mask = data[f"mask{k}"][b : b + 1] != 0
            h = int(mask.any(dim=2).nonzero()[:, 1].max()) + 1 if mask.any() else 1
            w = int(mask.any(dim=1).nonzero()[:, 1].max()) + 1 if mask.any() else 1
            pair[f"image{k}"] = pair[f"image{k}"][..., :h, :w]
            pair[f"mask{k}"] = data[f"mask{k}"][b : b + 1, :h, :w]
    return pair


def _match_views(match_fn: MatchFn, pair: dict, kind: str, views: dict, config: ScaleAdaptConfig) -> PassResult:
    """Match ``pair`` with image ``k`` replaced by its view ``views[k] = (box, factor)`` (the other kept)."""
    data, T = dict(pair), {"0": np.eye(3), "1": np.eye(3)}
    for k, (box, factor) in views.items():
        data[f"image{k}"], mask, T[k] = _view(pair[f"image{k}"], pair.get(f"mask{k}"), box, factor)
        if mask is not None:
            data[f"mask{k}"] = mask
    out = match_fn(data)
    k0, k1 = out["keypoints0"], out["keypoints1"]
    estimate = estimate_scale_ratio(k0, k1, config.ransac_threshold)  # at the matched resolution
    return PassResult(kind, T["0"], T["1"], estimate, _back(k0, T["0"]), _back(k1, T["1"]), out["confidence"])


def _shrink_pass(match_fn: MatchFn, pair: dict, ratio: float, config: ScaleAdaptConfig) -> Optional[PassResult]:
    """The zoomed-in image (1 when ``ratio`` > 1, else 0) shrunk by ``ratio``, bounded by ``max_ratio`` and by
    :data:`MIN_RESIZED_SIDE` (None when that leaves no useful shrink)."""
    k = "1" if ratio > 1 else "0"
    limit = max(min(pair[f"image{k}"].shape[-2:]) / MIN_RESIZED_SIDE, 1.0)
    r = min(max(ratio, 1.0 / ratio), config.max_ratio, limit)
    if r < 1.2:
        return None  # too small to shrink by any useful ratio
    return _match_views(match_fn, pair, "shrink", {k: (None, 1.0 / r)}, config)


def _crop_pass(
    match_fn: MatchFn, pair: dict, H: np.ndarray, ratio: float, config: ScaleAdaptConfig
) -> Optional[PassResult]:
    """The zoomed-out image cropped to the footprint of the other (through ``H``, image 0 -> image 1, original
    pixels), with ``crop_margin`` on each side, and enlarged by ``ratio``: both images then show the overlap at one
    scale and at the zoomed-in image's full resolution. None when the footprint is unusable."""
    k, other = ("0", "1") if ratio > 1 else ("1", "0")
    to_k = np.linalg.inv(H) if k == "0" else H  # maps the other image's pixels into image k
    h, w = pair[f"image{other}"].shape[-2:]
    edges = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    q = edges @ to_k[:, :2].T + to_k[:, 2]
    if not (q[:, 2] > 1e-9).all():
        return None  # the footprint crosses the horizon: no bounded crop
    foot = q[:, :2] / q[:, 2:]
    lo, hi = foot.min(axis=0), foot.max(axis=0)
    pad = config.crop_margin * (hi - lo)
    hk, wk = pair[f"image{k}"].shape[-2:]
    x0, y0 = (max(0, math.floor(v)) for v in lo - pad)
    x1, y1 = min(wk, math.ceil(hi[0] + pad[0])), min(hk, math.ceil(hi[1] + pad[1]))
    factor = min(max(ratio, 1.0 / ratio), config.max_ratio, 2.0 * max(h, w) / max(x1 - x0, y1 - y0))
    if min(x1 - x0, y1 - y0) * factor < MIN_RESIZED_SIDE:
        return None
    result = _match_views(match_fn, pair, "crop", {k: ((x0, y0, x1, y1), factor)}, config)
    if config.crop_thin:
        keep = _one_per_cell(result.keypoints0 if k == "0" else result.keypoints1, result.confidence)
        result.keypoints0, result.keypoints1 = result.keypoints0[keep], result.keypoints1[keep]
        result.confidence = result.confidence[keep]
    return result


def _one_per_cell(points: torch.Tensor, confidence: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """Indices of the most confident point in each ``cell``-pixel cell (pixel edges at ``-0.5``), in input order."""
    if len(points) == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device)
    ij = torch.floor((points.detach().double() + 0.5) / cell).long()
    key = (ij[:, 1] - ij[:, 1].min()) * (ij[:, 0].max() - ij[:, 0].min() + 1) + (ij[:, 0] - ij[:, 0].min())
    order = torch.argsort(confidence.detach().double(), descending=True, stable=True)
    _, first = torch.unique(key[order], return_inverse=True)
    best = torch.full((int(first.max()) + 1,), len(order), dtype=torch.long, device=points.device)
    best.scatter_reduce_(0, first, torch.arange(len(order), device=points.device), reduce="amin")
    return torch.sort(order[best]).values


def _adapt_pair(match_fn: MatchFn, pair: dict, first: PassResult, config: ScaleAdaptConfig) -> ScaleAdaptInfo:
    passes = [first]

    def strong(ratio: float) -> bool:
        return math.isfinite(ratio) and max(ratio, 1.0 / ratio) >= config.min_ratio

    guide = first if first.estimate.trusted(config) else None  # the pass whose homography places the crop
    if guide is None:
        for s in config.search_ratios:
            for ratio in (s, 1.0 / s):
                if guide is None and len(passes) - 1 < config.max_extra_passes - 1:
                    result = _shrink_pass(match_fn, pair, ratio, config)
                    if result is not None:
                        passes.append(result)
                        guide = result if result.estimate.trusted(config) else None
    if guide is not None and strong(guide.total_ratio) and len(passes) - 1 < config.max_extra_passes:
        crop = _crop_pass(match_fn, pair, guide.homography(), guide.total_ratio, config)
        if crop is not None:
            passes.append(crop)
    trusted = [i for i, p in enumerate(passes) if p.estimate.trusted(config)]
    best = max(trusted, key=lambda i: passes[i].estimate.inliers) if trusted else 0
    if passes[best].estimate.inliers <= first.estimate.inliers:
        best = 0  # an extra pass must beat the first one
    ratio = passes[best].total_ratio if trusted else float("nan")
    return ScaleAdaptInfo(ratio, passes, best)


def match_with_scale_adaptation(
    match_fn: MatchFn,
    data: Mapping[str, Any],
    first: Optional[Mapping[str, torch.Tensor]] = None,
    config: Optional[ScaleAdaptConfig] = None,
) -> tuple[dict[str, torch.Tensor], list[ScaleAdaptInfo]]:
    """Match a batch of pairs with test-time scale adaptation (see the module docstring).

    Args:
        match_fn: one plain matching pass under the kornia contract (``{"image0", "image1"[, "mask0", "mask1"]}``
            -> ``keypoints0``, ``keypoints1``, ``confidence``, ``batch_indexes``), e.g.
            ``functools.partial(ASMamba().forward, scale_adapt=False)``; it is called on single pairs for the extra
            passes.
        data: ``image0``, ``image1`` ``(B, C, H, W)`` in [0, 1], optional ``mask0``, ``mask1`` ``(B, H, W)``.
        first: the first pass's output for ``data`` when already computed (else ``match_fn(data)`` is called).
        config: the settings (default :class:`ScaleAdaptConfig`).
    Returns:
        the contract outputs (keypoints in the original pixels of ``data``'s images, pairs in batch order) and one
        :class:`ScaleAdaptInfo` per pair.
    Raises:
        ValueError: ``data`` lacks an image or the first pass's output lacks a contract key.
    """
    config = config or ScaleAdaptConfig()
    for key in ("image0", "image1"):
        if key not in data:
            raise ValueError(f"scale adaptation needs {key!r} in the input (keys given: {sorted(data)})")
    if first is None:
        first = match_fn(dict(data))
    missing = [k for k in ("keypoints0", "keypoints1", "confidence", "batch_indexes") if k not in first]
    if missing:
        raise ValueError(f"the first pass's output lacks {missing}")
    B = data["image0"].shape[0]
    infos: list[ScaleAdaptInfo] = []
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("keypoints0", "keypoints1", "confidence", "batch_indexes")}
    for b in range(B):
        sel = first["batch_indexes"] == b
        k0, k1, conf = first["keypoints0"][sel], first["keypoints1"][sel], first["confidence"][sel]
        estimate = estimate_scale_ratio(k0, k1, config.ransac_threshold)
        start = PassResult("first", np.eye(3), np.eye(3), estimate, k0, k1, conf)
        info = _adapt_pair(match_fn, _pair(data, b), start, config)
        chosen = info.chosen
        infos.append(info)
        parts["keypoints0"].append(chosen.keypoints0.to(k0.dtype))
        parts["keypoints1"].append(chosen.keypoints1.to(k1.dtype))
        parts["confidence"].append(chosen.confidence.to(conf.dtype))
        parts["batch_indexes"].append(torch.full((len(chosen.keypoints0),), b, dtype=torch.long, device=k0.device))
    out = {k: torch.cat(v) if v else first[k][:0] for k, v in parts.items()}
    return out, infos


def asmamba_adapted(**kwargs: Any) -> torch.nn.Module:
    """``ASMamba`` (shipped weights) with ``scale_adapt.enabled=true``: a matcher factory for the command line,
    e.g. ``asmamba eval homography DIR --matcher asmamba.scale_adaptation:asmamba_adapted``."""
    from asmamba import ASMamba

    overrides = list(kwargs.pop("overrides", None) or []) + ["scale_adapt.enabled=true"]
    return ASMamba(overrides=overrides, **kwargs)


def asmamba_single_pass(**kwargs: Any) -> torch.nn.Module:
    """``ASMamba`` (shipped weights) with ``scale_adapt.enabled=false``: one matching pass, whatever the default."""
    from asmamba import ASMamba

    overrides = list(kwargs.pop("overrides", None) or []) + ["scale_adapt.enabled=false"]
    return ASMamba(overrides=overrides, **kwargs)
