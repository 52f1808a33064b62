"""Every loss term against values computed by hand (with ``math``) on tiny inputs, and the weighted total."""

from __future__ import annotations

import math

import pytest
import torch

from asmamba.training.losses import (
    ASMambaLoss,
    fine_ground_truth,
    fine_l2_with_std,
    focal_loss_dual_softmax,
    geometry_loss,
    probabilistic_flow_loss,
)

ALPHA, GAMMA = 0.25, 2.0


def focal_pos(p: float) -> float:
    """-alpha (1-p)^gamma log p, written out by hand."""
    return -ALPHA * (1 - p) ** 2 * math.log(p)


def focal_neg(p: float) -> float:
    """-alpha p^gamma log(1-p)."""
    return -ALPHA * p**2 * math.log(1 - p)


def smooth_l1(d: float, beta: float = 0.1) -> float:
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


# ----------------------------------------------------------------------------------------------- focal
CONF = torch.tensor([[[0.9, 0.2], [0.3, 0.6]]])  # (1, 2, 2)
GT = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])


def test_focal_loss_by_hand():
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    # one positive (0.9), three negatives (0.2, 0.3, 0.6): each part is a mean over its own elements
    expected = focal_pos(0.9) + (focal_neg(0.2) + focal_neg(0.3) + focal_neg(0.6)) / 3
    loss = focal_loss_dual_softmax(CONF, GT, valid, alpha=ALPHA, gamma=GAMMA)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.000263401 + (0.002231436 + 0.008025186 + 0.082466166) / 3, rel=1e-6)


