"""`asmamba reconstruct` on bad input and a small real scene (the full scenes are in test_pipelines_sfm.py)."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import h5py
import numpy as np
import pytest

from asmamba.io import data_root
from asmamba.pipelines import match as match_cli
from asmamba.pipelines import reconstruct as reconstruct_cli
from asmamba.pipelines.common import load_pipeline_config
from asmamba.pipelines.match import run_matching
from asmamba.pipelines.reconstruct import ReconstructionError, reconstruct

STRECHA = data_root() / "pose" / "strecha_entry-P10" / "images"
FAST = ["--matcher", "sift", "--resize-max", "320", "--quiet"]


@pytest.fixture
def scene(tmp_path):
    """Four overlapping Strecha images linked into a fresh folder."""
    if not STRECHA.is_dir():
        pytest.skip(f"real data not found at {STRECHA} (set ASMAMBA_DATA)")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"):
        os.symlink(STRECHA / name, folder / name)
    return folder


def fast_cfg(**changes):
    cfg = load_pipeline_config("reconstruct")
    cfg.matcher, cfg.resize_max = "sift", 320
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def test_small_scene_with_corrupt_images_skipped(scene, tmp_path, capsys):
    (scene / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (scene / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    assert reconstruct_cli.main([str(scene), str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "registered images:        4 / 6" in printed
    assert "skipped broken.jpg" in printed and "skipped empty.png" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_registered"] == 4 and set(summary["skipped_images"]) == {"broken.jpg", "empty.png"}
    assert summary["mean_track_length"] > 2.0  # quantisation made tracks across pairs
    for name in ("pairs.txt", "features.h5", "matches.h5", "database.db", "sfm/images.bin", "reconstruction.png"):
        assert (out / name).exists(), name
    assert "broken.jpg" not in (out / "pairs.txt").read_text()


def test_empty_missing_and_imageless_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert reconstruct_cli.main([str(empty), str(tmp_path / "o1"), *FAST]) == 2
    assert "contains no image" in capsys.readouterr().err
    (empty / "notes.txt").write_text("no images here")
    assert reconstruct_cli.main([str(empty), str(tmp_path / "o2"), *FAST]) == 2
    assert "contains no image" in capsys.readouterr().err
    assert reconstruct_cli.main([str(tmp_path / "nowhere"), str(tmp_path / "o3"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_single_readable_image_is_refused(scene, tmp_path):
    for name in ("0001.jpg", "0002.jpg", "0003.jpg"):
        (scene / name).unlink()
        (scene / name).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="1 readable image\\(s\\) \\(3 unreadable"):
        run_matching(scene, tmp_path / "out", fast_cfg())


def test_names_colliding_in_hloc_pair_keys(scene, tmp_path):
    (scene / "0000").mkdir()
    os.symlink(STRECHA / "0004.jpg", scene / "0000" / "x.jpg")
    os.symlink(STRECHA / "0005.jpg", scene / "0000-x.jpg")
    with pytest.raises(ValueError, match="'0000-x.jpg' and '0000/x.jpg' collide|'0000/x.jpg' and '0000-x.jpg' collide"):
        run_matching(scene, tmp_path / "out", fast_cfg())


def test_pairs_file_naming_missing_images(scene, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("0000.jpg 0001.jpg\n0001.jpg ghost.jpg\n")
    assert reconstruct_cli.main([str(scene), str(tmp_path / "out"), *FAST, "--pairs", str(pairs)]) == 2
    assert "names 1 image(s) that are not in the image folder: 'ghost.jpg'" in capsys.readouterr().err


def test_a_killed_run_resumes(scene, tmp_path, monkeypatch):
    """Kill the matching after one pair (an exception out of the matcher), rerun: only the rest is matched."""
    module = tmp_path / "killable.py"
    module.write_text(textwrap.dedent("""
        import os
        from asmamba.baselines.sift import SIFTMatcher

        class Killable(SIFTMatcher):
            calls = 0

            def forward(self, data):
                if Killable.calls >= int(os.environ.get("KILL_AFTER", "1000000")):
                    raise KeyboardInterrupt("killed")
                Killable.calls += 1
                return super().forward(data)

        def make():
            return Killable()
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = fast_cfg(matcher="killable:make")
    monkeypatch.setenv("KILL_AFTER", "2")
    with pytest.raises(KeyboardInterrupt):
        run_matching(scene, tmp_path / "out", cfg, progress=False)
    assert not (tmp_path / "out" / "matches.h5").exists()  # nothing half-merged
    monkeypatch.delenv("KILL_AFTER")
    out = run_matching(scene, tmp_path / "out", cfg, progress=False)
    assert (out.matching.cached, out.matching.matched) == (2, 4)
    with h5py.File(out.matches_path, "r") as fd:
        assert len(fd.keys()) == 3  # groups of the first names: 0000, 0001, 0002


