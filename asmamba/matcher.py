"""``ASMamba``: the AS-Mamba matcher behind kornia's LoFTR call contract.

>>> from asmamba import ASMamba
>>> matcher = ASMamba(config="tiny", pretrained=None)  # random weights; ASMamba() loads the shipped ones
>>> out = matcher({"image0": torch.rand(1, 1, 240, 320), "image1": torch.rand(1, 1, 240, 320)})
>>> out["keypoints0"].shape[1], out["confidence"].dtype
(2, torch.float32)
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import checkpoint_config, load_state, read_checkpoint, resolve_weights
from .config import ConfigLike, load_config
from .model.network import ASMambaNet

#: Smallest image side the coarse grid can work with (4 coarse cells).
MIN_SIDE = 32

OUTPUT_KEYS = ("keypoints0", "keypoints1", "confidence", "batch_indexes")


def _check_image(name: str, image: Any) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    if image.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 (grayscale) or 3 (RGB) channels, got {image.shape[1]}")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {image.dtype}")
    if image.shape[-1] < MIN_SIDE or image.shape[-2] < MIN_SIDE:
        raise ValueError(
            f"{name} is {image.shape[-2]}x{image.shape[-1]} pixels; the coarse grid needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}"
        )
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name} values must lie in [0, 1] (got min {lo:.3g}, max {hi:.3g}); divide uint8 by 255")
    return image


def _check_mask(name: str, mask: Any, image: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    expected = (image.shape[0], image.shape[2], image.shape[3])
    if tuple(mask.shape) != expected:
        raise ValueError(f"{name} must have shape (B, H, W) = {expected} like its image, got {tuple(mask.shape)}")
    return mask


def to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, 1, H, W)`` luma (ITU-R 601, as kornia's rgb_to_grayscale); gray unchanged."""
    if image.shape[1] == 1:
        return image
    weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)


