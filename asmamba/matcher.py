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


def mask_extent(mask: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` long: for each ``(B, H, W)`` bool mask, (last row, last column holding a True pixel) + 1, i.e. the
    top-left rectangle that contains every valid pixel; ``(0, 0)`` for an all-False mask."""

    def last(any_valid: torch.Tensor) -> torch.Tensor:  # (B, n) bool -> (B,) index of the last True + 1, 0 if none
        index = torch.arange(1, any_valid.shape[1] + 1, device=any_valid.device)
        return (any_valid * index).amax(dim=1)

    return torch.stack([last(mask.any(dim=2)), last(mask.any(dim=1))], dim=1).long()


def valid_size_groups(valid_hw0: torch.Tensor, valid_hw1: torch.Tensor) -> list[torch.Tensor]:
    """Batch indexes grouped by identical valid sizes ``(h0, w0, h1, w1)``, in order of first appearance; pairs
    with an empty valid region are left out (they have no matches)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, key in enumerate(torch.cat([valid_hw0, valid_hw1], dim=1).tolist()):
        if min(key) > 0:
            groups.setdefault(tuple(key), []).append(b)
    return [torch.tensor(ids, device=valid_hw0.device) for ids in groups.values()]


def merge_matches(results: list[dict[str, torch.Tensor]], like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Concatenate the contract outputs of several passes, ordered by batch index (stable within a pair); typed
    empty outputs (dtype and device of ``like``, the model-dtype images) when there are none."""
    if not results:
        kpts_dtype = torch.promote_types(like.dtype, torch.float32)
        return {
            "keypoints0": like.new_zeros((0, 2), dtype=kpts_dtype),
            "keypoints1": like.new_zeros((0, 2), dtype=kpts_dtype),
            "confidence": like.new_zeros((0,)),
            "batch_indexes": torch.zeros(0, dtype=torch.long, device=like.device),
        }
    if len(results) == 1:
        return results[0]
    merged = {key: torch.cat([r[key] for r in results]) for key in OUTPUT_KEYS}
    order = torch.sort(merged["batch_indexes"], stable=True).indices
    return {key: value[order] for key, value in merged.items()}


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
        - ``mask0``, ``mask1`` (optional): ``(B, H, W)``, 0 marks padded pixels. Each pair is matched on the
          top-left rectangle holding its mask's nonzero pixels, so padding a pair into a larger canvas or batching it
          with pairs of other sizes leaves its matches unchanged (to float tolerance); zeros inside that rectangle
          exclude coarse cells (a cell takes the value of its top-left pixel, as in kornia's LoFTR).
        - Outputs: ``keypoints0 (N, 2)``, ``keypoints1 (N, 2)`` float32 (float64 for a float64 model, as kornia's
          LoFTR) ``(x, y)`` pixels with pixel centres at integer coordinates (kornia/OpenCV frame; add 0.5 for
          COLMAP); ``confidence (N,)`` the coarse dual-softmax score in the model's dtype; ``batch_indexes (N,)``
          long. With ``fine.kind: two_stage`` (the default architecture) ``keypoints0`` are centres of 2x2 fine cells
          (``2u + 0.5``) and ``keypoints1`` are refined to sub-pixel accuracy; the first release's ``window`` stage
          keeps ``keypoints0`` at coarse cell centres (``8c + 3.5``). Outputs
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
        """Check the inputs and find the region of each pair that is matched.

        A pair is matched on its valid region: the whole image, or with a mask the top-left rectangle that holds all
        of the mask's nonzero pixels (kornia puts padding at the bottom and right). So the answer for a pair does
        not depend on the canvas it is padded into nor on the other pairs of its batch.

        Returns:
            a new dict with ``image0``, ``image1`` ``(B, 1, H0|H1, W0|W1)`` grayscale in the model's dtype (not yet
            padded), ``valid_hw0``, ``valid_hw1`` ``(B, 2)`` long (height, width) of the valid regions (0 for an
            all-zero mask: that pair gets no matches) and, when given, ``mask0``, ``mask1`` ``(B, H, W)`` bool.
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
        if param.device != image0.device:
            raise ValueError(f"images are on {image0.device} but the model is on {param.device}")
        B = image0.shape[0]
        out: dict[str, Any] = {}
        for k, image in (("0", image0), ("1", image1)):
            h, w = image.shape[2:]
            out[f"image{k}"] = to_grayscale(image.to(param.dtype))
            valid_hw = torch.tensor([[h, w]] * B, device=image.device, dtype=torch.long)
            if f"mask{k}" in data:
                mask = _check_mask(f"mask{k}", data[f"mask{k}"], image).to(image.device) != 0  # (B, H, W)
                out[f"mask{k}"] = mask
                valid_hw = mask_extent(mask)
            out[f"valid_hw{k}"] = valid_hw
        return out

    def forward(
        self, data: dict[str, Any], return_intermediate: bool = False, scale_adapt: Optional[bool] = None
    ) -> dict[str, torch.Tensor]:
        """Match a batch of image pairs.

        Args:
            data: ``image0``, ``image1`` and optional ``mask0``, ``mask1`` (see the class docstring); other keys are
                ignored (ground truth does not ride along: training calls :class:`ASMambaNet` directly).
            return_intermediate: also return everything the losses need (flows, confidence matrix, fine
                expectations, geometry predictions, padded sizes) next to the four contract keys; needs every pair
                of the batch to have the same valid sizes (one network pass).
            scale_adapt: test-time scale adaptation (:mod:`asmamba.scale_adaptation`): when the first pass shows a
                strong zoom between the images, match again with the zoomed-in image shrunk, per pair. ``None``
                follows the config's ``scale_adapt.enabled``; never in training mode or with
                ``return_intermediate``.
        Returns:
            ``keypoints0``, ``keypoints1``, ``confidence``, ``batch_indexes`` (and the intermediate dict's keys when
            ``return_intermediate``).
        """
        out = self.match_prepared(self.prepare(data), return_intermediate)
        if scale_adapt is None:
            scale_adapt = bool(self.config.scale_adapt.enabled)
        if scale_adapt and not return_intermediate and not self.training:
            from .scale_adaptation import ScaleAdaptConfig, match_with_scale_adaptation

            conf = ScaleAdaptConfig.from_mapping(self.config.scale_adapt)
            out, _ = match_with_scale_adaptation(lambda pair: self.forward(pair, scale_adapt=False), data, out, conf)
        return out

    def match_prepared(self, prepared: dict[str, Any], return_intermediate: bool = False) -> dict[str, torch.Tensor]:
        """Match the pairs of :meth:`prepare`'s output: the pairs are grouped by valid sizes, each group runs as one
        batch cropped to its valid region (:meth:`match_group`), and the matches come back in batch order."""
        groups = valid_size_groups(prepared["valid_hw0"], prepared["valid_hw1"])
        B = prepared["image0"].shape[0]
        if return_intermediate:
            if len(groups) != 1 or len(groups[0]) != B:
                raise ValueError(
                    "return_intermediate=True needs all pairs of the batch to have the same valid sizes (one network "
                    f"pass); this batch has {len(groups)} groups of sizes: match them separately"
                )
            return self.match_group(prepared, groups[0], return_intermediate=True)
        results = [self.match_group(prepared, ids) for ids in groups]
        return merge_matches(results, prepared["image0"])

    def match_group(self, prepared: dict[str, Any], ids: torch.Tensor,
                    return_intermediate: bool = False) -> dict[str, torch.Tensor]:
        """One network pass on the pairs ``ids`` of :meth:`prepare`'s output, which share their valid sizes
        ``(h0, w0)``, ``(h1, w1)``: both images are cropped to them and zero-padded at the bottom and right to
        the smallest common size the network takes.

        Returns:
            the four contract keys, ``batch_indexes`` indexing the whole batch (with ``return_intermediate``, the
            network's whole result dict too, in the padded frame of this pass).
        """
        (h0, w0), (h1, w1) = prepared["valid_hw0"][ids[0]].tolist(), prepared["valid_hw1"][ids[0]].tolist()
        multiple = self.net.size_multiple()
        H = -(-max(h0, h1) // multiple) * multiple
        W = -(-max(w0, w1) // multiple) * multiple
        data: dict[str, Any] = {"keep_conf_matrix": return_intermediate}
        for k, (h, w) in (("0", (h0, w0)), ("1", (h1, w1))):
            data[f"image{k}"] = F.pad(prepared[f"image{k}"][ids, :, :h, :w], (0, W - w, 0, H - h))
            data[f"valid_hw{k}"] = prepared[f"valid_hw{k}"][ids]
        if "mask0" in prepared:
            masks = [prepared["mask0"][ids, :h0, :w0], prepared["mask1"][ids, :h1, :w1]]
            if not all(bool(mask.all()) for mask in masks):  # masks that mark only the cut-off padding change nothing
                data["mask0"] = F.pad(masks[0].float(), (0, W - w0, 0, H - h0))
                data["mask1"] = F.pad(masks[1].float(), (0, W - w1, 0, H - h1))
        result = self.net(data)
        kpts0, kpts1, b_ids = result["mkpts0_f"], result["mkpts1_f"], result["b_ids"]
        # drop keypoints outside their image: refinements that left image 1, and (two-stage fine matching) image-0
        # fine cells in the part of an edge coarse cell that lies beyond the image
        inside = (kpts1[:, 0] >= -0.5) & (kpts1[:, 1] >= -0.5) & (kpts1[:, 0] <= w1 - 0.5) & (kpts1[:, 1] <= h1 - 0.5)
        inside &= (kpts0[:, 0] <= w0 - 0.5) & (kpts0[:, 1] <= h0 - 0.5)
        # float32, float64 for a float64 model (kornia's LoFTR convention)
        kpts_dtype = torch.promote_types(next(self.net.parameters()).dtype, torch.float32)
        out = {
            "keypoints0": kpts0[inside].to(kpts_dtype).detach(),
            "keypoints1": kpts1[inside].to(kpts_dtype).detach(),
            "confidence": result["mconf"][inside].detach(),
            "batch_indexes": ids[b_ids[inside]].long(),
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
        valid_hw = torch.tensor([[h, w]] * x.shape[0], device=x.device)
        coarse = self.net.encoder(x, valid_hw)["coarse"][..., : -(-h // 8), : -(-w // 8)]
        gem = coarse.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        return F.normalize(gem, dim=-1)
