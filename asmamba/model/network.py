"""The AS-Mamba network, read top to bottom as the data flows (SPEC section 1).

It works on a prepared pair: both images padded to one common size that is a multiple of
:func:`ASMambaNet.size_multiple`, with their valid (unpadded) sizes. :class:`asmamba.ASMamba` does that
preparation and the input checks; training code calls this network directly with LoFTR-style batch dicts.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .block import ASMambaBlock
from .coarse_matching import CoarseMatching
from .encoder import ENCODER_MULTIPLE, build_encoder
from .fine_matching import build_fine_matching
from .initializer import MambaInitializer
from .position import build_position_encoding

STRIDE_COARSE, STRIDE_FINE = 8, 2


class ASMambaNet(nn.Module):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg)
        self.position = build_position_encoding(cfg.position.kind, cfg.encoder.c_enc, cfg.position.hidden)
        self.initializer = MambaInitializer(cfg)
        self.blocks = nn.ModuleList(ASMambaBlock(cfg) for _ in range(cfg.blocks.num))
        # auxiliary geometry head (L_geom): normalised match location in the other image (2) + covisibility logit
        self.geom_head = nn.Conv2d(cfg.dims.c_geom, 3, 1)
        self.coarse_matching = CoarseMatching(cfg)
        self.fine_matching = build_fine_matching(cfg, self.encoder.mid_channels)

    def size_multiple(self) -> int:
        """Image sides must be multiples of this: even 1/8 grids for the joint scans, and the encoder's own need."""
        return max(2 * STRIDE_COARSE, ENCODER_MULTIPLE[self.cfg.encoder.name])

    def forward(self, data: dict) -> dict:
        """Run the whole matcher on a prepared batch, LoFTR-style: ``data`` is updated in place and returned.

        Args:
            data: ``image0``, ``image1`` ``(B, 1, H, W)`` (same padded size, sides multiples of
                :meth:`size_multiple`); ``valid_hw0``, ``valid_hw1`` ``(B, 2)`` long: each image's unpadded
                (height, width) in pixels; optional ``mask0``, ``mask1`` ``(B, H, W)`` (0 = padding) and, in
                training, the coarse ground truth of :mod:`asmamba.training.supervision`.
        Returns:
            ``data`` with, among others: ``hw_c``; ``flows`` (one ``(Phi_01, Phi_10)`` per block, each
            ``(B, h, w, 4)``); ``geom0``, ``geom1`` ``(B, h, w, 3)``; ``conf_matrix (B, L, L)``; the coarse matches
            ``b_ids, i_ids, j_ids, mconf, mkpts0_c, mkpts1_c``; the fine results ``expec_f, mkpts0_f, mkpts1_f``.
        """
        image0, image1 = data["image0"], data["image1"]
        B, _, H, W = image0.shape
        h, w = H // STRIDE_COARSE, W // STRIDE_COARSE
        data.update(bs=B, hw_c=(h, w), stride_c=STRIDE_COARSE, stride_f=STRIDE_FINE)
        for k in ("0", "1"):
            # a coarse cell is valid when its centre (8c + 3.5) lies inside the image
            data[f"valid_hw{k}_c"] = torch.div(data[f"valid_hw{k}"] + STRIDE_COARSE // 2, STRIDE_COARSE,
                                               rounding_mode="floor")
            if f"mask{k}" in data:  # a coarse cell takes the mask value of its top-left pixel (kornia's rule)
                data[f"mask_c{k}"] = data[f"mask{k}"][:, ::STRIDE_COARSE, ::STRIDE_COARSE].bool().flatten(1)

        # 1. encoder, both images in one batch (shared weights)
        feats = self.encoder(torch.cat([image0, image1]), torch.cat([data["valid_hw0"], data["valid_hw1"]]))
        coarse0, coarse1 = feats["coarse"].split(B)  # (B, C_enc, h, w)
        data["feat_mid0"], data["feat_mid1"] = feats["mid"].split(B)  # (B, C_mid, H/4, W/4)
        data["feat_fine0"], data["feat_fine1"] = feats["fine"].split(B)  # (B, C_fine, H/2, W/2)

        # 2. positional encoding
        coarse0, coarse1 = self.position(coarse0), self.position(coarse1)

        # 3. Mamba Initializer: joint scan -> F_match^1 (B, C_match, h, w), F_geom^1 (B, C_geom, h, w)
        m0, m1, g0, g1 = self.initializer(coarse0, coarse1)

        # 4. AS-Mamba blocks: flow -> global + local paths -> FFN
        flows = []
        for block in self.blocks:
            (m0, m1, g0, g1), flow = block(m0, m1, g0, g1)
            flows.append(flow)
        data["flows"] = flows
        data["geom0"] = self.geom_head(g0).permute(0, 2, 3, 1)  # (B, h, w, 3)
        data["geom1"] = self.geom_head(g1).permute(0, 2, 3, 1)
        data["feat_c0"], data["feat_c1"] = m0, m1
        data["covisibility0"] = torch.sigmoid(data["geom0"][..., 2]).flatten(1)  # (B, L)
        data["covisibility1"] = torch.sigmoid(data["geom1"][..., 2]).flatten(1)

        # 5. coarse matching on (B, L, C_match) tokens, then fine refinement at 1/2
        self.coarse_matching(m0.flatten(2).transpose(1, 2), m1.flatten(2).transpose(1, 2), data)
        self.fine_matching(data)
        return data
