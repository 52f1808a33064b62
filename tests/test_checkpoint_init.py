"""Starting a redesigned model from an older checkpoint: ``load_state(..., fresh=prefixes)``."""

from __future__ import annotations

import pytest
import torch

from asmamba.checkpoint import CheckpointError, load_state
from asmamba.config import load_config
from asmamba.model.network import ASMambaNet


def _nets():
    torch.manual_seed(0)
    old = ASMambaNet(load_config("tiny", ["blocks.flow_prior=none", "fine.kind=window"]))
    torch.manual_seed(1)
    new = ASMambaNet(load_config("tiny", ["blocks.flow_prior=correlation", "fine.kind=two_stage"]))
    return old, new


def test_fresh_prefixes_keep_their_init_and_the_rest_comes_from_the_checkpoint():
    old, new = _nets()
    before = {k: v.clone() for k, v in new.state_dict().items()}
    fresh = ["blocks.0.flow.", "fine_matching.pixel_stem.", "fine_matching.half_to_pixel.", "fine_matching.pixel_mix."]
    load_state(new, old.state_dict(), fresh=fresh)
    got, ckpt = new.state_dict(), old.state_dict()
    for k, v in got.items():
        if k.startswith(tuple(fresh)):
            assert torch.equal(v, before[k]), k  # kept as initialised, even where the checkpoint has the key
        else:
            assert torch.equal(v, ckpt[k]), k
    assert any(k.startswith("blocks.0.flow.net") for k in ckpt)  # the old flow KAN was there and was ignored


def test_without_fresh_prefixes_a_redesigned_model_is_refused_with_the_keys_named():
    old, new = _nets()
    with pytest.raises(CheckpointError, match="missing keys.*(flow.prior|pixel)"):
        load_state(new, old.state_dict())
