"""Coarse ground truth against hand-computed cell assignments (translation, zoom), the mutual and union rules,
and a mixed batch whose depth item and homography item describe the same geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from asmamba.training.data.common import make_pair_item
from asmamba.training.supervision import compute_supervision_coarse

SIZE = 64  # 8 x 8 coarse cells


def _homography_batch(H: np.ndarray, size: int = SIZE, mask1: np.ndarray | None = None) -> dict:
    image = np.zeros((size, size), np.uint8)
    mask = np.ones((size, size), bool)
    item = make_pair_item(image, image, mask, mask if mask1 is None else mask1, "a b", H_0to1=H)
    return default_collate([item])


def _pairs(batch: dict) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in zip(batch["spv_i_ids"], batch["spv_j_ids"])}


def _grid_pairs(pairs_1d: list[tuple[int, int]], wc: int = 8) -> set[tuple[int, int]]:
    """2D cell pairs from per-axis pairs (x and y behave alike): cell index = r * wc + c."""
    return {(ra * wc + ca, rb * wc + cb) for ca, cb in pairs_1d for ra, rb in pairs_1d}


def test_translation_shifts_cells():
    batch = compute_supervision_coarse(_homography_batch(np.array([[1.0, 0, 16], [0, 1, 8], [0, 0, 1]])))
    # +16 px = 2 cells right, +8 px = 1 cell down; cells pushed out of the image have no match
    expected = {(r * 8 + c, (r + 1) * 8 + c + 2) for r in range(7) for c in range(6)}
    assert _pairs(batch) == expected
    conf = batch["conf_matrix_gt"][0]
    assert conf.shape == (64, 64) and conf.sum() == len(expected)
    assert all(conf[i, j] == 1 for i, j in expected)
    flow = batch["spv_flow0"][0].reshape(8, 8, 2)
    r, c = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    torch.testing.assert_close(flow, torch.stack([c + 2, r + 1], -1))
    valid = batch["spv_valid0"][0].reshape(8, 8)
    assert valid[:7, :6].all() and not valid[7].any() and not valid[:, 6:].any()
    torch.testing.assert_close(batch["spv_w_pt0_i"][0, 0], torch.tensor([3.5 + 16, 3.5 + 8]))
    torch.testing.assert_close(batch["spv_flow1"][0].reshape(8, 8, 2), torch.stack([c - 2, r - 1], -1))
    union = compute_supervision_coarse(_homography_batch(np.array([[1.0, 0, 16], [0, 1, 8], [0, 0, 1]])), rule="union")
    assert _pairs(union) == expected


def test_mutual_and_union_on_a_zoom():
    # image 1 = image 0 zoomed 2x about the origin: x1 = 2 x0.
    # forward, cell c (centre 8c+3.5) -> 16c+7 -> cell round((16c+3.5)/8) = 2c, for c = 0..3
    # backward, cell j -> (8j+3.5)/2 -> cell round((4j-1.75)/8): j = 0..7 -> 0 0 1 1 2 2 3 3
    forward = [(0, 0), (1, 2), (2, 4), (3, 6)]
    backward = [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5), (3, 6), (3, 7)]
    H = np.diag([2.0, 2.0, 1.0])
    mutual = compute_supervision_coarse(_homography_batch(H), rule="mutual")
    union = compute_supervision_coarse(_homography_batch(H), rule="union")
    mutual_1d = sorted(set(forward) & set(backward))
    union_1d = sorted(set(forward) | set(backward))
    assert _pairs(mutual) == _grid_pairs(mutual_1d) and len(_pairs(mutual)) == 16
    # the union also pairs each image-0 cell with every image-1 cell that warps into it
    assert {(a, b) for a, b in _pairs(union) if a < 8 and b < 8} == set(union_1d)
    x = _pairs(union)
    assert x == _grid_pairs(forward) | _grid_pairs(backward) and len(x) == 64
    assert union["conf_matrix_gt"].sum() == len(x)


def test_border_and_padding_mask():
    H = np.array([[1.0, 0, 16], [0, 1, 8], [0, 0, 1]])
    border = compute_supervision_coarse(_homography_batch(H), border=1)
    inner = {(r * 8 + c, (r + 1) * 8 + c + 2) for r in range(1, 6) for c in range(1, 5)}
    assert _pairs(border) == inner
    mask1 = np.ones((SIZE, SIZE), bool)
    mask1[:, 40:] = False  # padding from x = 40: cells of image 1 with c >= 5 hold no content
    masked = compute_supervision_coarse(_homography_batch(H, mask1=mask1))
    assert _pairs(masked) == {(r * 8 + c, (r + 1) * 8 + c + 2) for r in range(7) for c in range(3)}


def _plane_depth_item(shift_px: float, size: int = SIZE, occluder: bool = False) -> dict:
    """Fronto-parallel plane at Z = 10 seen by two cameras f = 100 apart by a baseline along x: a pure image
    shift of f * tx / Z pixels."""
    Z, f = 10.0, 100.0
    K = np.array([[f, 0, 31.5], [0, f, 31.5], [0, 0, 1]])
    T = np.eye(4)
    T[0, 3] = -shift_px * Z / f  # camera 1 sits shift*Z/f to the right: x1 = x0 - shift
    depth0 = np.full((size, size), Z, np.float32)
    depth1 = depth0.copy()
    if occluder:
        depth1[:, :24] = Z / 2  # something in front of the plane in image 1's left part
    image = np.zeros((size, size), np.uint8)
    mask = np.ones((size, size), bool)
    return make_pair_item(image, image, mask, mask, "d", depth0=depth0, depth1=depth1, K0=K, K1=K, T_0to1=T)


def test_mixed_batch_depth_and_homography_agree():
    # x1 = x0 - 16: the depth item moves every cell 2 cells left, the homography item says the same
    depth_item = _plane_depth_item(16.0)
    H = np.array([[1.0, 0, -16], [0, 1, 0], [0, 0, 1]])
    hom_item = make_pair_item(
        np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8), np.ones((SIZE, SIZE), bool),
        np.ones((SIZE, SIZE), bool), "h", H_0to1=H,
    )
    batch = compute_supervision_coarse(default_collate([depth_item, hom_item, _plane_depth_item(16.0, occluder=True)]))
    conf = batch["conf_matrix_gt"]
    expected = {(r * 8 + c, r * 8 + c - 2) for r in range(8) for c in range(2, 8)}
    for b in range(2):
        sel = batch["spv_b_ids"] == b
        got = {(int(i), int(j)) for i, j in zip(batch["spv_i_ids"][sel], batch["spv_j_ids"][sel])}
        assert got == expected, b
    torch.testing.assert_close(conf[0], conf[1])
    torch.testing.assert_close(batch["spv_w_pt0_i"][0], batch["spv_w_pt0_i"][1])
    # third item: image 1 sees an occluder at x < 24 (cells 0..2) - warps landing there fail the depth test
    sel = batch["spv_b_ids"] == 2
    got = {(int(i), int(j)) for i, j in zip(batch["spv_i_ids"][sel], batch["spv_j_ids"][sel])}
    assert got == {(i, j) for i, j in expected if j % 8 >= 3}


def test_rejects_bad_arguments():
    batch = _homography_batch(np.eye(3))
    with pytest.raises(ValueError, match="rule"):
        compute_supervision_coarse(batch, rule="nearest")
    batch["gt_type"] = torch.tensor([5])
    with pytest.raises(ValueError, match="gt_type"):
        compute_supervision_coarse(batch)
