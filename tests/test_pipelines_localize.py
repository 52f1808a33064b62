"""`asmamba localize`: bad input, a corrupt query among good ones, and hloc's results format."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from asmamba.io import data_root
from asmamba.pipelines import localize as localize_cli
from asmamba.pipelines import reconstruct as reconstruct_cli
from asmamba.pipelines.localize import QueryResult, find_model, query_names, write_results

STRECHA = data_root() / "pose" / "strecha_entry-P10" / "images"


def test_results_file_is_hlocs_format(tmp_path):
    rotation = Rotation.from_rotvec([0, 0, np.pi / 2]).as_matrix()  # q = (cos 45, 0, 0, sin 45)
    results = [
        QueryResult("query/a.jpg", (rotation, np.array([1.0, 2.0, 3.0])), 50, 80, []),
        QueryResult("query/b.jpg", None, 0, 3, [], reason="too few"),
    ]
    write_results(tmp_path / "r.txt", results)
    (line,) = (tmp_path / "r.txt").read_text().splitlines()
    name, *values = line.split()
    assert name == "a.jpg"
    np.testing.assert_allclose([float(v) for v in values], [np.sqrt(0.5), 0, 0, np.sqrt(0.5), 1, 2, 3], atol=1e-12)


def test_bad_query_lists(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        query_names([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        query_names([tmp_path / "nope.jpg"])
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for folder in ("x", "y"):
        (tmp_path / folder / "q.jpg").write_bytes(b"1")
    with pytest.raises(ValueError, match="share the file name 'q.jpg'"):
        query_names([tmp_path / "x" / "q.jpg", tmp_path / "y" / "q.jpg"])
    with pytest.raises(FileNotFoundError, match="not an `asmamba reconstruct` output folder"):
        find_model(tmp_path)


def test_corrupt_query_is_reported_and_the_good_one_localized(tmp_path, capsys):
    if not STRECHA.is_dir():
        pytest.skip(f"real data not found at {STRECHA} (set ASMAMBA_DATA)")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"):
        os.symlink(STRECHA / name, images / name)
    out = tmp_path / "out"
    assert reconstruct_cli.main([str(images), str(out), "--matcher", "sift", "--resize-max", "320", "--quiet"]) == 0
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    code = localize_cli.main([str(out / "sfm"), str(broken), str(STRECHA / "0005.jpg"), "--num-retrieved", "3",
                              "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "broken.jpg: NOT localized" in printed and "corrupt" in printed
    assert "0005.jpg: localized" in printed
    (line,) = (out / "localization" / "results.txt").read_text().splitlines()
    fields = line.split()
    assert fields[0] == "0005.jpg" and len(fields) == 8
    assert np.linalg.norm([float(v) for v in fields[1:5]]) == pytest.approx(1.0)
