"""OpenCV SIFT + mutual nearest neighbours + Lowe's ratio test: the weights-free baseline."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from .base import DetectDescribeMatcher, LocalFeatures, mutual_nearest_neighbours


class SIFTMatcher(DetectDescribeMatcher):
    """SIFT keypoints (OpenCV), RootSIFT descriptors, mutual nearest neighbours with a ratio test.

    ``confidence = 1 - d_best / d_second`` (so a ratio threshold of 0.8 keeps matches with confidence > 0.2).
    """

    default_conf: dict[str, Any] = {
        "max_keypoints": 8192,  # strongest responses kept (OpenCV's nfeatures); 0 = all
        "contrast_threshold": 0.02,  # OpenCV's default is 0.04; lower finds more points on textureless scenes
        "edge_threshold": 10.0,
        "n_octave_layers": 3,
        "sigma": 1.6,
        "root_sift": True,  # Hellinger kernel (Arandjelovic & Zisserman 2012): L1-normalise, sqrt
        "ratio_threshold": 0.8,  # Lowe's ratio; None disables
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        if self.conf.max_keypoints < 0:
            raise ValueError(f"max_keypoints must be >= 0, got {self.conf.max_keypoints}")
        self._sift = cv2.SIFT_create(
            nfeatures=int(self.conf.max_keypoints),
            nOctaveLayers=int(self.conf.n_octave_layers),
            contrastThreshold=float(self.conf.contrast_threshold),
            edgeThreshold=float(self.conf.edge_threshold),
            sigma=float(self.conf.sigma),
        )

    def extract(self, image: Tensor) -> LocalFeatures:
        """``image (1, 1, H, W)`` in [0, 1] -> keypoints ``(K, 2)``, descriptors ``(K, 128)``, scores ``(K,)``."""
        gray = (image[0, 0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        cv_keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        if descriptors is None or len(cv_keypoints) == 0:
            empty = torch.zeros((0, 2), dtype=torch.float32, device=image.device)
            return LocalFeatures(empty, torch.zeros((0, 128), device=image.device), torch.zeros(0, device=image.device))
        xy = np.array([kp.pt for kp in cv_keypoints], dtype=np.float32)
        response = np.array([kp.response for kp in cv_keypoints], dtype=np.float32)
        desc = torch.from_numpy(descriptors.astype(np.float32))
        if self.conf.root_sift:
            desc = torch.sqrt(desc / desc.sum(-1, keepdim=True).clamp_min(1e-12))
        else:
            desc = torch.nn.functional.normalize(desc, dim=-1)
        return LocalFeatures(
            torch.from_numpy(xy).to(image.device), desc.to(image.device), torch.from_numpy(response).to(image.device)
        )

    def match_features(
        self, feats0: LocalFeatures, feats1: LocalFeatures, size0: tuple[int, int], size1: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        distance = torch.cdist(feats0.descriptors, feats1.descriptors)
        idx0, idx1, ratio = mutual_nearest_neighbours(distance, ratio_threshold=self.conf.ratio_threshold)
        return idx0, idx1, (1.0 - ratio).clamp(0.0, 1.0)