def test_focal_loss_ignores_invalid_pairs_and_weights_parts():
    valid = torch.tensor([[[True, True], [True, False]]])  # the 0.6 pair is padding
    expected = 2.0 * focal_pos(0.9) + 3.0 * (focal_neg(0.2) + focal_neg(0.3)) / 2
    loss = focal_loss_dual_softmax(CONF, GT, valid, alpha=ALPHA, gamma=GAMMA, pos_weight=2.0, neg_weight=3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # without any positive only the negative part remains (no NaN from an empty mean)
    no_pos = focal_loss_dual_softmax(CONF, torch.zeros_like(GT), valid, alpha=ALPHA, gamma=GAMMA)
    assert no_pos.item() == pytest.approx((focal_neg(0.9) + focal_neg(0.2) + focal_neg(0.3)) / 3, rel=1e-6)


def test_focal_loss_gradient_pushes_the_right_way():
    conf = CONF.clone().requires_grad_(True)
    focal_loss_dual_softmax(conf, GT, torch.ones(1, 2, 2, dtype=torch.bool)).backward()
    assert conf.grad[0, 0, 0] < 0  # raising the positive's confidence lowers the loss
    assert (conf.grad[0].flatten()[1:] > 0).all()  # raising a negative's confidence raises it


# ----------------------------------------------------------------------------------------------- fine
def test_fine_l2_with_std_by_hand():
    expec_f = torch.tensor([[0.1, 0.2, 0.5], [0.5, -0.5, 0.25], [0.0, 0.0, 0.1], [0.0, 0.0, 0.2]])
    gt = torch.tensor([[0.3, 0.2], [0.5, -0.1], [1.2, 0.0], [0.0, -1.0]])  # last two: outside the window
    # inside: rows 0, 1 with std 0.5, 0.25 -> inverse std 2, 4 -> normalised to mean 1: 2/3, 4/3
    # squared errors: 0.2^2 = 0.04 and 0.4^2 = 0.16
    expected = (0.04 * 2 / 3 + 0.16 * 4 / 3) / 2
    assert expected == pytest.approx(0.12)
    assert fine_l2_with_std(expec_f, gt).item() == pytest.approx(expected, rel=1e-6)


def test_fine_l2_weights_are_detached_and_empty_case_is_zero():
    expec_f = torch.tensor([[0.1, 0.2, 0.5], [0.5, -0.5, 0.25]], requires_grad=True)
    gt = torch.tensor([[0.3, 0.2], [0.5, -0.1]])
    fine_l2_with_std(expec_f, gt).backward()
    assert torch.all(expec_f.grad[:, 2] == 0)  # the std only weights, it is not trained through this term
    # d/dpred of w * |pred - gt|^2 / M: row 0 x: 2/3 * 2 * (0.1 - 0.3) / 2
    assert expec_f.grad[0, 0].item() == pytest.approx(2 / 3 * 2 * (0.1 - 0.3) / 2, rel=1e-5)
    outside = torch.tensor([[2.0, 0.0], [0.0, 1.5]])
    expec_f.grad = None
    zero = fine_l2_with_std(expec_f, outside)
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph
    assert torch.all(expec_f.grad == 0)


def test_fine_ground_truth_in_window_units():
    # image 1's window (5 fine cells at stride 2 px) is centred on the matched cell's centre: radius 4 px.
    data = {
        "b_ids": torch.tensor([0, 1]),
        "i_ids": torch.tensor([2, 0]),
        "spv_w_pt0_i": torch.zeros(2, 3, 2),
        "mkpts1_c": torch.tensor([[11.5, 3.5], [3.5, 19.5]]),  # centres of cells (1, 0) and (0, 2)
        "fine_radius_px": 4.0,
    }
    data["spv_w_pt0_i"][0, 2] = torch.tensor([15.5, 1.5])  # +4 px right, -2 px up: window column 4, row 1
    data["spv_w_pt0_i"][1, 0] = torch.tensor([3.5, 19.5])  # exactly the cell centre
    data["spv_w_pt0_i"][0, 0] = torch.tensor([100.0, 100.0])  # not a match: must not be read
    torch.testing.assert_close(fine_ground_truth(data), torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    window = torch.linspace(-1, 1, 5)
    assert window[4] == 1.0 and window[1] == -0.5


# ----------------------------------------------------------------------------------------------- flow
def test_probabilistic_flow_loss_by_hand():
    flow = torch.zeros(1, 1, 3, 4)  # (B, h, w, 4) = (mu_x, mu_y, s_x, s_y)
    flow[0, 0, 0] = torch.tensor([1.0, 2.0, 0.0, math.log(2.0)])
    flow[0, 0, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # invalid cell
    flow[0, 0, 2] = torch.tensor([3.0, 1.0, -1.0, 0.5])
    gt = torch.tensor([[[2.0, 0.0], [50.0, 50.0], [3.5, 1.0]]])
    valid = torch.tensor([[True, False, True]])
    terms = [
        0.0 + math.exp(-0.0) * (2.0 - 1.0) ** 2,  # cell 0, x
        math.log(2.0) + 0.5 * (0.0 - 2.0) ** 2,  # cell 0, y
        -1.0 + math.exp(1.0) * 0.5**2,  # cell 2, x
        0.5 + math.exp(-0.5) * 0.0,  # cell 2, y
    ]
    loss = probabilistic_flow_loss(flow, gt, valid)
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    none = probabilistic_flow_loss(flow, gt, torch.zeros_like(valid))
    assert none.item() == 0.0


def test_flow_loss_minimum_is_at_the_true_error():
    # for a fixed error e the loss s + exp(-s) e^2 is smallest at s = log(e^2): the uncertainty learns the error
    e = 3.0
    s = torch.linspace(-2, 5, 701)
    flow = torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], -1)[None, None]  # (1, 1, 701, 4)
    gt = torch.full((1, 701, 2), e)
    per_s = [probabilistic_flow_loss(flow[:, :, k : k + 1], gt[:, k : k + 1], torch.ones(1, 1, dtype=torch.bool))
             for k in range(0, 701)]
    best = s[int(torch.stack(per_s).argmin())]
    assert best.item() == pytest.approx(math.log(e * e), abs=0.01)


# ----------------------------------------------------------------------------------------------- geometry
def test_geometry_loss_by_hand():
    geom = torch.tensor([[[[-0.2, -0.5, 0.0], [0.5, 1.0, 2.0], [0.3, 0.3, 1.0], [9.0, 9.0, 5.0]]]])  # (1, 1, 4, 3)
    gt_xy = torch.tensor([[[1.0, 0.0], [3.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])  # other image's cells
    covisible = torch.tensor([[True, True, False, False]])
    cells = torch.tensor([[True, True, True, False]])  # the last cell is padding
    hw_other = (2, 4)  # other grid: 2 rows, 4 columns; cell x -> (x + 0.5) / 4 * 2 - 1, y -> (y + 0.5) / 2 * 2 - 1
    # targets: cell 0 (1, 0) -> (-0.25, -0.5); cell 1 (3, 1) -> (0.75, 0.5)
    loc = (smooth_l1(-0.2 + 0.25) + smooth_l1(0.0) + smooth_l1(0.5 - 0.75) + smooth_l1(1.0 - 0.5)) / 4
    assert loc == pytest.approx((0.0125 + 0 + 0.2 + 0.45) / 4)
    bce = (math.log(2.0) + math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 3
    loss = geometry_loss(geom, gt_xy, covisible, cells, hw_other)
    assert loss.item() == pytest.approx(bce + loc, rel=1e-6)


def test_geometry_target_matches_the_flow_predictor_frame():
    # the flow head maps [-1, 1] to cells by x = (u + 1) / 2 * w - 0.5; the geometry target must be its inverse:
    # a prediction equal to that inverse has zero location loss
    w1, h1 = 6, 4
    gt_xy = torch.tensor([[[0.0, 0.0], [5.0, 3.0], [2.5, 1.25]]])
    u = (gt_xy + 0.5) / torch.tensor([w1, h1]) * 2 - 1
    geom = torch.cat([u, torch.full((1, 3, 1), 20.0)], -1)[:, None]  # confident covisibility logits
    loss = geometry_loss(geom, gt_xy, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool),
                         (h1, w1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-20.0)), abs=1e-7)
    torch.testing.assert_close(u[0, 0], torch.tensor([-1 + 1 / 6, -1 + 1 / 4]))


# ----------------------------------------------------------------------------------------------- total
def _loss_inputs() -> dict:
    """A 1 x 2 coarse grid; image 1's second cell is masked out. Terms are chosen so each has a hand value."""
    flow01 = torch.zeros(1, 1, 2, 4)  # cell 0: mu (0, 0), s (0, 0); gt (1, 0) -> (1 + 0) / 2 = 0.5
    flow10 = torch.zeros(1, 1, 2, 4)
    flow10[0, 0, 0, 2:] = 1.0  # cell 0: mu (0, 0), s (1, 1); gt (0, 0) -> (1 + 1) / 2 = 1
    flow10[0, 0, 1] = torch.tensor([7.0, 7.0, 0.0, 0.0])  # masked cell: ignored
    geom0 = torch.tensor([[[[0.5, 0.0, 0.0], [0.9, 0.9, 0.0]]]])  # cell 0 target (0.5, 0); logits 0 -> BCE log 2
    geom1 = torch.tensor([[[[-0.5, 0.0, 0.0], [0.0, 0.0, 3.0]]]])  # cell 0 target (-0.5, 0); cell 1 masked
    return {
        "hw_c": (1, 2),
        "valid_hw0_c": torch.tensor([[1, 2]]),
        "valid_hw1_c": torch.tensor([[1, 2]]),
        "mask_c1": torch.tensor([[True, False]]),
        "conf_matrix": torch.tensor([[[0.9, 0.5], [0.3, 0.7]]]),
        "conf_matrix_gt": torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),
        "spv_valid0": torch.tensor([[True, False]]),
        "spv_valid1": torch.tensor([[True, True]]),
        "spv_flow0": torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),
        "spv_flow1": torch.tensor([[[0.0, 0.0], [5.0, 5.0]]]),
        "flows": [(flow01, flow10), (flow01.clone(), flow10.clone())],  # two blocks
        "geom0": geom0,
        "geom1": geom1,
        "fine_on_gt": False,
        "expec_f": torch.zeros(0, 3),
    }


