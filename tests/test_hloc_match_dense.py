"""Standalone dense matching to hloc files: tracks across pairs, resume after a kill, overwrite, shards + merge."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

from asmamba_hloc.h5io import read_keypoints, read_matches
from asmamba_hloc.match_dense import (
    DenseMatchCache,
    aggregate,
    match_pairs,
    parse_shard,
    shard_pairs,
    unique_pairs,
)
from asmamba_hloc.quantize import QuantizationConf

# points every image "sees"; the stub matcher reports them in both images with sub-pixel jitter
GRID = np.array([[x, y] for x in (10.0, 30.0, 50.0) for y in (12.0, 40.0)], dtype=np.float32)


class GridMatcher(torch.nn.Module):
    """A kornia-contract stub: the GRID points in both images, jittered by < 0.3 px; counts its calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, data):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")  # what a Ctrl-C / kill during matching looks like from inside
        self.calls += 1
        g = torch.from_numpy(GRID)
        jitter = 0.1 * (self.calls % 3)
        n = len(g)
        return {
            "keypoints0": g + jitter,
            "keypoints1": g - jitter,
            "confidence": torch.linspace(0.5, 1.0, n),
            "batch_indexes": torch.zeros(n, dtype=torch.long),
        }


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (64, 80), dtype=np.uint8))
    return folder


PAIRS = [("a.png", "b.png"), ("b.png", "c.png"), ("a.png", "c.png"), ("c.png", "sub/d.png")]


def run_all(image_dir, out, matcher=None, **kw):
    cache = DenseMatchCache(out / "dense", tag="grid")
    report = match_pairs(matcher or GridMatcher(), PAIRS, image_dir, cache, resize_max=None, progress=False, **kw)
    return cache, report


def test_tracks_span_more_than_two_views(image_dir, tmp_path):
    cache, report = run_all(image_dir, tmp_path)
    assert report.matched == 4 and not report.failed
    conf = QuantizationConf(cell_size=4, max_error=2, max_kps=None)
    aggregate(PAIRS, cache, tmp_path / "f.h5", tmp_path / "m.h5", conf, progress=False)
    # every image gets one keypoint per grid point (not one per pair), so grid point i has the same keypoint
    # in every pair: a -> b -> c chains into a 3-view track
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        kps = read_keypoints(tmp_path / "f.h5", name)
        assert len(kps) == len(GRID)
        np.testing.assert_allclose(np.sort(kps, axis=0), np.sort(GRID, axis=0), atol=0.35)

    def track(name0, name1):
        k0, k1 = read_keypoints(tmp_path / "f.h5", name0), read_keypoints(tmp_path / "f.h5", name1)
        m, _ = read_matches(tmp_path / "m.h5", name0, name1)
        return {tuple(np.round(k0[i])): tuple(np.round(k1[j])) for i, j in m}

    ab, bc, ac = track("a.png", "b.png"), track("b.png", "c.png"), track("a.png", "c.png")
    assert len(ab) == len(GRID)
    for point_a, point_b in ab.items():
        assert point_a == point_b and bc[point_b] == ac[point_a]
    with h5py.File(tmp_path / "m.h5", "r") as fd:  # hloc's name for a pair with a nested image name
        assert "c.png/sub-d.png" in fd


def test_a_killed_run_resumes_and_overwrite_redoes(image_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_all(image_dir, tmp_path, GridMatcher(fail_after=2))
    cache = DenseMatchCache(tmp_path / "dense", tag="grid")
    assert sum(cache.load(*p) is not None for p in PAIRS) == 2
    # a pair killed while being written: a damaged file under the final name and a temporary left behind
    cache.path(*PAIRS[2]).write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "dense" / ".leftover.tmp-123.npz").write_bytes(b"partial")

    matcher = GridMatcher()
    _, report = run_all(image_dir, tmp_path, matcher)
    assert (report.cached, report.matched, matcher.calls) == (2, 2, 2)
    matcher = GridMatcher()
    _, report = run_all(image_dir, tmp_path, matcher)
    assert (report.cached, report.matched, matcher.calls) == (4, 0, 0)
    matcher = GridMatcher()
    _, report = run_all(image_dir, tmp_path, matcher, overwrite=True)
    assert (report.cached, report.matched, matcher.calls) == (0, 4, 4)


