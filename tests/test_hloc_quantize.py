"""Dense-to-keypoint quantisation against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from asmamba_hloc.quantize import (
    QuantizationConf,
    assign_to_keypoints,
    grid_index,
    quantize_points,
    unique_matches,
)


def test_grid_cells_are_aligned_on_pixel_edges():
    # pixel centres on integers: cell i of size 8 covers [8i - 0.5, 8i + 7.5)
    points = np.array([[-0.5, 7.49], [7.5, 7.51], [15.4, -0.6]])
    np.testing.assert_array_equal(grid_index(points, 8), [[0, 0], [1, 1], [1, -1]])


def test_one_keypoint_per_cell_at_the_best_bin():
    # cell_size 8, max_error 2 -> bins of 2 px. Cell (0, 0) gets three points:
    #   (1.0, 1.0) score 0.5 and (1.2, 1.4) score 0.25 fall in bin (0, 0)  -> accumulated 0.75
    #   (5.0, 5.0) score 0.7 falls in bin (2, 2)                            -> 0.7
    # bin (0, 0) wins: keypoint = score-weighted mean ((0.5*1.0 + 0.25*1.2)/0.75, (0.5*1.0 + 0.25*1.4)/0.75)
    #                            = (1.0667, 1.1333), score 0.75.
    # Cell (1, 0) gets (9.0, 3.0) score 0.4 alone -> keypoint (9, 3), score 0.4.
    points = np.array([[1.0, 1.0], [9.0, 3.0], [5.0, 5.0], [1.2, 1.4]])
    scores = np.array([0.5, 0.4, 0.7, 0.25])
    kps, kp_scores = quantize_points(points, scores, QuantizationConf(cell_size=8, max_error=2, max_kps=None))
    np.testing.assert_allclose(kps, [[0.8 / 0.75, 0.85 / 0.75], [9.0, 3.0]], atol=1e-5)
    np.testing.assert_allclose(kp_scores, [0.75, 0.4], atol=1e-6)


def test_max_kps_keeps_the_highest_scores():
    # three 1 px cells with accumulated scores 0.3, 0.9 (0.5 + 0.4), 0.6; keep 2 -> the 0.9 and 0.6 cells,
    # in their order of appearance
    points = np.array([[0, 0], [10, 10], [20, 20], [10, 10]], float)
    scores = np.array([0.3, 0.5, 0.6, 0.4])
    kps, kp_scores = quantize_points(points, scores, QuantizationConf(cell_size=1, max_error=1, max_kps=2))
    np.testing.assert_allclose(kps, [[10, 10], [20, 20]])
    np.testing.assert_allclose(kp_scores, [0.9, 0.6])


def test_cell_size_is_at_least_max_error():
    # cell_size 1 with max_error 4 behaves as 4 px cells: (0, 0) and (2, 2) share cell (0, 0)
    kps, _ = quantize_points(np.array([[0.0, 0.0], [2.0, 2.0]]), np.array([1.0, 0.5]),
                             QuantizationConf(cell_size=1, max_error=4, max_kps=None))
    assert len(kps) == 1


def test_no_quantisation_keeps_every_distinct_point():
    points = np.array([[1.25, 2.5], [1.25, 2.5], [1.3, 2.5]])
    kps, kp_scores = quantize_points(points, np.array([0.5, 0.25, 1.0]), QuantizationConf(0, 0, None))
    np.testing.assert_allclose(kps, [[1.25, 2.5], [1.3, 2.5]])
    np.testing.assert_allclose(kp_scores, [0.75, 1.0])


def test_assignment_within_max_error():
    kps = np.array([[0.0, 0.0], [10.0, 0.0]])
    points = np.array([[1.0, 1.0], [10.0, 2.5], [4.9, 0.0]])  # distances 1.41 (kp 0), 2.5 (kp 1), 4.9 (kp 0)
    np.testing.assert_array_equal(assign_to_keypoints(points, kps, max_error=2.0), [0, -1, -1])
    np.testing.assert_array_equal(assign_to_keypoints(points, kps, max_error=5.0), [0, 1, 0])
    assert assign_to_keypoints(points, np.zeros((0, 2)), 2.0).tolist() == [-1, -1, -1]


def test_unique_matches_keep_the_best_of_each_keypoint():
    # raw matches (id0, id1, score):
    #   (0, 0, 0.9) best for id0=0 and id1=0 -> kept
    #   (0, 1, 0.5) id0=0 already has 0.9 -> dropped
    #   (1, 1, 0.4) best for id0=1, but id1=1's best is (2, 1, 0.8) -> dropped
    #   (2, 1, 0.8) kept;  (3, -1, 1.0) unassigned -> dropped
    ids0 = np.array([0, 0, 1, 2, 3])
    ids1 = np.array([0, 1, 1, 1, -1])
    scores = np.array([0.9, 0.5, 0.4, 0.8, 1.0])
    matches, kept = unique_matches(ids0, ids1, scores)
    np.testing.assert_array_equal(matches, [[0, 0], [2, 1]])
    np.testing.assert_allclose(kept, [0.9, 0.8])


def test_bad_conf_is_refused():
    with pytest.raises(ValueError):
        QuantizationConf(cell_size=-1)
    with pytest.raises(ValueError):
        QuantizationConf(max_kps=0)