HAND_COARSE = focal_pos(0.9) + focal_neg(0.3)  # column 1 is padding in image 1
HAND_FLOW = 2 * (0.5 + 1.0)  # two blocks, both directions
HAND_GEOM = math.log(2.0) + math.log(2.0)  # image 0: BCE over 2 cells; image 1: over 1 cell; locations exact


def test_total_is_the_weighted_sum_of_hand_values():
    weights = {"coarse": 1.0, "fine": 2.0, "flow": 0.1, "geom": 0.5}
    total, logged = ASMambaLoss(weights)(_loss_inputs())
    assert logged["coarse"] == pytest.approx(HAND_COARSE, rel=1e-6)
    assert logged["fine"] == 0.0
    assert logged["flow"] == pytest.approx(HAND_FLOW, rel=1e-6)
    assert logged["geom"] == pytest.approx(HAND_GEOM, rel=1e-6)
    expected = HAND_COARSE + 0.1 * HAND_FLOW + 0.5 * HAND_GEOM
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert logged["total"] == pytest.approx(expected, rel=1e-6)
    # a weight left out counts as 0
    total_c, _ = ASMambaLoss({"coarse": 3.0})(_loss_inputs())
    assert total_c.item() == pytest.approx(3.0 * HAND_COARSE, rel=1e-6)


def test_total_includes_the_fine_term_on_gt_matches():
    data = _loss_inputs()
    data.update(
        fine_on_gt=True,
        b_ids=torch.tensor([0]), i_ids=torch.tensor([0]),
        spv_w_pt0_i=torch.tensor([[[13.5, 3.5], [0.0, 0.0]]]),  # 2 px right of cell 1's centre (11.5, 3.5)
        mkpts1_c=torch.tensor([[11.5, 3.5]]),
        fine_radius_px=4.0,
        expec_f=torch.tensor([[0.1, 0.2, 0.3]]),  # GT offset (0.5, 0): error (0.4, 0.2)
    )
    total, logged = ASMambaLoss({"coarse": 1.0, "fine": 2.0, "flow": 0.0, "geom": 0.0})(data)
    hand_fine = 0.4**2 + 0.2**2  # one match: its normalised weight is 1
    assert logged["fine"] == pytest.approx(hand_fine, rel=1e-6)
    assert total.item() == pytest.approx(HAND_COARSE + 2.0 * hand_fine, rel=1e-6)


def test_unknown_weight_key_raises():
    with pytest.raises(ValueError, match="depth"):
        ASMambaLoss({"coarse": 1.0, "depth": 1.0})
