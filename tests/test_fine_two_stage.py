"""The two-stage fine stage against independent truths: block gathering and bilinear sampling against direct
indexing, and its losses against targets computed by hand from an analytic homography."""

from __future__ import annotations

import math

import torch

from asmamba.config import load_config
from asmamba.model.fine_matching import TwoStageFineMatching, gather_blocks, sample_points
from asmamba.training.data.common import GT_HOMOGRAPHY
from asmamba.training.losses import two_stage_fine_loss


def test_gather_blocks_reads_the_cells_of_the_coarse_cell_plus_margin():
    B, C, h, w, ratio = 2, 3, 3, 4, 4
    fine = torch.arange(B * C * h * ratio * w * ratio, dtype=torch.float32).reshape(B, C, h * ratio, w * ratio)
    b = torch.tensor([1, 0])
    cells = torch.tensor([1 * w + 2, 0])  # (r=1, c=2) of item 1; (0, 0) of item 0 (its margin is outside)
    out = gather_blocks(fine, b, cells, ratio, margin=1)  # (2, 36, C)
    assert out.shape == (2, 36, C)
    for k in range(36):
        dy, dx = divmod(k, 6)
        y, x = 4 * 1 - 1 + dy, 4 * 2 - 1 + dx
        assert torch.equal(out[0, k], fine[1, :, y, x])
        y0, x0 = -1 + dy, -1 + dx
        expected = fine[0, :, y0, x0] if y0 >= 0 and x0 >= 0 else torch.zeros(C)
        assert torch.equal(out[1, k], expected)


def test_sample_points_hits_cell_centres_and_interpolates_between_them():
    feat = torch.randn(2, 5, 6, 7)
    stride = 2
    b = torch.tensor([0, 1])
    # cell (u=3, v=2) has its centre at pixel (2*3 + 0.5, 2*2 + 0.5); half-way to u=4 is the mean of both
    pts = torch.tensor([[[6.5, 4.5], [7.5, 4.5]], [[0.5, 0.5], [6.5, 10.5]]])
    out = sample_points(feat, b, pts, stride)
    assert torch.allclose(out[0, 0], feat[0, :, 2, 3], atol=1e-6)
    assert torch.allclose(out[0, 1], 0.5 * (feat[0, :, 2, 3] + feat[0, :, 2, 4]), atol=1e-6)
    assert torch.allclose(out[1, 0], feat[1, :, 0, 0], atol=1e-6)
    assert torch.allclose(out[1, 1], feat[1, :, 5, 3], atol=1e-6)


def _homography_batch(dx: float, dy: float) -> dict:
    H = torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])[None]
    return {"image0": torch.zeros(1, 1, 64, 64), "image1": torch.zeros(1, 1, 64, 64), "H_0to1": H,
            "gt_type": torch.tensor([GT_HOMOGRAPHY]), "hw_c": (8, 8), "stride_f": 2, "stride_c": 8}


def _hand_target(c: int, r: int, a: int, dx: float, dy: float) -> int:
    """Index in image 1's 6x6 block (coarse cell (c, r), margin 1) of where fine cell a of image 0's cell lands."""
    ax, ay = a % 4, a // 4
    x, y = 8 * c + 2 * ax + 0.5 + dx, 8 * r + 2 * ay + 0.5 + dy
    u, v = math.floor((x - 0.5) / 2 + 0.5), math.floor((y - 0.5) / 2 + 0.5)  # nearest fine cell
    bu, bv = u - (4 * c - 1), v - (4 * r - 1)
    return bv * 6 + bu if 0 <= bu < 6 and 0 <= bv < 6 else -1


def test_stage1_loss_is_zero_on_the_true_cells_and_large_elsewhere():
    dx, dy = 3.2, -1.3
    data = _homography_batch(dx, dy)
    c, r = 3, 2
    i = torch.tensor([r * 8 + c])
    targets = [_hand_target(c, r, a, dx, dy) for a in range(16)]
    assert sum(t >= 0 for t in targets) >= 8  # most of the block is inside
    conf = torch.zeros(1, 16, 36)
    for a, t in enumerate(targets):
        if t >= 0:
            conf[0, a, t] = 1.0
    data.update(b_ids=torch.tensor([0]), i_ids=i, j_ids=i, fine_conf=conf, subpixel_radius=2.0,
                mkpts0_f=torch.tensor([[8 * c + 0.5, 8 * r + 0.5]]), mkpts1_f_coarse=torch.tensor([[8 * c + 4.5,
                                                                                                    8 * r + 0.5]]),
                expec_f=torch.zeros(1, 2))
    stage1, _ = two_stage_fine_loss(data)
    assert float(stage1) < 1e-4
    shifted = torch.roll(conf, 1, dims=2)  # every true cell moved one step: the loss sees it
    data["fine_conf"] = shifted
    stage1, _ = two_stage_fine_loss(data)
    assert float(stage1) > 10.0


