"""Shared machinery of the detect-describe-match baselines (kornia matcher contract).

A baseline is split in two steps, each implemented by a subclass:

* :meth:`DetectDescribeMatcher.extract` turns one image into :class:`LocalFeatures`;
* :meth:`DetectDescribeMatcher.match_features` pairs the features of two images.

The base class owns everything that is the same for every baseline: input checks, the loop over the
batch, masks, empty outputs and the output dict of the contract (``keypoints0 (N, 2)``, ``keypoints1 (N, 2)``,
``confidence (N,)``, ``batch_indexes (N,)``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LocalFeatures:
    """Sparse features of one image.

    Attributes:
        keypoints: ``(K, 2)`` float32 (x, y) in input-image pixels, pixel centres at integer coordinates.
        descriptors: ``(K, D)`` float32.
        scores: ``(K,)`` float32 detection scores (higher is better).
    """

    keypoints: Tensor
    descriptors: Tensor
    scores: Tensor

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def select(self, keep: Tensor) -> "LocalFeatures":
        """The subset given by a boolean ``(K,)`` mask or an index tensor."""
        return LocalFeatures(self.keypoints[keep], self.descriptors[keep], self.scores[keep])


def check_image_batch(image: Any, key: str) -> Tensor:
    """Validate one ``(B, 1, H, W)`` (or RGB ``(B, 3, H, W)``) float image batch and return it as grayscale.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: wrong number of dimensions or channels, or an empty image.
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"{key!r} must be a torch.Tensor of shape (B, 1, H, W), got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"{key!r} must be a float tensor with values in [0, 1], got dtype {image.dtype}")
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"{key!r} must have shape (B, 1, H, W) (or (B, 3, H, W)), got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
        raise ValueError(f"{key!r} is empty: shape {tuple(image.shape)}")
    if image.shape[1] == 3:
        weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image * weights).sum(1, keepdim=True)
    return image


def check_pair_input(data: Any) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Validate a kornia-contract input dict.

    Returns:
        ``image0 (B, 1, H0, W0)``, ``image1 (B, 1, H1, W1)``, ``mask0 (B, H0, W0)`` or None, ``mask1`` or None.
    """
    if not isinstance(data, dict):
        raise TypeError(f"a matcher takes a dict with 'image0' and 'image1', got {type(data).__name__}")
    for key in ("image0", "image1"):
        if key not in data:
            raise ValueError(f"missing key {key!r} in the matcher input (keys: {sorted(data)})")
    image0 = check_image_batch(data["image0"], "image0")
    image1 = check_image_batch(data["image1"], "image1")
    if image0.shape[0] != image1.shape[0]:
        raise ValueError(f"image0 and image1 have different batch sizes: {image0.shape[0]} vs {image1.shape[0]}")
    masks = []
    for key, image in (("mask0", image0), ("mask1", image1)):
        mask = data.get(key)
        if mask is not None:
            expected = (image.shape[0], image.shape[2], image.shape[3])
            if not isinstance(mask, Tensor) or tuple(mask.shape) != expected:
                shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"{key!r} must be a tensor of shape (B, H, W) = {expected}, got {shape}")
            mask = mask.bool()
        masks.append(mask)
    return image0, image1, masks[0], masks[1]


def keypoints_in_mask(keypoints: Tensor, mask: Tensor) -> Tensor:
    """``(K,)`` bool: which ``(K, 2)`` keypoints fall on a true pixel of the ``(H, W)`` mask."""
    h, w = mask.shape
    ij = keypoints.round().long()
    x = ij[:, 0].clamp(0, w - 1)
    y = ij[:, 1].clamp(0, h - 1)
    return mask[y, x]


def empty_matches(device: torch.device) -> dict[str, Tensor]:
    """The contract's output when nothing matches."""
    return {
        "keypoints0": torch.zeros((0, 2), dtype=torch.float32, device=device),
        "keypoints1": torch.zeros((0, 2), dtype=torch.float32, device=device),
        "confidence": torch.zeros((0,), dtype=torch.float32, device=device),
        "batch_indexes": torch.zeros((0,), dtype=torch.long, device=device),
    }


