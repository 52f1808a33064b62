"""Benchmark commands: their arithmetic against hand values, the README block, and small end-to-end runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from asmamba.bench import ablations, compare, scaling
from asmamba.bench.common import load_bench_config, replace_readme_block
from asmamba.config import ConfigError


def test_pair_weighted_auc_is_the_pair_weighted_mean():
    datasets = [{"pairs": 10, "auc": {"5": 50.0}}, {"pairs": 30, "auc": {"5": 10.0}}]
    assert compare.pair_weighted(datasets, "auc", "5") == pytest.approx((10 * 50 + 30 * 10) / 40)
    assert compare.pair_weighted([], "auc", "5") is None


def test_summarise_splits_outdoor_and_indoor_scenes():
    cfg = {"indoor_scenes": ["scannet_samples"]}
    pose = {"datasets": [
        {"name": "a", "pairs": 1, "auc_poselib": {"5": 10.0, "10": 20.0, "20": 30.0}, "mean_matches": 100.0},
        {"name": "b", "pairs": 3, "auc_poselib": {"5": 50.0, "10": 60.0, "20": 70.0}, "mean_matches": 200.0},
        {"name": "scannet_samples", "pairs": 5, "auc_poselib": {"5": 1.0, "10": 2.0, "20": 3.0}, "mean_matches": 9.0},
    ]}
    homography = {"datasets": [{"pairs": 2, "auc_opencv": {"3": 40.0, "5": 50.0, "10": 60.0}}]}
    row = compare.summarise({"matcher": "m", "pose": pose, "homography": homography, "latency_ms": 12.0,
                             "peak_rss_mib": 5.0, "params": 7, "flops": None}, cfg)
    assert row["pose_auc10"] == pytest.approx((20 + 3 * 60) / 4)
    assert row["indoor_auc10"] == pytest.approx(2.0)
    assert row["homography_auc5"] == pytest.approx(50.0)
    assert row["matches_per_pair"] == pytest.approx((100 + 3 * 200) / 4)
    assert row["pose_pairs"] == 4 and row["latency_ms"] == 12.0


def test_readme_block_is_replaced_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- x:start -->\nold\n<!-- x:end -->\noutro\n")
    replace_readme_block(readme, "x", "| new |\n")
    assert readme.read_text() == "intro\n<!-- x:start -->\n| new |\n<!-- x:end -->\noutro\n"
    with pytest.raises(ValueError, match="y:start"):
        replace_readme_block(readme, "y", "text")


def test_scaling_exponent_recovers_a_power_law():
    pixels = [1e5, 2e5, 4e5, 8e5]
    assert scaling.exponent(pixels, [3 * p**1.5 for p in pixels]) == pytest.approx(1.5)
    assert scaling.size_of(640) == (640, 480) and scaling.size_of(1280) == (1280, 960)


def test_bench_configs_refuse_unknown_keys():
    with pytest.raises(ConfigError, match="no_such_key"):
        load_bench_config("compare", ["no_such_key=1"])


def test_ablation_table_reports_mean_and_half_range_over_seeds():
    assert ablations.mean_spread([60.0, 64.0]) == "62.0 ± 2.0"
    assert ablations.mean_spread([61.25]) == "61.2"
    cfg = load_bench_config("ablations", []).copy()
    from asmamba.bench.common import plain

    cfg = plain(cfg)
    run = {"pose_auc": {"5": 10.0, "10": 20.0, "20": 30.0}, "homography_auc": {"3": 1.0, "5": 2.0, "10": 4.0},
           "latency_ms": 100.0, "params": 2_000_000, "pose_pairs": 40, "homography_pairs": 9}
    other = dict(run, pose_auc={"5": 14.0, "10": 24.0, "20": 34.0})
    logs = {"full": {0: [{"step": 0.0, "coarse": 1.0}, {"step": 1.0, "coarse": 0.5}], 1: [{"step": 0.0, "coarse": 0.7}]}}
    table = ablations.render(cfg, {"full": {0: run, 1: other}}, logs, "test machine")
    full_row = next(line for line in table.splitlines() if line.startswith("| full "))
    assert "12.0 ± 2.0" in full_row and "22.0 ± 2.0" in full_row  # pose AUC@5 and @10 over the two seeds
    assert "0.750 / 0.700" in full_row  # final losses of both seeds (mean of the last logged steps)
    assert "not evaluated" in table  # variants without runs say so


def test_compare_end_to_end_small(tmp_path):
    """SIFT with accuracy, kornia's LoFTR latency only, and a row naming a matcher that cannot be built."""
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench-compare:start -->\n<!-- bench-compare:end -->\n")
    code = compare.main([
        "matchers=[sift,loftr,no_such_module:make]", "latency_size=[160,120]", "latency_repeats=1",
        "pose_scenes=[strecha_entry-P10]", "indoor_scenes=[]", "pose_max_pairs=2", "homography_max_pairs=1",
        "resize_max=320", "--out", str(out), "--readme", str(readme),
    ])
    assert code == 0
    rows = {r["matcher"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    sift, loftr = rows["sift"], rows["loftr"]
    assert 0.0 <= sift["pose_auc10"] <= 100.0 and sift["pose_pairs"] == 2
    assert sift["params"] == 0 and sift["matches_per_pair"] > 20
    assert "pose_auc10" not in loftr and loftr["latency_ms"] > 0 and loftr["params"] > 10_000_000
    assert loftr["flops"] > 1e9
    assert "error" in rows["no_such_module:make"]
    text = readme.read_text()
    assert "| sift |" in text and "loftr (random weights)" in text and "not run:" in text
    # a rerun measures nothing again: the per-matcher results are reused
    mtime = (out / "compare" / "sift.json").stat().st_mtime
    compare.main(["matchers=[sift]", "pose_scenes=[strecha_entry-P10]", "indoor_scenes=[]", "--out", str(out)])
    assert (out / "compare" / "sift.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_ablations_end_to_end_tiny(tmp_path):
    """Two variants of a tiny recipe: trained with the same budget, evaluated, tabulated and plotted."""
    recipe = tmp_path / "tiny_recipe.yaml"
    recipe.write_text(
        "_base_: default\nmodel: {config: tiny}\n"
        "data: {train: {type: homography, sources: [skimage], seed: 0, output_size: [96, 64], pairs_per_image: 2}}\n"
        "optim: {warmup_steps: 1, total_steps: 3}\nrun: {ckpt_every: 2, log_every: 1, progress: false}\n"
    )
    out = tmp_path / "results"
    args = [f"recipe={recipe}", f"runs_dir={tmp_path / 'runs'}", "variants={full: [], mlp: [blocks.flow_predictor=mlp]}",
            "questions={'KAN vs MLP': [full, mlp]}", "eval.resize_max=160", "eval.pose_scenes=[strecha_entry-P10]",
            "eval.pose_max_pairs=1", "eval.homography_max_pairs=1", "eval.latency_size=[128,96]",
            "eval.latency_repeats=1", "--out", str(out)]
    assert ablations.main(args) == 0
    results = json.loads((out / "ablations.json").read_text())["results"]
    assert set(results) == {"full", "mlp"}
    assert results["mlp"]["0"]["params"] != results["full"]["0"]["params"]  # the switch changed the model
    for name in ("full", "mlp"):
        log = ablations.read_log(tmp_path / "runs" / f"{name}_s0")
        assert log[-1]["step"] == 2 and all(math.isfinite(r["total"]) for r in log)
    assert (out / "ablations_curves.png").stat().st_size > 10_000


def test_strongest_baseline_is_read_from_compare_results(tmp_path):
    from asmamba.bench import figures

    path = tmp_path / "compare.json"
    assert figures.strongest_baseline(path) == "sift"  # no compare run yet
    rows = [{"matcher": "asmamba", "pose_auc10": 99.0}, {"matcher": "sift", "pose_auc10": 90.0},
            {"matcher": "xfeat", "pose_auc10": 92.5}, {"matcher": "disk_lightglue", "error": "not installed"}]
    path.write_text(json.dumps({"rows": rows}))
    assert figures.strongest_baseline(path) == "xfeat"


def test_reprojection_errors_against_a_hand_homography():
    from asmamba.bench.figures import reprojection_errors

    H = np.array([[2.0, 0.0, 5.0], [0.0, 2.0, -1.0], [0.0, 0.0, 1.0]])
    k0 = np.array([[1.0, 1.0], [10.0, 0.0]])
    k1 = np.array([[7.0, 1.0], [25.0, 3.0]])  # exact, then 4 px off in y
    assert np.allclose(reprojection_errors(H, k0, k1), [0.0, 4.0])


def test_figures_end_to_end_small(tmp_path):
    from asmamba.bench import figures

    assert figures.main(["resize_max=256", "baseline=sift", "flow_queries=[3,2]", "--out", str(tmp_path),
                         "--compare", str(tmp_path / "none.json")]) == 0
    stats = json.loads((tmp_path / "figures.json").read_text())
    assert set(stats) == {"asmamba", "sift", "flow"} and stats["flow"]["queries"] == 6
    for name in ("matches_vs_baseline.png", "flow_uncertainty.png"):
        assert (tmp_path / name).stat().st_size > 20_000


def test_read_log_keeps_the_redone_steps_of_a_resumed_run(tmp_path):
    (tmp_path / "log.csv").write_text("step,coarse\n0,3\n10,2\n20,1.5\n30,1.4\n20,1.6\n30,1.3\n40,1.0\n")
    log = ablations.read_log(tmp_path)
    assert [r["step"] for r in log] == [0, 10, 20, 30, 40]
    assert [r["coarse"] for r in log] == [3, 2, 1.6, 1.3, 1.0]