def test_stage2_loss_against_the_analytic_offset():
    dx, dy = 3.2, -1.3
    data = _homography_batch(dx, dy)
    p0 = torch.tensor([[24.5, 16.5]])
    p1 = torch.tensor([[28.5, 14.5]])  # the chosen image-1 cell centre; the truth is p0 + (dx, dy) = (27.7, 15.2)
    true = (p0 + torch.tensor([dx, dy]) - p1) / 2.0  # in units of the radius: (-0.4, 0.35)
    data.update(b_ids=torch.tensor([0]), i_ids=torch.tensor([19]), j_ids=torch.tensor([19]),
                fine_conf=torch.full((1, 16, 36), 1 / 36), subpixel_radius=2.0, mkpts0_f=p0, mkpts1_f_coarse=p1)
    data["expec_f"] = true.clone()
    _, stage2 = two_stage_fine_loss(data)
    assert float(stage2) < 1e-10
    data["expec_f"] = true + torch.tensor([[0.1, -0.2]])
    _, stage2 = two_stage_fine_loss(data)
    assert abs(float(stage2) - (0.1**2 + 0.2**2)) < 1e-5
    data["mkpts1_f_coarse"] = p1 + 6.0  # truth outside the +-2 px window: no target
    _, stage2 = two_stage_fine_loss(data)
    assert float(stage2) == 0.0


def test_both_keypoints_leave_the_coarse_grid_and_stay_in_the_matched_cells():
    cfg = load_config("tiny", ["coarse.threshold=0.0"])
    torch.manual_seed(0)
    fine = TwoStageFineMatching(cfg, 32).eval()
    B, h, w = 1, 6, 8
    b = torch.zeros(5, dtype=torch.long)
    i = torch.tensor([9, 10, 20, 30, 33])
    j = torch.tensor([10, 12, 19, 29, 40])
    centre = lambda idx: torch.stack([8 * (idx % w) + 3.5, 8 * (idx // w) + 3.5], -1).float()  # noqa: E731
    data = {"stride_c": 8, "stride_f": 2, "hw_c": (h, w), "b_ids": b, "i_ids": i, "j_ids": j,
            "mkpts0_c": centre(i), "mkpts1_c": centre(j), "image0": torch.rand(B, 1, 48, 64),
            "image1": torch.rand(B, 1, 48, 64), "valid_hw0": torch.tensor([[48, 64]]),
            "valid_hw1": torch.tensor([[48, 64]])}
    for k in "01":
        data[f"feat_c{k}"] = torch.randn(B, cfg.dims.c_match, h, w)
        data[f"feat_mid{k}"] = torch.randn(B, 32, 2 * h, 2 * w)
        data[f"feat_fine{k}"] = torch.randn(B, cfg.encoder.c_fine, 4 * h, 4 * w)
    with torch.no_grad():
        fine(data)
    k0, k1 = data["mkpts0_f"], data["mkpts1_f"]
    # image 0's point is a fine cell centre (2u + 0.5) inside its coarse cell
    assert torch.allclose((k0 - 0.5) / 2, ((k0 - 0.5) / 2).round())
    assert ((k0 - data["mkpts0_c"]).abs() <= 3.0 + 1e-6).all()
    # image 1's point: within the cell + margin (2 px) + the sub-pixel radius (2 px)
    assert ((k1 - data["mkpts1_c"]).abs() <= 3.0 + 2.0 + 2.0 + 1e-5).all()
    assert ((k1 - data["mkpts1_f_coarse"]).abs() <= 2.0 + 1e-5).all()


def test_standardise_uses_only_the_valid_pixels():
    from asmamba.model.fine_matching import standardise

    torch.manual_seed(0)
    x = torch.rand(2, 1, 20, 30)
    y = standardise(x, torch.tensor([[20, 30], [12, 17]]))
    crop = x[1, 0, :12, :17]
    assert torch.allclose(y[1, 0, :12, :17], (crop - crop.mean()) / crop.std(unbiased=False), atol=1e-5)
    assert y[1, 0, 12:].abs().max() == 0 and y[1, 0, :, 17:].abs().max() == 0
    assert torch.allclose(y[0, 0], (x[0, 0] - x[0, 0].mean()) / x[0, 0].std(unbiased=False), atol=1e-5)
