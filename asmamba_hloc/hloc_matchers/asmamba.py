"""AS-Mamba as an hloc dense matcher; hloc imports this file as ``hloc.matchers.asmamba``.

hloc's ``dynamic_load(hloc.matchers, "asmamba")`` keeps the classes *defined in* ``hloc.matchers.asmamba`` that
subclass ``hloc.utils.base_model.BaseModel`` and needs exactly one: :class:`ASMambaDense`. Loaded under that
name (see :func:`asmamba_hloc.register`), the class's ``__module__`` is ``hloc.matchers.asmamba``.

Conf (``conf["model"]`` of a ``hloc.match_dense.confs`` entry; ``name`` is hloc's):

- ``matcher``: ``"asmamba"`` (default) or any other :func:`asmamba.baselines.build_matcher` name or
  ``"module.path:factory"``, so that every kornia-contract matcher runs through the same plugin;
- ``config``, ``pretrained`` (alias ``weights``), ``overrides``: passed to ``asmamba.ASMamba``; no ``pretrained``
  means the shipped default weights;
- ``match_threshold``: coarse matching threshold (None keeps the config's);
- ``matcher_conf``: keyword arguments of a non-AS-Mamba matcher;
- ``max_num_matches``: keep the most confident matches only (None = all);
- ``refined_side``: which input the kornia matcher refines to sub-pixel (``"image1"`` for AS-Mamba and LoFTR,
  ``"both"`` for sparse matchers); hloc wants its ``image0`` refined, so ``"image1"`` swaps the inputs.

Building the model applies the project's CPU allocator tuning (:mod:`asmamba.allocator`; ``ASMAMBA_TUNE_MALLOC=0``
turns it off), as the ``asmamba`` command line does.
"""

from __future__ import annotations

from typing import Any

import torch
from hloc.utils.base_model import BaseModel

SWAP = {"image0": "image1", "image1": "image0", "mask0": "mask1", "mask1": "mask0"}


class ASMambaDense(BaseModel):
    """hloc model: ``{"image0", "image1"}`` -> ``keypoints0 (N, 2)``, ``keypoints1 (N, 2)``, ``scores (N,)``,
    image0 (hloc's reference side) refined; N may be 0."""

    default_conf: dict[str, Any] = {
        "matcher": "asmamba",
        "config": None,
        "pretrained": None,
        "weights": None,
        "overrides": [],
        "match_threshold": None,
        "matcher_conf": {},
        "max_num_matches": None,
        "refined_side": "image1",
    }
    required_inputs = ["image0", "image1"]

    def _init(self, conf: dict[str, Any]) -> None:
        from asmamba import allocator
        from asmamba.baselines import build_matcher  # lazily: hloc may list matchers without building them

        # glibc keeps freed memory in the process, as the asmamba command line does (ASMAMBA_TUNE_MALLOC=0: off):
        # one 1024 px pair took 28 s tuned against 44-77 s untuned through hloc on this project's 2-core machine
        allocator.tune_from_environment()

        if conf["refined_side"] not in ("image0", "image1", "both"):
            raise ValueError(f"refined_side must be 'image0', 'image1' or 'both', got {conf['refined_side']!r}")
        if conf["matcher"] == "asmamba":
            kwargs: dict[str, Any] = {"config": conf["config"], "overrides": list(conf["overrides"] or [])}
            pretrained = conf["pretrained"] if conf["pretrained"] is not None else conf["weights"]
            if pretrained is not None:
                kwargs["pretrained"] = pretrained
            if conf["match_threshold"] is not None:
                kwargs["overrides"].append(f"coarse.threshold={float(conf['match_threshold'])}")
            self.net = build_matcher("asmamba", **kwargs)
        else:
            self.net = build_matcher(conf["matcher"], **dict(conf["matcher_conf"] or {}))

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        swap = self.conf["refined_side"] == "image1"
        inputs = {(SWAP[k] if swap and k in SWAP else k): v for k, v in data.items() if k in SWAP}
        out = self.net(inputs)
        kpts0, kpts1 = (out["keypoints1"], out["keypoints0"]) if swap else (out["keypoints0"], out["keypoints1"])
        scores = out["confidence"]
        top_k = self.conf["max_num_matches"]
        if top_k is not None and scores.numel() > top_k:
            keep = torch.argsort(scores, descending=True)[:top_k]
            kpts0, kpts1, scores = kpts0[keep], kpts1[keep], scores[keep]
        return {"keypoints0": kpts0, "keypoints1": kpts1, "scores": scores}
