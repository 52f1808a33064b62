"""Test-time scale adaptation: match again after resizing the image that appears zoomed in.

A detector-free matcher compares the two images cell by cell at one resolution, so a strong zoom between them
(one 8 px cell of image 0 covering 3x3 cells of image 1) is outside what its coarse stage can match. The fix needs
no training: estimate the scale ratio between the images, shrink the zoomed-in one by that ratio so both show the
scene at one scale, match that pair, and map the keypoints back to the original pixels.

>>> import functools, torch
>>> from asmamba import ASMamba
>>> from asmamba.scale_adaptation import ScaleAdaptConfig, match_with_scale_adaptation
>>> matcher = ASMamba()
>>> single = functools.partial(matcher.forward, scale_adapt=False)      # one pass, no adaptation
>>> out, info = match_with_scale_adaptation(single, {"image0": img0, "image1": img1}, config=ScaleAdaptConfig())
>>> info[0].ratio, info[0].chosen       # e.g. (3.02, 2.99): image 1 is a 3x zoom, the pass at ratio ~3 won

``ASMamba`` runs this on every call when ``scale_adapt.enabled`` is set in its config (configs/model/base.yaml).

How a pass is judged, per pair of the batch:

1. Its matches are fitted with a RANSAC homography *at the resolution they were matched at*; the inliers are the
   matches whose transfer error is below ``ransac_threshold`` pixels in both directions. A pass is *trusted* when it
   has at least ``min_inliers`` inliers making at least ``min_inlier_fraction`` of its matches.
2. The scale ratio of image 1 to image 0 is the homography's local scale ``sqrt(|det J|)`` (``J`` its Jacobian)
   at the inliers' centroid: above 1, image 1 shows the scene larger (zoomed in). The spread of the keypoints is
   not used: when a zoom defeats the first pass, its (wrong) matches spread over both images alike.
3. The first pass's ratio, when trusted and beyond ``min_ratio`` either way, is the one candidate. An untrusted
   first pass (a zoom of about 3x or more leaves no signal at all in the shipped model's matches) tries the
   ``search_ratios`` both ways, in order, instead.
4. An extra pass replaces the best so far only when it is trusted and has more inliers. If its own residual
   ratio is still beyond ``refine_ratio``, one more pass runs at the combined ratio; otherwise the search stops.
   At most ``max_extra_passes`` run per pair. The first pass is returned unchanged (no extra matching, one
   RANSAC) when no candidate arises or none beats it.
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
        search_ratios: ratios tried both ways, in order, when the first pass is not trusted (empty: no search);
            the search stops at the first trusted pass that leaves no ratio above ``refine_ratio``.
        refine_ratio: a winning extra pass whose own ratio is still beyond this (either way) is followed by one at
            the combined ratio.
        max_extra_passes: at most this many passes after the first, per pair.
    """

    enabled: bool = True
    min_ratio: float = 1.5
    max_ratio: float = 8.0
    min_inliers: int = 24
    min_inlier_fraction: float = 0.2
    ransac_threshold: float = 4.0
    search_ratios: Sequence[float] = field(default_factory=lambda: [2.5, 5.0])
    refine_ratio: float = 1.15
    max_extra_passes: int = 4

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
        if not self.refine_ratio > 1.0:
            raise ValueError(f"scale_adapt.refine_ratio must be > 1, got {self.refine_ratio}")
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


