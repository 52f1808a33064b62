"""The training-corpus builder: covisibility pairs binned by overlap (hand-counted shared points, a hand-built COLMAP
model), the by-scene split, resuming, the errors a user meets, and one real SfM scene against its Bundler cameras."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from asmamba.io import data_root
from asmamba.training.data import corpus
from asmamba.training.data.corpus import (
    CorpusError,
    SceneSource,
    bin_counts,
    bin_index,
    build_sfm_corpus,
    discover_scenes,
    load_build_config,
    pair_overlaps,
    select_pairs,
    split_scenes,
)
from asmamba.training.data.sfm_scene import SparseView, read_views

TRAIN_ROOT = data_root() / "train"


def _view(ids) -> SparseView:
    ids = np.asarray(list(ids), np.int64)
    n = len(ids)
    return SparseView("v", 10, 10, np.eye(3), np.eye(4), np.zeros((n, 2)), np.ones(n), ids)


# ---------------------------------------------------------------------------------------------- overlap and bins
def test_pair_overlap_is_shared_over_the_larger_view():
    # view 0 sees 0..99, view 1 sees 50..149 (50 shared of 100 each), view 2 sees 90..109 (20 points, 10 shared with 0)
    views = [_view(range(100)), _view(range(50, 150)), _view(range(90, 110))]
    got = {(i, j): (o, s) for i, j, o, s in pair_overlaps(views, min_shared=1)}
    assert set(got) == {(0, 1), (0, 2), (1, 2)}
    assert got[(0, 1)] == (pytest.approx(0.5), 50)
    # a small view inside a large one: 10 shared of max(100, 20) points -> 0.1, not 10/20
    assert got[(0, 2)] == (pytest.approx(0.1), 10)
    assert got[(1, 2)] == (pytest.approx(0.2), 20)
    assert {(i, j) for i, j, _, _ in pair_overlaps(views, min_shared=15)} == {(0, 1), (1, 2)}


def test_bin_index_edges():
    bins = [0.1, 0.3, 0.5, 1.0]
    assert [bin_index(v, bins) for v in (0.05, 0.1, 0.29, 0.3, 0.99, 1.0)] == [-1, 0, 0, 1, 2, 2]


def test_select_pairs_caps_each_bin_and_keeps_wide_baselines():
    # a "sequence": view k sees points [10k, 10k + 100), so views d apart share 100 - 10d points (overlap 1 - d/10).
    views = [_view(range(10 * k, 10 * k + 100)) for k in range(12)]
    bins = [0.1, 0.3, 0.5, 0.7, 1.0]
    all_pairs = select_pairs(views, bins, max_per_bin=None, min_shared=1)
    truth = {(i, j): (100 - 10 * (j - i)) / 100 for i in range(12) for j in range(i + 1, 12) if j - i <= 9}
    assert {tuple(p[0]) for p in all_pairs} == set(truth)
    for (i, j), overlap, shared in all_pairs:
        assert overlap == pytest.approx(truth[(i, j)]) and shared == 100 - 10 * (j - i)
    full = bin_counts(all_pairs, bins)
    expected = [0] * 4
    for overlap in truth.values():
        expected[bin_index(overlap, bins)] += 1
    assert full == expected and full[-1] > 3 * full[0]  # near-duplicates dominate the raw pairs
    capped = select_pairs(views, bins, max_per_bin=5, min_shared=1, seed=3)
    assert bin_counts(capped, bins) == [min(5, c) for c in full]
    assert {tuple(p[0]) for p in capped} <= set(truth)
    assert [tuple(p[0]) for p in capped] == sorted(tuple(p[0]) for p in capped)
    again = select_pairs(views, bins, max_per_bin=5, min_shared=1, seed=3)
    assert [tuple(p[0]) for p in again] == [tuple(p[0]) for p in capped]
    with pytest.raises(ValueError, match="increasing"):
        select_pairs(views, [0.5, 0.2], None, 1)


def _write_two_plane_model(root: Path, shared: int = 60, own: tuple[int, int, int] = (40, 90, 150)):
    """A PINHOLE COLMAP model of three views with hand-chosen tracks: views 0 and 1 share ``shared`` points, views 1
    and 2 share 20, views 0 and 2 none; each view also sees ``own[k]`` points of its own. Returns the model folder
    and image folder."""
    import cv2
    import pycolmap

    W, H, f = 160, 128, 120.0
    rng = np.random.default_rng(0)
    centres = [np.zeros(3), np.array([0.3, 0.0, 0.0]), np.array([0.6, 0.0, 0.0])]
    tracks: list[list[int]] = []  # views observing each point
    tracks += [[0, 1]] * shared + [[1, 2]] * 20
    for k in range(3):
        tracks += [[k]] * own[k]
    X = np.concatenate([rng.uniform(-2, 2, (len(tracks), 2)) * 0.5 + [0.3, 0], np.full((len(tracks), 1), 8.0)], 1)
    (root / "images").mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_name(1, "PINHOLE", f, W, H)
    camera.params = [f, f, 80.0, 64.0]
    rec.add_camera_with_trivial_rig(camera)
    K = np.array([[f, 0, 80.0], [0, f, 64.0], [0, 0, 1]])
    obs_index: dict[tuple[int, int], int] = {}
    for k, c in enumerate(centres):
        cv2.imwrite(str(root / "images" / f"{k}.jpg"), (rng.random((H, W)) * 255).astype(np.uint8))
        seen = [n for n, t in enumerate(tracks) if k in t]
        x = (X[seen] - c) @ K.T
        points = [pycolmap.Point2D(p) for p in x[:, :2] / x[:, 2:]]
        for m, n in enumerate(seen):
            obs_index[(k, n)] = m
        image = pycolmap.Image(name=f"{k}.jpg", camera_id=1, image_id=k + 1, points2D=points)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), -c))
    for n, t in enumerate(tracks):
        track = pycolmap.Track()
        for k in t:
            track.add_element(k + 1, obs_index[(k, n)])
        rec.add_point3D(X[n], track)
    model = root / "model"
    model.mkdir()
    rec.write(str(model))
    return model, root / "images"


def test_select_pairs_on_a_colmap_model_with_known_covisibility(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    model, _ = _write_two_plane_model(tmp_path)
    views = read_views(pycolmap.Reconstruction(str(model)))
    n_points = [len(v.point_ids) for v in views]
    assert n_points == [100, 170, 170]  # 60+40, 60+20+90, 20+150
    pairs = {tuple(p[0]): (p[1], p[2]) for p in select_pairs(views, [0.05, 0.2, 0.5, 1.0], None, min_shared=10)}
    # (0, 1): 60 shared / max(100, 170); (1, 2): 20 / 170; (0, 2) share nothing
    assert set(pairs) == {(0, 1), (1, 2)}
    assert pairs[(0, 1)] == (pytest.approx(60 / 170), 60.0)
    assert pairs[(1, 2)] == (pytest.approx(20 / 170), 20.0)


# ---------------------------------------------------------------------------------------------- split and errors
def test_split_by_scene_is_disjoint_and_checked():
    names = [f"s{k}" for k in range(6)]
    train, val = split_scenes(names, ["s1", "s4"])
    assert val == ["s1", "s4"] and set(train) == {"s0", "s2", "s3", "s5"} and not set(train) & set(val)
    with pytest.raises(CorpusError, match="not scenes of the corpus"):
        split_scenes(names, ["s9"])
    with pytest.raises(CorpusError, match="nothing is left"):
        split_scenes(["a"], ["a"])


def test_shipped_build_config_holds_out_real_scenes():
    cfg = load_build_config()
    assert len(cfg["validation"]) >= 2 and not set(cfg["validation"]) & set(cfg["exclude"])
    assert "openmvg_360_flat" in cfg["exclude"]
    if TRAIN_ROOT.is_dir():
        names = [s.name for s in discover_scenes(TRAIN_ROOT, cfg["extra_scenes"], cfg["exclude"], cfg["min_images"])]
        train, val = split_scenes(names, cfg["validation"])
        assert set(val) == set(cfg["validation"]) and len(train) >= 10


def _scene_tree(root: Path, counts: dict[str, int]) -> Path:
    import cv2

    for name, n in counts.items():
        (root / name / "images").mkdir(parents=True)
        for k in range(n):
            cv2.imwrite(str(root / name / "images" / f"{k}.jpg"), np.zeros((8, 8), np.uint8))
    return root


def test_discover_scenes_errors_name_the_problem(tmp_path):
    with pytest.raises(CorpusError, match="training root .* does not exist"):
        discover_scenes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no <scene>/images"):
        discover_scenes(tmp_path / "empty")
    root = _scene_tree(tmp_path / "train", {"big": 4, "tiny": 2})
    with pytest.raises(CorpusError, match="'tiny' has 2 image"):
        discover_scenes(root, min_images=3)
    assert [s.name for s in discover_scenes(root, exclude=["tiny"])] == ["big"]
    with pytest.raises(CorpusError, match="not scenes of"):
        discover_scenes(root, exclude=["missing"])
    # a training root inside an evaluation folder of the data root, or a scene named like an evaluation scene
    data = tmp_path / "data"
    _scene_tree(data / "pose", {"reichstag": 3})
    with pytest.raises(CorpusError, match="evaluation"):
        discover_scenes(data / "pose", data_root=data)
    _scene_tree(tmp_path / "t2", {"reichstag": 3})
    with pytest.raises(CorpusError, match="named like an evaluation scene"):
        discover_scenes(tmp_path / "t2", data_root=data)


def test_cli_reports_a_missing_train_root_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["build", str(tmp_path / "out"), "--train-root", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training root" in err[0] and "does not exist" in err[0]


# ---------------------------------------------------------------------------------------------- resuming
def test_build_resumes_and_skips_finished_scenes(tmp_path, monkeypatch):
    pytest.importorskip("pycolmap")
    model, images = _write_two_plane_model(tmp_path / "src")
    work = tmp_path / "colmap"
    (work / "plane" / "models").mkdir(parents=True)
    model.rename(work / "plane" / "models" / "0")  # a finished SfM: the builder reuses it instead of running COLMAP
    cfg = load_build_config(overrides=["pairs.min_shared=10", "pairs.bins=[0.05,0.2,0.5,1.0]"])
    cfg["validation"] = []
    sources = [SceneSource("plane", images, 3, "CC BY-NC 4.0")]
    out = tmp_path / "corpus"
    first = build_sfm_corpus(out, sources, cfg, work, progress=False)
    assert [r.error for r in first] == [""]
    stats = json.loads((out / "stats" / "plane.json").read_text())
    assert stats["registered"] == 3 and stats["points"] == 60 + 20 + 40 + 90 + 150 and stats["non_commercial"]
    assert stats["pairs_by_bin"] == {"0.05-0.2": 1, "0.2-0.5": 1, "0.5-1": 0}
    info = pickle.loads((out / "scene_info" / "plane.npz").read_bytes())
    assert len(info["pair_infos"]) == 2 and info["split"] == "train"
    assert (out / "splits" / "train.txt").read_text() == "plane\n" and (out / "splits" / "val.txt").read_text() == ""
    assert "| plane (NC) | train | 3 / 3 |" in (out / "corpus_stats.md").read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished scene was rebuilt")

    monkeypatch.setattr(corpus, "build_scene", must_not_run)
    second = build_sfm_corpus(out, sources, cfg, work, progress=False)
    assert second[0].registered == 3 and second[0].pairs == 2
    monkeypatch.undo()
    # an unfinished scene (no stats marker, e.g. killed while writing) is built again
    (out / "stats" / "plane.json").unlink()
    calls = []
    real = corpus.build_scene
    monkeypatch.setattr(corpus, "build_scene", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    build_sfm_corpus(out, sources, cfg, work, progress=False)
    assert calls == ["plane"] and (out / "stats" / "plane.json").is_file()


def test_failed_scene_is_reported_and_retried(tmp_path):
    pytest.importorskip("pycolmap")
    model, images = _write_two_plane_model(tmp_path / "src")
    work = tmp_path / "colmap"
    (work / "plane" / "models").mkdir(parents=True)
    model.rename(work / "plane" / "models" / "0")
    cfg = load_build_config(overrides=["sfm.min_registered=4"])
    cfg["validation"] = []
    out = tmp_path / "corpus"
    result = build_sfm_corpus(out, [SceneSource("plane", images, 3)], cfg, work, progress=False)
    assert "only 3 of 3 images registered" in result[0].error
    assert not (out / "stats" / "plane.json").exists() and "failed" in (out / "corpus_stats.md").read_text()


# ---------------------------------------------------------------------------------------------- a real scene
@pytest.mark.skipif(not (TRAIN_ROOT / "bundler_kermit" / "source_cameras" / "bundle.out").is_file(),
                    reason="shared training data not present")
def test_real_scene_sfm_agrees_with_the_bundler_cameras(tmp_path):
    """COLMAP SIFT on bundler_kermit (11 photos, 640x480) against Bundler's own cameras (bundle.out): relative
    rotations between registered views agree within 2 degrees."""
    pycolmap = pytest.importorskip("pycolmap")
    cfg = load_build_config()
    cfg["validation"] = []
    source = discover_scenes(TRAIN_ROOT, exclude=[])  # every scene, to find kermit with its licence
    source = [s for s in source if s.name == "bundler_kermit"]
    result = build_sfm_corpus(tmp_path / "corpus", source, cfg, tmp_path / "colmap", progress=False)[0]
    assert not result.error and result.registered >= 10 and result.mean_reprojection_error < 1.5
    info = pickle.loads((tmp_path / "corpus" / "scene_info" / "bundler_kermit.npz").read_bytes())
    assert sum(1 for p in info["pair_infos"] if p[1] < 0.3) >= 3  # wide baselines are listed

    lines = (TRAIN_ROOT / "bundler_kermit" / "source_cameras" / "bundle.out").read_text().splitlines()[1:]
    n_cams = int(lines[0].split()[0])
    names = sorted(p.name for p in (TRAIN_ROOT / "bundler_kermit" / "images").iterdir())
    flip = np.diag([1.0, -1.0, -1.0])  # Bundler cameras look down -z with y up; COLMAP's down +z with y down
    gt = {}
    for k in range(n_cams):
        rows = [[float(v) for v in lines[1 + 5 * k + r].split()] for r in range(5)]
        if rows[0][0] == 0.0:
            continue  # a camera Bundler did not register
        gt[names[k]] = flip @ np.array(rows[1:4])
    est = {Path(str(n)).name: np.asarray(T)[:3, :3] for n, T in zip(info["image_paths"], info["poses"])}
    common = sorted(set(gt) & set(est))
    assert len(common) >= 9
    errors = []
    for a in common:
        for b in common:
            if a < b:
                R_gt, R_est = gt[b] @ gt[a].T, est[b] @ est[a].T
                cos = (np.trace(R_gt.T @ R_est) - 1) / 2
                errors.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    assert np.median(errors) < 1.0 and max(errors) < 2.0, errors


# ---------------------------------------------------------------------------------------------- the data configs
def test_corpus_configs_read_a_built_corpus_split_by_scene(tmp_path, monkeypatch):
    """Build a two-scene corpus (one validation scene) with every part, then read it through the shipped data
    configs: every item names its source, and nothing of the validation scene reaches the training mix."""
    pytest.importorskip("pycolmap")
    import shutil

    from asmamba.training.data import build_dataset

    model, images = _write_two_plane_model(tmp_path / "src")
    data = tmp_path / "data"
    for scene in ("alpha", "beta"):
        shutil.copytree(images, tmp_path / "train" / scene / "images")
        shutil.copytree(model, data / "colmap" / scene / "models" / "0")
    cfg = load_build_config(overrides=[
        "pairs.min_shared=10", "synthetic.scenes=1", "synthetic.val_scenes=1", "synthetic.views=3",
        "synthetic.size=[96,64]", "synthetic.planes=3",
    ])
    cfg.update(validation=["beta"], exclude=[], no_sfm=[], extra_scenes={}, extra_licences={})
    stats = corpus.build(data / "corpus", tmp_path / "train", cfg, progress=False)
    assert [(r.scene, r.split, r.error) for r in stats] == [("alpha", "train", ""), ("beta", "val", "")]
    assert (data / "corpus" / "splits" / "train.txt").read_text() == "alpha\n"
    assert (data / "corpus" / "splits" / "val.txt").read_text() == "beta\n"
    assert sorted(p.name for p in (data / "homography" / "train").iterdir()) == ["alpha"]
    assert sorted(p.name for p in (data / "homography" / "val").iterdir()) == ["beta"]

    monkeypatch.setenv("ASMAMBA_TRAIN_DATA", str(data))
    train, val = build_dataset("corpus"), build_dataset("corpus_val")
    for dataset, scene, other in ((train, "alpha", "beta"), (val, "beta", "alpha")):
        sources: dict[str, int] = {}
        for part in dataset.datasets:
            for k in range(len(part)):
                item = part[k]
                sources[item["source"]] = sources.get(item["source"], 0) + 1
                if item["source"] == "sfm":
                    assert f"{scene}/images" in item["pair_name"] and other not in item["pair_name"]
                if item["source"] == "planar" and "skimage" not in item["pair_name"]:
                    assert item["pair_name"].startswith(f"{scene}/")
                if k >= 3:
                    break  # a few items of each part suffice
        assert set(sources) == {"planar", "synthetic", "sfm"}, sources


def test_source_tag_errors(tmp_path):
    from asmamba.training.data import build_dataset

    conf = {"type": "homography", "sources": ["skimage:camera"], "output_size": [64, 48], "pairs_per_image": 2}
    ds = build_dataset(dict(conf, source="planar", repeat=2))
    assert len(ds) == 4 and ds[3]["source"] == "planar"
    assert "source" not in build_dataset(conf)[0]
    with pytest.raises(ValueError, match="source must be a non-empty name"):
        build_dataset(dict(conf, source=""))


# ---------------------------------------------------------------------------------------------- cameras
def test_per_size_camera_mode_shares_one_camera_per_image_size(tmp_path):
    """Without EXIF, COLMAP's AUTO mode gives every image its own camera; per_size shares one per image size (a
    frame stored rotated by 90 degrees gets its own)."""
    pycolmap = pytest.importorskip("pycolmap")
    import cv2

    from asmamba.training.data.sfm_scene import _sift_database

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for name, (w, h) in {"a.jpg": (96, 64), "b.jpg": (96, 64), "c.jpg": (64, 96), "d.jpg": (96, 64)}.items():
        noise = (rng.random((h, w)) * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "images" / name), cv2.GaussianBlur(noise, (3, 3), 1))
    for mode, expected in (("per_size", 2), ("auto", 4), ("single", 1)):
        db_path = tmp_path / f"{mode}.db"
        _sift_database(tmp_path / "images", db_path, mode, "SIMPLE_RADIAL", 1, None, 10, 0)
        db = pycolmap.Database.open(str(db_path))
        cams = {im.name: im.camera_id for im in db.read_all_images()}
        db.close()
        assert len(set(cams.values())) == expected, (mode, cams)
        if mode == "per_size":
            assert cams["a.jpg"] == cams["b.jpg"] == cams["d.jpg"] != cams["c.jpg"]


def test_projection_matrices_give_the_cameras_back(tmp_path):
    import cv2

    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    (tmp_path / "cams").mkdir()
    K0 = np.array([[2900.0, 0, 1370], [0, 2890.0, 760], [0, 0, 1]])  # for 2736 x 1540 originals
    truth = {}
    for k, scale in enumerate((1.0, -3.5, 0.02)):  # P is known up to scale and sign
        axis = rng.normal(size=3)
        R = cv2.Rodrigues(axis / np.linalg.norm(axis) * rng.uniform(0.2, 2.5))[0]
        t = rng.normal(size=3) * 3
        np.savetxt(tmp_path / "cams" / f"{k:05d}_P.txt", scale * K0 @ np.concatenate([R, t[:, None]], 1))
        cv2.imwrite(str(tmp_path / "images" / f"{k:05d}._c.jpg"), np.zeros((576, 1024), np.uint8))
        truth[f"{k:05d}._c.jpg"] = (R, t)
    cv2.imwrite(str(tmp_path / "images" / "99999.jpg"), np.zeros((576, 1024), np.uint8))  # no camera: left out
    cams = corpus.read_projection_cameras(tmp_path / "cams", tmp_path / "images", (2736, 1540))
    assert set(cams) == set(truth)
    for name, (K, T) in cams.items():
        R, t = truth[name]
        np.testing.assert_allclose(K, np.diag([1024 / 2736, 576 / 1540, 1]) @ K0, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(T[:3, :3], R, atol=1e-6)
        np.testing.assert_allclose(T[:3, 3], t, atol=1e-6)
    with pytest.raises(CorpusError, match="projection matrix"):
        corpus.read_projection_cameras(tmp_path / "images", tmp_path / "images", (2736, 1540))


@pytest.mark.slow
@pytest.mark.skipif(not (TRAIN_ROOT / "av_buddha" / "source_cameras").is_dir(),
                    reason="shared training data not present")
def test_known_cameras_register_a_scene_too_sparse_for_sfm(tmp_path):
    """av_buddha keeps 13 of 67 frames: incremental SfM registers 3; its source cameras register all 13, and the
    SIFT points triangulated from them reproject within a pixel (so the cameras were read right)."""
    cfg = load_build_config()
    cfg["validation"] = []
    source = [s for s in discover_scenes(TRAIN_ROOT, exclude=[]) if s.name == "av_buddha"]
    result = build_sfm_corpus(tmp_path / "corpus", source, cfg, tmp_path / "colmap", progress=False)[0]
    assert not result.error and result.registered == 13 and result.points > 100
    assert result.mean_reprojection_error < 1.0


def test_interleave_takes_the_parts_in_turn():
    from asmamba.training.data import build_dataset

    part = {"type": "homography", "output_size": [64, 48]}
    ds = build_dataset({"type": "interleave", "datasets": [
        dict(part, sources=["skimage:camera"], pairs_per_image=3, source="a"),
        dict(part, sources=["skimage:coffee"], pairs_per_image=1, source="b"),
        dict(part, sources=["skimage:brick"], pairs_per_image=2, source="c"),
    ]})
    assert len(ds) == 6
    assert [ds[k]["source"] for k in range(6)] == ["a", "b", "c", "a", "c", "a"]
    assert ds[3]["pair_name"].startswith("skimage/camera#1a")  # the second item of part a


def test_halcon_cameras_give_the_cameras_back(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "cams").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "image_camera07.jpg"), np.zeros((819, 1024), np.uint8))
    values = {"Focus": 0.0177, "Poly1": 0, "Sx": 5.3e-06, "Sy": 5.35e-06, "Cx": 643.5, "Cy": 499.0,
              "ImageWidth": 1280, "ImageHeight": 1024}
    text = "#\n# header\n\nParGroup: Camera: Parameter;\n\t\"Internal camera parameters\";\n\n"
    text += "".join(f"{k}:{k.lower()}:\t{v};\n\tDOUBLE::;\n\t\"text: with colon\";\n\n" for k, v in values.items())
    (tmp_path / "cams" / "intrinsics_camera07.txt").write_text(text)
    R = cv2.Rodrigues(np.array([0.1, 2.0, -0.3]))[0]
    centre = np.array([0.2, -0.01, 0.03])  # camera-to-world: the camera's rotation and centre
    (tmp_path / "cams" / "extrinsics_camera07.txt").write_text(
        " ".join(f"{x:.9f}" for x in np.concatenate([R, centre[:, None]], 1).ravel()) + " \n")
    cams = corpus.read_halcon_cameras(tmp_path / "cams", tmp_path / "images")
    K, T = cams["image_camera07.jpg"]
    sx, sy = 1024 / 1280, 819 / 1024
    np.testing.assert_allclose(K, [[0.0177 / 5.3e-06 * sx, 0, 644.0 * sx], [0, 0.0177 / 5.35e-06 * sy, 499.5 * sy],
                                   [0, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(T[:3, :3], R.T, atol=1e-8)
    np.testing.assert_allclose(-T[:3, :3].T @ T[:3, 3], centre, atol=1e-8)  # the camera centre
    (tmp_path / "cams" / "intrinsics_camera07.txt").write_text(text.replace("Poly1:poly1:\t0;", "Poly1:poly1:\t0.5;"))
    with pytest.raises(CorpusError, match="lens distortion"):
        corpus.read_halcon_cameras(tmp_path / "cams", tmp_path / "images")
