"""ASMamba behind kornia's LoFTR contract: keys, dtypes, empty outputs, batches, masks, any size, bad input,
checkpoints; and every ablation switch builds, runs forward and backward."""

import itertools

import numpy as np
import pytest
import torch

from asmamba import ASMamba
from asmamba.checkpoint import CheckpointError, half_state_dict, save_checkpoint
from asmamba.config import ConfigError, load_config, to_plain
from asmamba.model.network import ASMambaNet

# a permissive tiny matcher: random weights, but every mutual nearest neighbour is returned
LOOSE = ["coarse.threshold=0.0", "coarse.border_rm=0"]


@pytest.fixture(scope="module")
def loose():
    torch.manual_seed(0)
    return ASMamba(config="tiny", pretrained=None, overrides=LOOSE)


def textured(h, w, seed=0, b=1, c=1):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, c, h // 4 + 2, w // 4 + 2, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def test_contract_keys_dtypes_and_eval_mode(loose):
    assert not loose.training
    out = loose({"image0": textured(64, 96), "image1": textured(64, 96, 1)})
    assert set(out) == {"keypoints0", "keypoints1", "confidence", "batch_indexes"}
    n = out["keypoints0"].shape[0]
    assert n > 0
    assert out["keypoints0"].shape == (n, 2) and out["keypoints1"].shape == (n, 2)
    assert out["keypoints0"].dtype == torch.float32 and out["confidence"].dtype == torch.float32
    assert out["batch_indexes"].dtype == torch.long and out["confidence"].shape == (n,)
    assert (out["confidence"] >= 0).all() and (out["confidence"] <= 1).all()


def test_empty_output_is_typed():
    torch.manual_seed(0)
    strict = ASMamba(config="tiny", pretrained=None, overrides=["coarse.threshold=0.999"])
    out = strict({"image0": textured(64, 64), "image1": textured(64, 64, 1)})
    assert out["keypoints0"].shape == (0, 2) and out["keypoints0"].dtype == torch.float32
    assert out["confidence"].shape == (0,) and out["batch_indexes"].dtype == torch.long


def test_batch_equals_single_pairs(loose):
    a0, a1 = textured(64, 96, 0), textured(64, 96, 1)
    b0, b1 = textured(64, 96, 2), textured(64, 96, 3)
    batched = loose({"image0": torch.cat([a0, b0]), "image1": torch.cat([a1, b1])})
    for k, (x0, x1) in enumerate([(a0, a1), (b0, b1)]):
        single = loose({"image0": x0, "image1": x1})
        sel = batched["batch_indexes"] == k
        assert torch.allclose(batched["keypoints0"][sel], single["keypoints0"], atol=1e-4)
        assert torch.allclose(batched["keypoints1"][sel], single["keypoints1"], atol=1e-3)
        assert torch.allclose(batched["confidence"][sel], single["confidence"], atol=1e-4)


@pytest.mark.parametrize("size0,size1", [((70, 90), (100, 45)), ((33, 200), (64, 64)), ((96, 128), (96, 128))])
def test_any_size_keeps_keypoints_inside(loose, size0, size1):
    out = loose({"image0": textured(*size0), "image1": textured(*size1, seed=5)})
    k0, k1 = out["keypoints0"], out["keypoints1"]
    assert (k0[:, 0] <= size0[1] - 0.5).all() and (k0[:, 1] <= size0[0] - 0.5).all()
    assert (k1[:, 0] <= size1[1] - 0.5).all() and (k1[:, 1] <= size1[0] - 0.5).all()
    assert (k0 >= -0.5).all() and (k1 >= -0.5).all()


def test_masks_exclude_padded_cells(loose):
    x0, x1 = textured(64, 128), textured(64, 128, 1)
    mask0 = torch.ones(1, 64, 128)
    mask0[..., 64:] = 0  # right half of image 0 is padding
    out = loose({"image0": x0, "image1": x1, "mask0": mask0, "mask1": torch.ones(1, 64, 128)})
    assert out["keypoints0"].shape[0] > 0
    assert (out["keypoints0"][:, 0] < 64).all()


# ----------------------------------------------------------------------------------------------- padding invariance
def real_view(name: str, h: int, w: int, warped: bool = False) -> torch.Tensor:
    """A scikit-image photo at h x w (1, 1, h, w); ``warped``: rotated 6 degrees, zoomed 5 %, shifted."""
    import skimage.data
    import skimage.transform

    photo = getattr(skimage.data, name)().astype(np.float64) / 255.0
    if photo.ndim == 3:
        photo = photo[..., :3] @ np.array([0.299, 0.587, 0.114])
    if warped:
        warp = skimage.transform.AffineTransform(rotation=0.1, scale=1.05, translation=(20, -10))
        photo = skimage.transform.warp(photo, warp.inverse)
    photo = skimage.transform.resize(photo, (h, w), anti_aliasing=True)
    return torch.tensor(photo, dtype=torch.float32)[None, None]