def mutual_nearest_neighbours(
    distance: Tensor, ratio_threshold: Optional[float] = None, max_distance: Optional[float] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours with an optional Lowe ratio test and distance threshold.

    Args:
        distance: ``(M, N)`` descriptor distances (lower is closer).
        ratio_threshold: keep a match only if ``d_best / d_second < ratio_threshold`` (in image 1); None = off.
        max_distance: keep a match only if ``d_best <= max_distance``; None = off.

    Returns:
        ``idx0 (S,)`` long, ``idx1 (S,)`` long, ``ratio (S,)`` float (``d_best / d_second``; 0 when image 1 has a
        single descriptor).
    """
    m, n = distance.shape
    if m == 0 or n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=distance.device)
        return empty, empty, torch.zeros(0, dtype=distance.dtype, device=distance.device)
    k = min(2, n)
    best, nn01 = distance.topk(k, dim=1, largest=False)
    nn10 = distance.argmin(dim=0)
    idx0 = torch.arange(m, device=distance.device)
    keep = nn10[nn01[:, 0]] == idx0
    if k == 2:
        ratio = best[:, 0] / best[:, 1].clamp_min(1e-12)
    else:
        ratio = torch.zeros_like(best[:, 0])
    if ratio_threshold is not None:
        keep &= ratio < ratio_threshold
    if max_distance is not None:
        keep &= best[:, 0] <= max_distance
    return idx0[keep], nn01[keep, 0], ratio[keep]


class DetectDescribeMatcher(nn.Module, ABC):
    """Base class of the sparse baselines: extract features per image, match them per pair.

    Subclasses set ``default_conf`` and implement :meth:`extract` and :meth:`match_features`. Constructor keyword
    arguments override ``default_conf``; unknown keys raise ``ValueError``.
    """

    default_conf: dict[str, Any] = {}
    #: features of this many recent images are kept, keyed by pixel content (extraction is deterministic), so that
    #: an image matched against many others is described once
    feature_cache_size: int = 16

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        self._feature_cache: "OrderedDict[bytes, LocalFeatures]" = OrderedDict()
        unknown = sorted(set(conf) - set(self.default_conf))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} got unknown option(s) {unknown}; valid options: {sorted(self.default_conf)}"
            )
        self.conf = SimpleNamespace(**{**self.default_conf, **conf})

    @abstractmethod
    def extract(self, image: Tensor) -> LocalFeatures:
        """Detect and describe one grayscale image ``(1, 1, H, W)`` in [0, 1]."""

    def extract_cached(self, image: Tensor) -> LocalFeatures:
        """:meth:`extract` through a small cache keyed by the image's content, shape and device."""
        if self.feature_cache_size <= 0:
            return self.extract(image)
        digest = hashlib.blake2b(image.detach().float().cpu().numpy().tobytes(), digest_size=16)
        digest.update(f"{tuple(image.shape)}{image.device}".encode())
        key = digest.digest()
        if key in self._feature_cache:
            self._feature_cache.move_to_end(key)
            return self._feature_cache[key]
        feats = self.extract(image)
        self._feature_cache[key] = feats
        if len(self._feature_cache) > self.feature_cache_size:
            self._feature_cache.popitem(last=False)
        return feats

    @abstractmethod
    def match_features(
        self, feats0: LocalFeatures, feats1: LocalFeatures, size0: tuple[int, int], size1: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Match two feature sets of images of ``size = (W, H)``.

        Returns:
            ``idx0 (S,)`` long, ``idx1 (S,)`` long, ``confidence (S,)`` float32 in [0, 1].
        """

    @torch.no_grad()
    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Match a batch of image pairs.

        Args:
            data: ``image0 (B, 1, H0, W0)``, ``image1 (B, 1, H1, W1)`` float in [0, 1]; optional ``mask0 (B, H0, W0)``,
                ``mask1 (B, H1, W1)`` (keypoints on false pixels are dropped).

        Returns:
            ``keypoints0 (N, 2)``, ``keypoints1 (N, 2)`` float32, ``confidence (N,)`` float32, ``batch_indexes (N,)``
            long, with N = 0 when nothing matches.
        """
        image0, image1, mask0, mask1 = check_pair_input(data)
        device = image0.device
        size0 = (int(image0.shape[3]), int(image0.shape[2]))
        size1 = (int(image1.shape[3]), int(image1.shape[2]))
        outputs = []
        for b in range(image0.shape[0]):
            feats0 = self.extract_cached(image0[b : b + 1])
            feats1 = self.extract_cached(image1[b : b + 1])
            if mask0 is not None and len(feats0):
                feats0 = feats0.select(keypoints_in_mask(feats0.keypoints, mask0[b]))
            if mask1 is not None and len(feats1):
                feats1 = feats1.select(keypoints_in_mask(feats1.keypoints, mask1[b]))
            if len(feats0) == 0 or len(feats1) == 0:
                continue
            idx0, idx1, confidence = self.match_features(feats0, feats1, size0, size1)
            if idx0.numel() == 0:
                continue
            outputs.append(
                {
                    "keypoints0": feats0.keypoints[idx0].float(),
                    "keypoints1": feats1.keypoints[idx1].float(),
                    "confidence": confidence.float(),
                    "batch_indexes": torch.full((idx0.numel(),), b, dtype=torch.long, device=device),
                }
            )
        if not outputs:
            return empty_matches(device)
        return {key: torch.cat([o[key] for o in outputs]).to(device) for key in outputs[0]}

    @torch.no_grad()
    def describe(self, image: Tensor) -> Tensor:
        """A global descriptor ``(D,)`` of one image ``(1, C, H, W)`` or ``(C, H, W)``, for retrieval.

        The default pools the image's own local descriptors: the L2-normalised mean of its L2-normalised
        descriptors (a zero vector when nothing is detected). Subclasses may pool a dense feature map instead.
        """
        if image.ndim == 3:
            image = image[None]
        feats = self.extract_cached(check_image_batch(image, "image")[:1])
        if len(feats) == 0:
            return torch.zeros(feats.descriptors.shape[-1], device=image.device)
        return F.normalize(F.normalize(feats.descriptors.float(), dim=-1).mean(0), dim=0)