def test_shards_then_merge_through_the_cli(scene, tmp_path, capsys):
    out = tmp_path / "out"
    assert match_cli.main([str(scene), str(out), *FAST, "--shard", "1/2"]) == 0
    assert "shard done" in capsys.readouterr().out
    assert match_cli.main([str(scene), str(out), *FAST, "--merge"]) == 2
    assert "3 of 6 pairs have no dense matches" in capsys.readouterr().err
    assert match_cli.main([str(scene), str(out), *FAST, "--shard", "2/2"]) == 0
    assert match_cli.main([str(scene), str(out), *FAST, "--merge"]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "matches.h5").is_file()
    assert match_cli.main([str(scene), str(out), *FAST, "--shard", "3/2"]) == 2


def test_failed_initialisation_is_a_message_not_a_trace(scene, tmp_path, capsys):
    other = data_root() / "homography" / "hpatches_v_dogman" / "1.ppm"
    if not other.is_file():
        pytest.skip("real data missing")
    for name in ("0001.jpg", "0002.jpg", "0003.jpg"):
        (scene / name).unlink()
    shutil.copy(other, scene / "unrelated.ppm")
    with pytest.raises(ReconstructionError, match=r"from 2 images: \d+ of 1 pairs have matches .* 0 pairs passed"):
        reconstruct(scene, tmp_path / "out", fast_cfg(), progress=False)
    assert reconstruct_cli.main([str(scene), str(tmp_path / "out2"), *FAST]) == 1
    assert "asmamba reconstruct: reconstruction failed: COLMAP could not initialise" in capsys.readouterr().err


def test_unknown_matcher_and_bad_options(scene, tmp_path, capsys):
    assert reconstruct_cli.main([str(scene), str(tmp_path / "o"), "--matcher", "nope", "--quiet"]) == 2
    assert "unknown matcher 'nope'" in capsys.readouterr().err
    assert reconstruct_cli.main([str(scene), str(tmp_path / "o"), *FAST, "--set", "colour=red"]) == 2
    assert "unknown reconstruct pipeline option" in capsys.readouterr().err


LATTICE_MATCHER = """
import torch


class Lattice(torch.nn.Module):
    \"\"\"Matches like AS-Mamba's coarse stage: image0's 8 px cell centres (8 i + 3.5) with image1 points 1 px up
    and left of them (a refined side).\"\"\"

    def forward(self, data):
        h, w = data["image0"].shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h // 8), torch.arange(w // 8), indexing="ij")
        k0 = torch.stack([xs.flatten(), ys.flatten()], -1).float() * 8 + 3.5
        return {"keypoints0": k0, "keypoints1": k0 - 1.0, "confidence": torch.full((len(k0),), 0.5),
                "batch_indexes": torch.zeros(len(k0), dtype=torch.long)}


def make():
    return Lattice()
"""


def test_dense_cells_follow_each_images_downscale(tmp_path, monkeypatch):
    """512x384 images matched at resize_max 256 (2 original pixels per matched pixel): AS-Mamba's cells are 16 px
    in the original images, its cell centres at 16 i + 7.5. An image seen both as image0 (centres) and as image1
    (1 matched px = 2 px off) must get one keypoint per AS-Mamba cell, 32 x 24 of them; 8 px cells in original
    pixels would split each into two."""
    import matplotlib.image

    (tmp_path / "lattice_matcher.py").write_text(LATTICE_MATCHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        matplotlib.image.imsave(images / f"{name}.png", rng.integers(0, 255, (384, 512), dtype=np.uint8), cmap="gray")
    cfg = load_pipeline_config("reconstruct")
    cfg.matcher, cfg.resize_max, cfg.device = "lattice_matcher:make", 256, "cpu"
    out = run_matching(images, tmp_path / "out", cfg, progress=False)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["quantization_scales"] == {"a.png": 2.0, "b.png": 2.0, "c.png": 2.0}
    with h5py.File(out.features_path, "r") as fd:
        keypoints = fd["b.png"]["keypoints"][()]  # b is image1 of (a, b) and image0 of (b, c)
    assert len(keypoints) == 32 * 24
    centres = (8 * np.stack(np.meshgrid(np.arange(32), np.arange(24)), -1).reshape(-1, 2) + 4) * 2 - 0.5
    distance = np.abs(keypoints[:, None, :] - centres[None]).max(-1).min(1)
    assert distance.max() <= 2.0 + 1e-4  # every keypoint is its cell's centre or the refined point beside it
