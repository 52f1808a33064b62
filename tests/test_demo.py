"""The demo's stereo scoring against hand-worked matches on a rectified pair."""

import numpy as np

from asmamba.demo import stereo_errors


def test_stereo_errors_use_left_disparity_and_same_row():
    disparity = np.full((10, 20), 4.0, dtype=np.float32)
    disparity[5, 10] = np.inf  # unknown
    kpts0 = np.array([[12.0, 3.0], [12.0, 3.0], [10.0, 5.0], [7.2, 8.9]])
    kpts1 = np.array([[8.0, 3.0], [11.0, 7.0], [6.0, 5.0], [3.2, 8.9]])
    err = stereo_errors(kpts0, kpts1, disparity)
    assert err[0] == 0.0  # exactly x - d, same row
    assert np.isclose(err[1], 5.0)  # (3, 4) off
    assert np.isnan(err[2])  # no GT there
    assert np.isclose(err[3], 0.0)  # disparity read at the nearest pixel (7, 9)
