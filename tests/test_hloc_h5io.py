"""hloc's HDF5 layout: exact group/dataset names, dtypes and shapes, and the reader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from asmamba_hloc.h5io import (
    atomic_h5,
    check_pair_keys_unique,
    find_pair,
    list_h5_names,
    names_to_pair,
    names_to_pair_old,
    pairs_to_matches0,
    read_keypoints,
    read_matches,
    write_features,
    write_matches,
)


def test_pair_names_follow_hloc():
    # hloc.utils.parsers: "/" inside names becomes "-", the names are joined by "/" (legacy: "_")
    assert names_to_pair("a.jpg", "b.jpg") == "a.jpg/b.jpg"
    assert names_to_pair("seq1/a.jpg", "db/x/b.jpg") == "seq1-a.jpg/db-x-b.jpg"
    assert names_to_pair_old("seq1/a.jpg", "b.jpg") == "seq1-a.jpg_b.jpg"


def test_written_layout_has_hloc_names_dtypes_and_shapes(tmp_path):
    feats, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    kps0 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    kps1 = np.array([[7.0, 8.0], [9.0, 10.0]])
    with atomic_h5(feats) as fd:
        write_features(fd, "seq1/a.jpg", kps0, scores=[1, 2, 3], image_size=(640, 480))
        write_features(fd, "b.jpg", kps1)
    with atomic_h5(matches) as fd:
        m0, s0 = pairs_to_matches0(np.array([[0, 1], [2, 0]]), np.array([0.5, 0.25]), num_keypoints0=3)
        write_matches(fd, "seq1/a.jpg", "b.jpg", m0, s0, dense=(kps0[:2], kps1, np.array([0.5, 0.25])))

    with h5py.File(feats, "r") as fd:
        # nested groups for names with "/" (hloc writes fd.create_group(name))
        assert isinstance(fd["seq1"], h5py.Group) and "a.jpg" in fd["seq1"]
        kp = fd["seq1/a.jpg/keypoints"]
        assert kp.dtype == np.float32 and kp.shape == (3, 2)
        assert fd["seq1/a.jpg/scores"].dtype == np.float32 and fd["seq1/a.jpg/scores"].shape == (3,)
        assert list(fd["seq1/a.jpg/image_size"][()]) == [640, 480]
        assert set(fd["b.jpg"].keys()) == {"keypoints"}
    with h5py.File(matches, "r") as fd:
        assert list(fd.keys()) == ["seq1-a.jpg"]  # "/" replaced by "-", then name0/name1 nesting
        group = fd["seq1-a.jpg/b.jpg"]
        assert group["matches0"].dtype == np.int32 and group["matches0"].shape == (3,)
        assert group["matching_scores0"].dtype == np.float16 and group["matching_scores0"].shape == (3,)
        assert list(group["matches0"][()]) == [1, -1, 0]
        np.testing.assert_array_equal(group["matching_scores0"][()], np.array([0.5, 0, 0.25], np.float16))
        assert group["keypoints0"].shape == (2, 2) and group["scores"].dtype == np.float32

    assert list_h5_names(feats) == ["b.jpg", "seq1/a.jpg"]
    np.testing.assert_array_equal(read_keypoints(feats, "seq1/a.jpg"), kps0.astype(np.float32))


def test_reader_returns_the_matches_in_either_orientation(tmp_path):
    path = tmp_path / "matches.h5"
    with atomic_h5(path) as fd:
        write_matches(fd, "q/a.jpg", "b.jpg", np.array([2, -1, 0, -1], np.int32), np.array([0.9, 0, 0.7, 0], np.float16))
    matches, scores = read_matches(path, "q/a.jpg", "b.jpg")
    np.testing.assert_array_equal(matches, [[0, 2], [2, 0]])
    np.testing.assert_allclose(scores, [0.9, 0.7], atol=1e-3)
    flipped, _ = read_matches(path, "b.jpg", "q/a.jpg")  # stored as (a, b): indices swap
    np.testing.assert_array_equal(flipped, [[2, 0], [0, 2]])


def test_reader_finds_legacy_pair_names(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as fd:  # hloc's old layout written by hand: "name0_name1"
        g = fd.create_group("a.jpg_b.jpg")
        g.create_dataset("matches0", data=np.array([1, -1], np.int32))
        g.create_dataset("matching_scores0", data=np.array([0.5, 0], np.float16))
    with h5py.File(path, "r") as fd:
        assert find_pair(fd, "b.jpg", "a.jpg") == ("a.jpg_b.jpg", True)
    np.testing.assert_array_equal(read_matches(path, "a.jpg", "b.jpg")[0], [[0, 1]])


def test_missing_pair_and_image_raise_clear_errors(tmp_path):
    path = tmp_path / "m.h5"
    with atomic_h5(path) as fd:
        write_matches(fd, "a", "b", np.zeros(0, np.int32), np.zeros(0, np.float16))
    with pytest.raises(KeyError, match="is not in"):
        read_matches(path, "a", "c")
    with pytest.raises(KeyError, match="no keypoints"):
        read_keypoints(path, "zzz")


def test_matches0_rejects_bad_input():
    with pytest.raises(ValueError, match="out of range"):
        pairs_to_matches0(np.array([[3, 0]]), np.array([1.0]), num_keypoints0=3)
    with pytest.raises(ValueError, match="several matches"):
        pairs_to_matches0(np.array([[0, 0], [0, 1]]), np.array([1.0, 1.0]), num_keypoints0=2)


def test_names_colliding_in_pair_keys_are_refused():
    check_pair_keys_unique(["a/b.jpg", "a/c.jpg"])
    with pytest.raises(ValueError, match="collide"):
        check_pair_keys_unique(["a/b.jpg", "a-b.jpg"])


def test_atomic_h5_keeps_the_old_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "features.h5"
    with atomic_h5(path) as fd:
        write_features(fd, "a.jpg", np.zeros((2, 2)))
    with pytest.raises(RuntimeError):
        with atomic_h5(path) as fd:
            write_features(fd, "b.jpg", np.zeros((5, 2)))
            raise RuntimeError("killed")
    assert list_h5_names(path) == ["a.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["features.h5"]  # no temporary left behind