class ASMamba(nn.Module):
    r"""AS-Mamba detector-free matcher with kornia's LoFTR interface.

    Args:
        config: model config: a preset name (``"base"``, ``"tiny"``), a YAML path, a dict or DictConfig. ``None``
            takes the checkpoint's own config when ``pretrained`` is given, else ``"base"``.
        pretrained: ``"default"`` (the package's trained weights, see :data:`asmamba.checkpoint.DEFAULT_WEIGHTS`),
            the name of other weights shipped with the package, a checkpoint path, or ``None`` (random weights).
            Weights are never downloaded.
        overrides: OmegaConf dotlist applied on top of ``config`` (e.g. ``["coarse.threshold=0.3"]``).

    The module is in eval mode after construction.

    Convention:
        - ``image0``, ``image1``: ``(B, 1, H, W)`` grayscale or ``(B, 3, H, W)`` RGB floats in [0, 1]; the two
          images may differ in size; any size of at least 32x32 works (padding and masks are internal).
        - ``mask0``, ``mask1`` (optional): ``(B, H, W)``, 0 marks padded pixels (a coarse cell takes the value of
          its top-left pixel, as in kornia's LoFTR).
        - Outputs: ``keypoints0 (N, 2)``, ``keypoints1 (N, 2)`` float32 (float64 for a float64 model, as kornia's
          LoFTR) ``(x, y)`` pixels with pixel centres at integer coordinates (kornia/OpenCV frame; add 0.5 for
          COLMAP); ``confidence (N,)`` the coarse dual-softmax score in the model's dtype; ``batch_indexes (N,)``
          long. ``keypoints0`` are coarse cell centres, ``keypoints1`` are refined to sub-pixel accuracy. Outputs
          live on the input's device.
    """

    def __init__(
        self,
        config: ConfigLike = None,
        pretrained: Optional[Union[str, os.PathLike]] = "default",
        overrides: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        ckpt = None
        if pretrained is not None:
            path = resolve_weights(pretrained)
            ckpt = read_checkpoint(path)
            if config is None:
                config = checkpoint_config(ckpt)
                if config is None:
                    raise ValueError(f"checkpoint {str(path)!r} holds no config; pass config=... explicitly")
        overrides = list(overrides or [])
        if ckpt is not None:  # the checkpoint holds every weight: don't read the encoder's own pretrained file
            overrides.append("encoder.pretrained=false")
        self.config = load_config("base" if config is None else config, overrides)
        self.net = ASMambaNet(self.config)
        if ckpt is not None:
            load_state(self.net, ckpt["state_dict"], source=f"checkpoint {str(pretrained)!r}")
        self.pretrained = pretrained
        self.eval()

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check the inputs and pad both images to one size the network accepts.

        Returns:
            a new dict with ``image0``, ``image1`` ``(B, 1, Hp, Wp)``, ``valid_hw0``, ``valid_hw1`` ``(B, 2)`` and,
            when given, padded ``mask0``, ``mask1`` ``(B, Hp, Wp)``; training keys are passed through.
        """
        if not isinstance(data, dict):
            raise TypeError(f"ASMamba takes a dict with 'image0' and 'image1', got {type(data).__name__}")
        for key in ("image0", "image1"):
            if key not in data:
                raise ValueError(f"input dict is missing {key!r} (keys given: {sorted(data)})")
        image0 = _check_image("image0", data["image0"])
        image1 = _check_image("image1", data["image1"])
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(f"image0 and image1 batch sizes differ: {image0.shape[0]} vs {image1.shape[0]}")
        if image0.device != image1.device:
            raise ValueError(f"image0 is on {image0.device} but image1 on {image1.device}")
        if ("mask0" in data) != ("mask1" in data):
            raise ValueError("give both mask0 and mask1 or neither")
        param = next(self.net.parameters())
        multiple = self.net.size_multiple()
        H = -(-max(image0.shape[2], image1.shape[2]) // multiple) * multiple
        W = -(-max(image0.shape[3], image1.shape[3]) // multiple) * multiple
        B = image0.shape[0]
        out = {k: v for k, v in data.items() if k not in ("image0", "image1", "mask0", "mask1")}
        for k, image in (("0", image0), ("1", image1)):
            h, w = image.shape[2:]
            gray = to_grayscale(image.to(param.dtype))
            out[f"image{k}"] = F.pad(gray, (0, W - w, 0, H - h))
            out[f"valid_hw{k}"] = torch.tensor([[h, w]] * B, device=image.device, dtype=torch.long)
            if f"mask{k}" in data:
                mask = _check_mask(f"mask{k}", data[f"mask{k}"], image).to(image.device)
                out[f"mask{k}"] = F.pad(mask.float(), (0, W - w, 0, H - h))
        return out

    def forward(self, data: dict[str, Any], return_intermediate: bool = False) -> dict[str, torch.Tensor]:
        """Match a batch of image pairs.

        Args:
            data: ``image0``, ``image1`` and optional ``mask0``, ``mask1`` (see the class docstring); in training,
                the ground-truth keys of :mod:`asmamba.training.supervision` may ride along.
            return_intermediate: also return everything the losses need (flows, confidence matrix, fine
                expectations, geometry predictions, padded sizes) next to the four contract keys.
        Returns:
            ``keypoints0``, ``keypoints1``, ``confidence``, ``batch_indexes`` (and the intermediate dict's keys when
            ``return_intermediate``).
        """
        prepared = self.prepare(data)
        device = prepared["image0"].device
        if next(self.net.parameters()).device != device:
            raise ValueError(f"images are on {device} but the model is on {next(self.net.parameters()).device}")
        prepared["keep_conf_matrix"] = return_intermediate
        result = self.net(prepared)
        kpts0, kpts1 = result["mkpts0_f"], result["mkpts1_f"]
        b_ids = result["b_ids"]
        # drop refinements that left image 1 (its valid area may be smaller than the padded canvas)
        hw1 = result["valid_hw1"][b_ids] if b_ids.numel() else kpts1.new_zeros((0, 2))
        inside = (kpts1[:, 0] >= -0.5) & (kpts1[:, 1] >= -0.5) & (kpts1[:, 0] <= hw1[:, 1] - 0.5) & (
            kpts1[:, 1] <= hw1[:, 0] - 0.5
        )
        if result.get("fine_on_gt"):  # training: the matches are GT samples, keep them all for the losses
            inside = torch.ones_like(inside)
        # float32, float64 for a float64 model (kornia's LoFTR convention)
        kpts_dtype = torch.promote_types(next(self.net.parameters()).dtype, torch.float32)
        out = {
            "keypoints0": kpts0[inside].to(kpts_dtype).detach(),
            "keypoints1": kpts1[inside].to(kpts_dtype).detach(),
            "confidence": result["mconf"][inside].detach(),
            "batch_indexes": b_ids[inside].long(),
        }
        if return_intermediate:
            result.update(out)
            return result
        return out

    @torch.no_grad()
    def describe(self, image: torch.Tensor) -> torch.Tensor:
        """A global descriptor ``(B, C_enc)`` of images ``(B, 1|3, H, W)``: L2-normalised GeM pooling of the
        encoder's coarse features (used for retrieval pairs)."""
        image = _check_image("image", image)
        param = next(self.net.parameters())
        m = self.net.size_multiple()
        h, w = image.shape[-2:]
        x = F.pad(to_grayscale(image.to(param.dtype)), (0, (-w) % m, 0, (-h) % m))
        coarse = self.net.encoder(x)["coarse"][..., : -(-h // 8), : -(-w // 8)]
        gem = coarse.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        return F.normalize(gem, dim=-1)