def _unscale(points: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Points of a resized image back to the original pixels (inverse of ``x' = (x + 0.5) * s - 0.5``)."""
    if scale == (1.0, 1.0):
        return points
    s = points.new_tensor(scale)
    return (points + 0.5) / s - 0.5


@dataclass
class PassResult:
    """One matching pass of a pair. ``ratio`` is the candidate it matched at (image 1 relative to image 0; the
    first pass has 1.0), ``estimate`` its homography fit at the matched resolution, ``total_ratio`` the ratio
    implied by it (``ratio * estimate.ratio``)."""

    ratio: float
    estimate: ScaleEstimate
    keypoints0: torch.Tensor
    keypoints1: torch.Tensor
    confidence: torch.Tensor

    @property
    def total_ratio(self) -> float:
        return self.ratio * self.estimate.ratio


@dataclass
class ScaleAdaptInfo:
    """What the adaptation did for one pair: ``ratio`` its best estimate of the scale of image 1 relative to
    image 0 (NaN when no pass was trusted), ``chosen`` the candidate ratio of the returned pass (1.0: the first
    pass), ``passes`` every pass in order, ``chosen_index`` the returned one's index in ``passes``."""

    ratio: float
    chosen: float
    passes: list[PassResult]
    chosen_index: int = 0


def _pair(data: Mapping[str, Any], b: int) -> dict:
    pair = {"image0": data["image0"][b : b + 1], "image1": data["image1"][b : b + 1]}
    if "mask0" in data and "mask1" in data:
        pair["mask0"], pair["mask1"] = data["mask0"][b : b + 1], data["mask1"][b : b + 1]
    return pair


def _clamp_ratio(ratio: float, pair: Mapping[str, torch.Tensor], config: ScaleAdaptConfig) -> float:
    """Bound a candidate ratio by ``max_ratio`` and by the smallest size the shrunk image may take."""
    key = "image1" if ratio > 1 else "image0"
    limit = min(pair[key].shape[-2:]) / MIN_RESIZED_SIDE
    r = min(max(ratio, 1.0 / ratio), config.max_ratio, max(limit, 1.0))
    return r if ratio > 1 else 1.0 / r


def _run_pass(match_fn: MatchFn, pair: dict, ratio: float, config: ScaleAdaptConfig) -> PassResult:
    """Match ``pair`` with the zoomed-in image shrunk by ``ratio`` (image 1 when > 1, image 0 when < 1)."""
    key = "1" if ratio > 1 else "0"
    factor = 1.0 / ratio if ratio > 1 else ratio
    resized = dict(pair)
    resized[f"image{key}"], scale = resize_image(pair[f"image{key}"], factor)
    if f"mask{key}" in pair:
        size = resized[f"image{key}"].shape[-2:]
        resized[f"mask{key}"] = F.interpolate(pair[f"mask{key}"][:, None].float(), size=size, mode="nearest")[:, 0]
    out = match_fn(resized)
    k0, k1 = out["keypoints0"], out["keypoints1"]
    estimate = estimate_scale_ratio(k0, k1, config.ransac_threshold)  # at the matched resolution
    if key == "1":
        k1 = _unscale(k1, scale)
    else:
        k0 = _unscale(k0, scale)
    return PassResult(ratio, estimate, k0, k1, out["confidence"])


def _adapt_pair(match_fn: MatchFn, pair: dict, first: PassResult, config: ScaleAdaptConfig) -> ScaleAdaptInfo:
    passes = [first]
    best = first
    if first.estimate.trusted(config):
        r = first.estimate.ratio
        queue = [r] if max(r, 1.0 / r) >= config.min_ratio else []
    else:
        queue = [c for s in config.search_ratios for c in (s, 1.0 / s)]
    tried = [1.0]  # the first pass
    while queue and len(passes) - 1 < config.max_extra_passes:
        ratio = _clamp_ratio(queue.pop(0), pair, config)
        if any(abs(math.log(ratio / t)) < math.log(1.1) for t in tried):  # already matched at about this ratio
            continue
        tried.append(ratio)
        result = _run_pass(match_fn, pair, ratio, config)
        passes.append(result)
        if not result.estimate.trusted(config) or result.estimate.inliers <= best.estimate.inliers:
            continue
        best = result
        residual = result.estimate.ratio
        if max(residual, 1.0 / residual) >= config.refine_ratio:
            queue = [result.total_ratio]  # refine: the shrink left a scale ratio between the images
        else:
            break  # the images now match at one scale: stop searching
    trusted = [p for p in passes if p.estimate.trusted(config)]
    ratio = max(trusted, key=lambda p: p.estimate.inliers).total_ratio if trusted else float("nan")
    return ScaleAdaptInfo(ratio, best.ratio, passes, passes.index(best))


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
        start = PassResult(1.0, estimate_scale_ratio(k0, k1, config.ransac_threshold), k0, k1, conf)
        info = _adapt_pair(match_fn, _pair(data, b), start, config)
        chosen = info.passes[info.chosen_index]
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