def pad_to(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2]))


def canvas_mask(h: int, w: int, H: int, W: int) -> torch.Tensor:
    return pad_to(torch.ones(1, 1, h, w), H, W)[:, 0]


def assert_same_matches(out: dict, k: int, ref: dict) -> None:
    sel = out["batch_indexes"] == k
    assert int(sel.sum()) == ref["keypoints0"].shape[0] > 20
    torch.testing.assert_close(out["keypoints0"][sel], ref["keypoints0"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["keypoints1"][sel], ref["keypoints1"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["confidence"][sel], ref["confidence"], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def shipped():
    return ASMamba()  # the shipped weights (XFeat backbone, InstanceNorm over the image)


@pytest.mark.parametrize("model", ["shipped", "loose"])
def test_matches_do_not_depend_on_the_canvas_or_the_batch(model, request):
    """A real 256x192 pair alone, padded into a 320x320 canvas with masks, and batched (padded, with masks) beside
    a 320x240 pair: the same matches. Before the fix the canvas changed the encoder's normalisation and the scans
    (545 instead of 461 matches with the shipped weights)."""
    matcher = request.getfixturevalue(model)
    a0, a1 = real_view("astronaut", 192, 256), real_view("astronaut", 192, 256, warped=True)
    b0, b1 = real_view("camera", 240, 320), real_view("camera", 240, 320, warped=True)
    with torch.inference_mode():
        alone = matcher({"image0": a0, "image1": a1})
        other = matcher({"image0": b0, "image1": b1})
        m = canvas_mask(192, 256, 320, 320)
        padded = matcher({"image0": pad_to(a0, 320, 320), "image1": pad_to(a1, 320, 320), "mask0": m, "mask1": m})
        m = torch.cat([canvas_mask(192, 256, 240, 320), torch.ones(1, 240, 320)])
        batched = matcher({"image0": torch.cat([pad_to(a0, 240, 320), b0]),
                           "image1": torch.cat([pad_to(a1, 240, 320), b1]), "mask0": m, "mask1": m})
    assert_same_matches(padded, 0, alone)
    assert_same_matches(batched, 0, alone)
    assert_same_matches(batched, 1, other)
    assert (batched["batch_indexes"].diff() >= 0).all()  # outputs stay in batch order


def test_a_pair_of_two_sizes_matches_alike_in_any_canvas(loose):
    a0, a1 = real_view("coffee", 200, 240), real_view("coffee", 176, 288, warped=True)
    with torch.inference_mode():
        alone = loose({"image0": a0, "image1": a1})
        padded = loose({"image0": pad_to(a0, 256, 320), "image1": pad_to(a1, 256, 320),
                        "mask0": canvas_mask(200, 240, 256, 320), "mask1": canvas_mask(176, 288, 256, 320)})
    assert_same_matches(padded, 0, alone)
    assert (alone["keypoints1"][:, 0] <= 288 - 0.5).all() and (alone["keypoints1"][:, 1] <= 176 - 0.5).all()


def test_masks_that_are_not_rectangles_and_empty_masks(loose):
    a0, a1 = real_view("astronaut", 192, 256), real_view("astronaut", 192, 256, warped=True)
    hole = torch.ones(1, 192, 256)
    hole[:, 64:128, 96:160] = 0  # cells inside the image excluded by the mask
    full = torch.ones(1, 192, 256)
    with torch.inference_mode():
        alone = loose({"image0": a0, "image1": a1, "mask0": hole, "mask1": full})
        m0, m1 = pad_to(hole[:, None], 320, 320)[:, 0], canvas_mask(192, 256, 320, 320)
        padded = loose({"image0": pad_to(a0, 320, 320), "image1": pad_to(a1, 320, 320), "mask0": m0, "mask1": m1})
        empty = torch.zeros(1, 320, 320)  # a pair whose image 0 is all padding: no matches, no effect on the other
        batched = loose({"image0": pad_to(a0, 320, 320).repeat(2, 1, 1, 1), "image1": pad_to(a1, 320, 320).repeat(2, 1, 1, 1),
                         "mask0": torch.cat([empty, m0]), "mask1": torch.cat([m1, m1])})
    k0 = alone["keypoints0"]
    in_hole = (k0[:, 0] > 96) & (k0[:, 0] < 160) & (k0[:, 1] > 64) & (k0[:, 1] < 128)
    assert not in_hole.any()
    assert_same_matches(padded, 0, alone)
    assert not (batched["batch_indexes"] == 0).any()
    assert_same_matches(batched, 1, alone)


def test_rgb_equals_its_grayscale(loose):
    rgb0, rgb1 = textured(64, 64, 0, c=3), textured(64, 64, 1, c=3)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    out_rgb = loose({"image0": rgb0, "image1": rgb1})
    out_gray = loose({"image0": (rgb0 * w).sum(1, keepdim=True), "image1": (rgb1 * w).sum(1, keepdim=True)})
    assert torch.allclose(out_rgb["keypoints1"], out_gray["keypoints1"], atol=1e-4)


def test_intermediate_dict_for_losses(loose):
    out = loose({"image0": textured(64, 64), "image1": textured(64, 64, 1)}, return_intermediate=True)
    cfg = loose.config
    h, w = out["hw_c"]
    assert out["conf_matrix"].shape == (1, h * w, h * w)
    assert len(out["flows"]) == cfg.blocks.num and out["flows"][0][0].shape == (1, h, w, 4)
    assert out["geom0"].shape == (1, h, w, 3)
    assert out["expec_f"].shape[1] == (3 if cfg.fine.kind == "window" else 2)  # (offset, std) | stage-2 offset


@pytest.mark.parametrize(
    "data,error,needle",
    [
        ({"image0": torch.rand(1, 1, 64, 64)}, ValueError, "image1"),
        ({"image0": torch.rand(1, 64, 64), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "shape"),
        ({"image0": torch.rand(1, 2, 64, 64), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "channels"),
        ({"image0": torch.randint(0, 255, (1, 1, 64, 64)), "image1": torch.rand(1, 1, 64, 64)}, TypeError, "float"),
        ({"image0": torch.rand(1, 1, 64, 64) * 255, "image1": torch.rand(1, 1, 64, 64)}, ValueError, "255"),
        ({"image0": torch.full((1, 1, 64, 64), float("nan")), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "NaN"),
        ({"image0": torch.rand(1, 1, 16, 64), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "at least"),
        ({"image0": torch.rand(2, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64)}, ValueError, "batch"),
        ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64), "mask0": torch.ones(1, 64, 64)},
         ValueError, "mask1"),
        ({"image0": torch.rand(1, 1, 64, 64), "image1": torch.rand(1, 1, 64, 64), "mask0": torch.ones(1, 8, 8),
          "mask1": torch.ones(1, 8, 8)}, ValueError, "mask0"),
        ("not a dict", TypeError, "dict"),
    ],
)
def test_bad_input_is_named(loose, data, error, needle):
    with pytest.raises(error, match=needle):
        loose(data)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="blocks.nmu"):
        ASMamba(config="tiny", pretrained=None, overrides=["blocks.nmu=2"])


def test_checkpoint_from_other_architecture_names_keys(tmp_path):
    tiny = ASMamba(config="tiny", pretrained=None)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"config": to_plain(tiny.config), "state_dict": tiny.net.state_dict()})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        ASMamba(config="tiny", overrides=["dims.c_match=32"], pretrained=path)
    with pytest.raises(CheckpointError, match="missing keys"):
        ASMamba(config="tiny", overrides=["blocks.num=2"], pretrained=path)


def test_fp16_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(3)
    model = ASMamba(config="tiny", pretrained=None, overrides=LOOSE)
    path = tmp_path / "half.pt"
    save_checkpoint(path, {"config": to_plain(model.config), "state_dict": half_state_dict(model.net)})
    loaded = ASMamba(pretrained=str(path))  # config comes from the checkpoint
    for (name, a), (_, b) in zip(model.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=2e-3, rtol=2e-3), name
    assert loaded.config.coarse.threshold == 0.0


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ASMamba(pretrained=str(bad))
    with pytest.raises(CheckpointError, match="neither a shipped weights name"):
        ASMamba(pretrained="no-such-weights")


ABLATIONS = list(itertools.product(["jego", "hilbert"], ["multi", "single"], ["true", "false"], ["kan", "mlp"]))


@pytest.mark.parametrize("scan,heads,feedback,flow", ABLATIONS)
def test_every_ablation_runs_forward_and_backward(scan, heads, feedback, flow):
    torch.manual_seed(0)
    cfg = load_config("tiny", [f"mamba.scan={scan}", f"mamba.heads={heads}", f"blocks.geom_feedback={feedback}",
                               f"blocks.flow_predictor={flow}", *LOOSE])
    net = ASMambaNet(cfg).train()
    H, W = 64, 64
    data = {"image0": textured(H, W), "image1": textured(H, W, 1), "valid_hw0": torch.tensor([[H, W]]),
            "valid_hw1": torch.tensor([[H, W]])}
    out = net(data)
    loss = out["conf_matrix"].sum() + out["geom0"].sum() + sum(f.sum() + g.sum() for f, g in out["flows"])
    loss = loss + out["expec_f"].sum()
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert grads["encoder.stem.0.weight"] is not None and torch.isfinite(grads["encoder.stem.0.weight"]).all()
    flow_params = [n for n in grads if n.startswith("blocks.0.flow")]
    assert flow_params and all(grads[n] is not None for n in flow_params)
