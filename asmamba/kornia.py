"""AS-Mamba inside ``kornia.feature``: ``kornia.feature.ASMamba`` and LoFTR-compatible matchers.

>>> import asmamba                       # registers kornia.feature.ASMamba (one new name, nothing replaced)
>>> import kornia.feature as KF
>>> matcher = KF.ASMamba(pretrained=None, config="tiny")   # like KF.LoFTR(pretrained=..., config=...)
>>> from kornia.contrib import ImageStitcher
>>> stitcher = ImageStitcher(matcher, estimator="ransac")  # accepted: an ASMamba is a LoFTR subclass

Registration happens when :mod:`asmamba` is imported, not in a separate call. kornia is a hard dependency of the
package and the registration only adds one attribute that kornia does not define (it never replaces one), so the
side effect is small (about 0.4 s for importing ``kornia.feature``), while swapping ``KF.LoFTR`` for
``KF.ASMamba`` needs nothing but ``import asmamba``. :func:`register` is public and idempotent.

Why a subclass of ``LoFTR``: kornia's consumers of an image matcher choose their code path with
``isinstance(matcher, LoFTR)`` (``kornia.contrib.ImageStitcher.preprocess``, ``kornia.tracking.HomographyTracker``),
with ``LoFTR`` bound inside their modules at import time. A virtual subclass is not possible: ``LoFTR``'s
metaclass is plain ``type`` (``nn.Module`` has no ``ABCMeta``), so ``ABCMeta.register`` does not exist for it and
``type.__instancecheck__`` cannot be customised without changing kornia's class. Spoofing ``__class__`` (what
``unittest.mock`` does) passes ``isinstance`` but makes the object lie about its class, which breaks pickling and
copying. A real subclass is honest about what it is: :class:`LoFTRCompatible` inherits none of LoFTR's layers
(it skips ``LoFTR.__init__``, so nothing is built or downloaded) and overrides every LoFTR method kornia's
consumers call (``forward``, ``extract_features`` and ``load_state_dict``). The cost: code that reaches into
LoFTR's internals (``matcher.backbone``, ``matcher.config["resolution"]``) finds AS-Mamba's instead.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import kornia.feature
import torch
from kornia.feature import LocalFeatureMatcher, LoFTR
from torch import nn

from .config import ConfigLike
from .matcher import ASMamba as _ASMambaCore

__all__ = ["ASMamba", "DEFAULT_PRETRAINED", "KorniaMatcher", "LoFTRCompatible", "as_kornia_matcher", "register"]

#: ``pretrained`` value that picks the package's preferred shipped weights (as ``KF.LoFTR()`` picks "outdoor").
DEFAULT_PRETRAINED = "default"


class LoFTRCompatible(LoFTR):
    """Base of the matchers kornia's consumers must accept wherever they accept a :class:`kornia.feature.LoFTR`.

    It is a ``LoFTR`` subclass without any of LoFTR's layers: ``__init__`` runs ``nn.Module.__init__`` only. A
    subclass implements ``forward`` (LoFTR's call contract) and calls :meth:`images_from_features` first.

    ``extract_features`` exists because ``HomographyTracker`` calls it on every ``LoFTR`` and passes the result
    back as ``features0``. A detector-free joint matcher has no per-image feature that can be reused exactly (the
    features of AS-Mamba depend on the padded canvas the pair shares), so the "features" are the image itself:
    passing them back gives the same matches as passing the image; nothing is cached.
    """

    def __init__(self) -> None:
        nn.Module.__init__(self)  # none of LoFTR's layers; no weights are built or downloaded

    def extract_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image (B, 1|3, H, W)`` -> ``{"image": image}``, accepted by ``forward`` as ``features0``/``features1``."""
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"extract_features takes an image tensor (B, 1, H, W), got {type(image).__name__}")
        return {"image": image}

    @staticmethod
    def images_from_features(data: Any) -> Any:
        """Replace ``features0``/``features1`` (from :meth:`extract_features`) by ``image0``/``image1``.

        Returns:
            a new dict when features were given, else ``data`` itself (non-dicts pass through for ``forward`` to
            reject with its own message).
        Raises:
            ValueError: both ``image{k}`` and ``features{k}`` are given (as kornia's LoFTR).
            TypeError: ``features{k}`` is not the output of :meth:`extract_features`.
        """
        if not isinstance(data, dict) or not ("features0" in data or "features1" in data):
            return data
        out = dict(data)
        for side in ("0", "1"):
            if f"features{side}" not in out:
                continue
            if f"image{side}" in out:
                raise ValueError(f"pass exactly one of 'image{side}' and 'features{side}'")
            features = out.pop(f"features{side}")
            if not isinstance(features, Mapping) or "image" not in features:
                raise TypeError(f"'features{side}' must be the dict this matcher's extract_features returns")
            out[f"image{side}"] = features["image"]
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``: LoFTR's override renames ``matcher.*`` keys of its own checkpoints, which
        would corrupt the keys of a wrapped matcher (:class:`KorniaMatcher` keeps it under ``matcher``)."""
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)


class ASMamba(_ASMambaCore, LoFTRCompatible):
    r"""AS-Mamba as a :mod:`kornia.feature` matcher, with kornia's constructor order ``(pretrained, config)``.

    The same module as :class:`asmamba.ASMamba` (same layers, ``state_dict`` keys, ``forward`` and outputs), but
    also a :class:`kornia.feature.LoFTR` subclass, so that ``kornia.contrib.ImageStitcher`` and
    ``kornia.tracking.HomographyTracker`` accept it. Registered as ``kornia.feature.ASMamba`` by ``import asmamba``.

    Args:
        pretrained: ``"default"`` (the package's preferred shipped weights; a ``CheckpointError`` says so while
            none ship), the name of weights shipped in ``asmamba/weights``, a checkpoint path, or ``None`` for
            random weights. Never a download.
        config: model config, a preset name (``"base"``, ``"tiny"``), YAML path, dict or DictConfig; ``None``
            takes the checkpoint's config (``"base"`` without a checkpoint). kornia's LoFTR config dicts do not
            apply and are rejected with the unknown keys named.
        overrides: OmegaConf dotlist applied on top of ``config`` (e.g. ``["coarse.threshold=0.3"]``).

    The module is in eval mode after construction, also with ``pretrained=None`` (kornia's ``LoFTR(None)`` stays
    in training mode).

    Convention:
        - ``image0``, ``image1``: ``(B, 1, H, W)`` grayscale or ``(B, 3, H, W)`` RGB in [0, 1], any size of at
          least 32x32 (padded internally); optional ``mask0``, ``mask1`` ``(B, H, W)``, 0 = padding, as in LoFTR.
          ``features0``/``features1`` from :meth:`extract_features` may replace the images.
        - ``keypoints0``, ``keypoints1`` ``(N, 2)`` are ``(x, y)`` in kornia's frame, pixel centres at integer
          coordinates (kornia's LoFTR returns its reference frame, centres at +0.5); ``keypoints0`` are the centres
          of 8x8 coarse cells, ``8 * (column, row) + 3.5``. float32, float64 for a float64 model (as LoFTR).
        - ``confidence (N,)`` the coarse dual-softmax score, in the model's dtype; ``batch_indexes (N,)`` long.
        - Inputs of another float dtype than the model are cast to the model's dtype (LoFTR raises instead).
    """

    def __init__(
        self,
        pretrained: Optional[Union[str, os.PathLike]] = DEFAULT_PRETRAINED,
        config: ConfigLike = None,
        overrides: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(config=config, pretrained=pretrained, overrides=overrides)

    def forward(self, data: dict[str, Any], return_intermediate: bool = False) -> dict[str, torch.Tensor]:
        """Match a batch of pairs; see :meth:`asmamba.ASMamba.forward` and the class Convention."""
        return super().forward(self.images_from_features(data), return_intermediate=return_intermediate)


class KorniaMatcher(LoFTRCompatible):
    """Any matcher of the project's contract (e.g. a baseline from :func:`asmamba.baselines.build_matcher`) as a
    module kornia's consumers accept. ``forward`` calls the wrapped matcher unchanged.

    Args:
        matcher: an ``nn.Module`` taking ``{"image0", "image1"[, "mask0", "mask1"]}`` and returning
            ``keypoints0``, ``keypoints1``, ``confidence``, ``batch_indexes``. Kept as ``self.matcher``.
    """

    def __init__(self, matcher: nn.Module) -> None:
        super().__init__()
        if not isinstance(matcher, nn.Module):
            raise TypeError(f"matcher must be a torch.nn.Module, got {type(matcher).__name__}")
        self.matcher = matcher
        self.eval()

    def forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.matcher(self.images_from_features(data))


def as_kornia_matcher(matcher: nn.Module) -> nn.Module:
    """``matcher`` itself when kornia's consumers already accept it (a ``LoFTR``, including :class:`ASMamba`, or a
    ``LocalFeatureMatcher``), else a :class:`KorniaMatcher` around it."""
    if isinstance(matcher, (LoFTR, LocalFeatureMatcher)):
        return matcher
    return KorniaMatcher(matcher)


def register() -> type:
    """Make :class:`ASMamba` available as ``kornia.feature.ASMamba`` (idempotent; called by ``import asmamba``).

    Only that attribute is added; ``kornia.feature.__all__`` is left alone, so ``from kornia.feature import *``
    keeps kornia's own names. A different ``kornia.feature.ASMamba`` (a future kornia's own) is never replaced:
    a ``RuntimeWarning`` says so and that class is returned.

    Returns:
        the class ``kornia.feature.ASMamba`` refers to.
    """
    existing = getattr(kornia.feature, "ASMamba", None)
    ours = existing is None or getattr(existing, "__module__", None) == __name__  # also after a reload
    if ours:
        kornia.feature.ASMamba = ASMamba
    elif existing is not ASMamba:
        warnings.warn(
            f"kornia.feature.ASMamba already exists ({existing.__module__}.{existing.__qualname__}); AS-Mamba did "
            "not replace it. Use asmamba.kornia.ASMamba.",
            RuntimeWarning,
            stacklevel=2,
        )
    return kornia.feature.ASMamba