def test_other_matcher_settings_are_not_reused(image_dir, tmp_path):
    run_all(image_dir, tmp_path)
    other = DenseMatchCache(tmp_path / "dense", tag="another matcher")
    matcher = GridMatcher()
    report = match_pairs(matcher, PAIRS, image_dir, other, resize_max=None, progress=False)
    assert report.matched == 4 and matcher.calls == 4


def test_shards_split_the_pairs_and_merge_equals_one_run(image_dir, tmp_path):
    conf = QuantizationConf(cell_size=4, max_error=2, max_kps=None)
    calls = []
    for index in (1, 2):
        matcher = GridMatcher()
        cache, report = run_all(image_dir, tmp_path / "sharded", matcher, shard=(index, 2))
        calls.append(matcher.calls)
        if index == 1:
            with pytest.raises(FileNotFoundError, match="2 of 4 pairs have no dense matches"):
                aggregate(PAIRS, cache, tmp_path / "f.h5", tmp_path / "m.h5", conf, progress=False)
    assert calls == [2, 2]
    aggregate(PAIRS, cache, tmp_path / "sharded.f.h5", tmp_path / "sharded.m.h5", conf, progress=False)

    cache, _ = run_all(image_dir, tmp_path / "single")
    aggregate(PAIRS, cache, tmp_path / "single.f.h5", tmp_path / "single.m.h5", conf, progress=False)
    for pair in PAIRS:
        a, _ = read_matches(tmp_path / "sharded.m.h5", *pair)
        b, _ = read_matches(tmp_path / "single.m.h5", *pair)
        assert len(a) == len(b) == len(GRID)


def test_unreadable_image_is_reported_and_the_rest_goes_on(image_dir, tmp_path):
    (image_dir / "c.png").write_bytes(b"not an image")
    _, report = run_all(image_dir, tmp_path)
    assert report.matched == 1  # only (a, b) has two readable images
    assert set(report.bad_images) == {"c.png"}
    assert set(report.failed) == {("b.png", "c.png"), ("a.png", "c.png"), ("c.png", "sub/d.png")}


def test_zero_matches_give_empty_but_valid_files(image_dir, tmp_path):
    class Nothing(torch.nn.Module):
        def forward(self, data):
            return {"keypoints0": torch.zeros(0, 2), "keypoints1": torch.zeros(0, 2), "confidence": torch.zeros(0),
                    "batch_indexes": torch.zeros(0, dtype=torch.long)}

    cache = DenseMatchCache(tmp_path / "dense", tag="nothing")
    match_pairs(Nothing(), PAIRS[:1], image_dir, cache, progress=False)
    aggregate(PAIRS[:1], cache, tmp_path / "f.h5", tmp_path / "m.h5", progress=False)
    assert read_keypoints(tmp_path / "f.h5", "a.png").shape == (0, 2)
    assert read_matches(tmp_path / "m.h5", "a.png", "b.png")[0].shape == (0, 2)


def test_pairs_and_shards_helpers():
    assert unique_pairs([("a", "b"), ("b", "a"), ("a", "c")]) == [("a", "b"), ("a", "c")]
    with pytest.raises(ValueError, match="itself"):
        unique_pairs([("a", "a")])
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    for bad in ("0/3", "4/3", "x", "1-2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    pairs = [(str(i), str(i + 100)) for i in range(7)]
    shards = [shard_pairs(pairs, (i, 3)) for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(pairs) and [len(s) for s in shards] == [3, 2, 2]


def test_one_call_from_a_pairs_file(image_dir, tmp_path):
    from asmamba_hloc.match_dense import match_to_hloc

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png b.png\nb.png c.png\n")
    features, matches = match_to_hloc(GridMatcher(), pairs, image_dir, tmp_path / "out", resize_max=None,
                                      progress=False)
    assert len(read_matches(matches, "b.png", "c.png")[0]) == len(GRID)
    assert len(read_keypoints(features, "b.png")) == len(GRID)
    with pytest.raises(FileNotFoundError, match="pairs file"):
        match_to_hloc(GridMatcher(), tmp_path / "none.txt", image_dir, tmp_path / "out")
