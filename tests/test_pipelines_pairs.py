"""Pair selection: exhaustive, sequential, pairs files, retrieval."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from asmamba.pipelines.pairs import (
    describer_for,
    histogram_descriptor,
    make_pairs,
    pairs_exhaustive,
    pairs_from_descriptors,
    pairs_sequential,
    read_pairs_file,
    write_pairs,
)

NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def test_exhaustive_and_sequential():
    assert pairs_exhaustive(NAMES) == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("a.jpg", "d.jpg"),
                                       ("b.jpg", "c.jpg"), ("b.jpg", "d.jpg"), ("c.jpg", "d.jpg")]
    assert pairs_sequential(NAMES, 2) == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("b.jpg", "c.jpg"),
                                          ("b.jpg", "d.jpg"), ("c.jpg", "d.jpg")]
    assert make_pairs("sequential:1", NAMES) == [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg"), ("c.jpg", "d.jpg")]
    with pytest.raises(ValueError, match=">= 1"):
        pairs_sequential(NAMES, 0)
    with pytest.raises(ValueError, match="integer K"):
        make_pairs("sequential:x", NAMES)
    with pytest.raises(ValueError, match="neither"):
        make_pairs("nonsense", NAMES)


def test_pairs_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "pairs.txt"
    write_pairs(path, [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg")])
    assert path.read_text() == "a.jpg b.jpg\nc.jpg d.jpg\n"
    path.write_text("# comment\na.jpg b.jpg 0 0 1 2 3\n\nb.jpg a.jpg\nc.jpg d.jpg\n")
    assert read_pairs_file(path) == [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg"), ("c.jpg", "d.jpg")]
    assert make_pairs(str(path), NAMES) == [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg")]  # repeats dropped
    # a pair of an image that exists but is unreadable (not in names) is dropped, not an error
    assert make_pairs(str(path), ["a.jpg", "b.jpg", "c.jpg"], known_names=NAMES) == [("a.jpg", "b.jpg")]

    path.write_text("a.jpg x.jpg\ny.jpg b.jpg\n")
    with pytest.raises(FileNotFoundError, match="2 image\\(s\\) that are not in the image folder: 'x.jpg', 'y.jpg'"):
        make_pairs(str(path), NAMES)
    path.write_text("a.jpg\n")
    with pytest.raises(ValueError, match=":1: a pair line holds two image names"):
        read_pairs_file(path)
    with pytest.raises(FileNotFoundError):
        read_pairs_file(tmp_path / "missing.txt")


def test_retrieval_picks_the_most_similar():
    # descriptors chosen by hand: a ~ b, c ~ d, the two groups orthogonal
    desc = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0], [1.0, 0.0, 0], [0, 1.0, 0.1], [0, 1.0, 0]]), dim=1)
    pairs = pairs_from_descriptors(NAMES, desc, NAMES, desc, k=1)
    assert pairs == [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg"), ("c.jpg", "d.jpg"), ("d.jpg", "c.jpg")]
    with pytest.raises(ValueError):
        pairs_from_descriptors(NAMES, desc, NAMES, desc, k=0)


def test_retrieval_with_the_histogram_fallback_groups_similar_images(tmp_path):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (80, 100), dtype=np.uint8)
    bright = rng.integers(180, 255, (80, 100), dtype=np.uint8)
    stripes = np.tile((np.arange(100) // 5 % 2 * 255).astype(np.uint8), (80, 1))
    for name, image in (("a.jpg", dark), ("b.jpg", dark + 5), ("c.jpg", bright), ("d.jpg", stripes)):
        cv2.imwrite(str(tmp_path / name), image)
    pairs = make_pairs("retrieval:1", NAMES, tmp_path)
    assert ("a.jpg", "b.jpg") in pairs
    assert describer_for(torch.nn.Identity()) is histogram_descriptor
    d = histogram_descriptor(torch.rand(1, 3, 50, 70))
    assert d.shape == (4 * (3 * 16 + 8),) and abs(float(d.norm()) - 1) < 1e-5
