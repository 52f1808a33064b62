"""``asmamba bench ablations``: train every variant of ``configs/bench/ablations.yaml`` with the same recipe, data,
budget and seeds, evaluate each on the held-out scenes with the same code, and write a table, the training curves
(PNG) and JSON.

    asmamba bench ablations [--out benchmarks/results] [--readme README.md] [--eval-only] [key=value ...]
    asmamba bench ablations seeds=[0,1]        # a second seed where differences are small
    asmamba bench ablations seeds=[0,1] --latency-again    # re-time every variant on a quiet machine

Training resumes where a run stopped (``<runs_dir>/<variant>_s<seed>``); finished runs and evaluations are skipped.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm import tqdm

from asmamba.bench.common import (
    machine_line, markdown_table, measure_matcher, parse_bench_args, replace_readme_block, run_child,
    write_json_atomic,
)

README_BLOCK = "bench-ablations"


def read_log(run_dir: Path) -> list[dict[str, float]]:
    """The trainer's ``log.csv`` rows as floats, in step order (empty if there is none)."""
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    rows: list[dict[str, float]] = []
    with path.open() as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            # a run resumed from a checkpoint older than its last log rows did those steps again: keep the redo
            while rows and rows[-1]["step"] >= values["step"]:
                rows.pop()
            rows.append(values)
    return rows


def total_steps(recipe: str, overrides: Sequence[str]) -> int:
    from asmamba.training.trainer import load_train_config

    return int(load_train_config(recipe, list(overrides)).optim.total_steps)


def train_overrides(variant: list[str], seed: int, run_dir: Path) -> list[str]:
    return [f"model.overrides=[{','.join(variant)}]", f"run.seed={seed}", f"run.out_dir={run_dir}"]


def train_variant(recipe: str, variant: list[str], seed: int, run_dir: Path) -> None:
    """Train (or finish training) one variant; nothing to do when its log reached the budget."""
    from asmamba.training.trainer import main as train_main

    overrides = train_overrides(variant, seed, run_dir)
    log = read_log(run_dir)
    if log and log[-1]["step"] >= total_steps(recipe, overrides) - 1:
        return
    resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
    code = train_main([recipe, *overrides, *resume])
    if code:
        raise RuntimeError(f"training {run_dir.name} exited with {code}")


def evaluate_variant(checkpoint: Path, cfg: dict) -> dict[str, Any]:
    """Held-out accuracy, latency, memory, parameters of one trained variant (runs in a child process)."""
    from asmamba import ASMamba
    from asmamba.io import data_root
    from asmamba.profile import stereo_pair
    from asmamba.training.evaluation.homography import evaluate_homography
    from asmamba.training.evaluation.pose import evaluate_pose

    torch.set_num_threads(cfg["threads"])
    matcher = ASMamba(config=None, pretrained=str(checkpoint))
    w, h = cfg["latency_size"]
    result = measure_matcher(matcher, stereo_pair(h, w), cfg["latency_warmup"], cfg["latency_repeats"])
    root = data_root()
    pose = evaluate_pose(matcher, [str(root / "pose" / s / "pairs.txt") for s in cfg["pose_scenes"]],
                         resize_max=cfg["resize_max"], max_pairs=cfg["pose_max_pairs"],
                         ransac_threshold=cfg["pose_ransac_threshold"], progress=False)
    homography = evaluate_homography(matcher, sorted(str(p) for p in (root / "homography").iterdir() if p.is_dir()),
                                     resize_max=cfg["resize_max"], max_pairs=cfg["homography_max_pairs"],
                                     ransac_threshold=cfg["homography_ransac_threshold"], progress=False)

    def weighted(datasets: list[dict], key: str, t: str) -> float:
        return sum(d[key][t] * d["pairs"] for d in datasets) / max(1, sum(d["pairs"] for d in datasets))

    result.update(
        pose_auc={t: weighted(pose["datasets"], "auc_poselib", t) for t in ("5", "10", "20")},
        homography_auc={t: weighted(homography["datasets"], "auc_opencv", t) for t in ("3", "5", "10")},
        pose_pairs=sum(d["pairs"] for d in pose["datasets"]),
        homography_pairs=sum(d["pairs"] for d in homography["datasets"]),
        matches_per_pair=statistics.fmean(d["mean_matches"] for d in pose["datasets"]),
    )
    return result


def time_variant(checkpoint: Path, cfg: dict) -> dict[str, Any]:
    """Latency, matches and peak memory of one trained variant on the latency pair (a child process of its own)."""
    from asmamba import ASMamba
    from asmamba.profile import stereo_pair

    torch.set_num_threads(cfg["threads"])
    w, h = cfg["latency_size"]
    return measure_matcher(ASMamba(config=None, pretrained=str(checkpoint)), stereo_pair(h, w),
                           cfg["latency_warmup"], cfg["latency_repeats"])


def final_loss(log: list[dict[str, float]], key: str, window: int) -> Optional[float]:
    values = [row[key] for row in log[-window:] if key in row]
    return statistics.fmean(values) if values else None


def mean_spread(values: list[float]) -> str:
    """``mean`` for one seed, ``mean ± half-range`` for several."""
    if not values:
        return "-"
    m = statistics.fmean(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def smooth(values: list[float], window: int = 15) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(logs: dict[str, dict[int, list]], questions: dict[str, list[str]], path: Path) -> None:
    """One panel per question: the smoothed coarse loss of the full model and its ablation, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(questions), figsize=(4.2 * len(questions), 3.6), sharey=True, squeeze=False)
    for ax, (question, pair) in zip(axes[0], questions.items()):
        for colour, variant in zip(("tab:blue", "tab:orange"), pair):
            for k, (seed, log) in enumerate(sorted(logs.get(variant, {}).items())):
                steps = [row["step"] for row in log if "coarse" in row]
                ax.plot(steps, smooth([row["coarse"] for row in log if "coarse" in row]), color=colour,
                        linestyle=("-", "--", ":")[k % 3], label=f"{variant} (seed {seed})")
        ax.set(title=question, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("coarse loss (smoothed)")
    fig.tight_layout()
    tmp = Path(tempfile.mkstemp(suffix=".png", dir=path.parent)[1])
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def render(cfg: dict, evals: dict[str, dict[int, dict]], logs: dict[str, dict[int, list]], machine: str) -> str:
    e = cfg["eval"]
    header = ["variant", "switch", "pose AUC@5", "@10", "@20", "homography AUC@3px", "@5px", "@10px",
              "final coarse loss", "latency (ms)", "params (M)"]
    rows = []
    for name, switch in cfg["variants"].items():
        runs = evals.get(name, {})
        ok = [r for r in runs.values() if "error" not in r]
        if not ok:
            rows.append([name, ", ".join(switch) or "(reference)", "not evaluated"] + [""] * (len(header) - 3))
            continue
        losses = [final_loss(log, "coarse", e["loss_window"]) for log in logs.get(name, {}).values()]
        rows.append([
            name, ", ".join(switch) or "(reference)",
            *(mean_spread([r["pose_auc"][t] for r in ok]) for t in ("5", "10", "20")),
            *(mean_spread([r["homography_auc"][t] for r in ok]) for t in ("3", "5", "10")),
            " / ".join(f"{v:.3f}" for v in losses if v is not None) or "-",
            f"{statistics.median(r['latency_ms'] for r in ok):.0f}", f"{ok[0]['params'] / 1e6:.3f}",
        ])
    any_ok = next((r for runs in evals.values() for r in runs.values() if "error" not in r), {})
    note = (f"\n\nSeeds {', '.join(map(str, cfg['seeds']))} (several seeds: mean ± half the range). Recipe "
            f"configs/train/{cfg['recipe']}.yaml. Held-out evaluation at {e['resize_max']} px: pose AUC (LO-RANSAC) on "
            f"{any_ok.get('pose_pairs', '?')} pairs of {', '.join(e['pose_scenes'])}; homography AUC on "
            f"{any_ok.get('homography_pairs', '?')} pairs of data/homography. Latency on the Motorcycle pair at "
            f"{e['latency_size'][0]}x{e['latency_size'][1]}, {time.strftime('%Y-%m-%d')}, CPU: {machine}.\n")
    return markdown_table(header, rows) + note


def main(argv: Optional[Sequence[str]] = None) -> int:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--eval-only", action="store_true", help="evaluate the runs that exist, train nothing")
        p.add_argument("--latency-again", action="store_true",
                       help="time every evaluated variant again (each in a fresh process), e.g. on a quiet machine")
        p.add_argument("--child-latency", nargs=2, default=None, help=argparse.SUPPRESS)

    args, cfg, out = parse_bench_args("ablations", __doc__, argv, extra=extra)
    eval_dir = out / "ablations"
    if args.child:  # evaluate one checkpoint in its own process
        checkpoint, name = Path(args.child[0]), args.child[1]
        write_json_atomic(eval_dir / f"{name}.json", evaluate_variant(checkpoint, cfg["eval"]))
        return 0
    if args.child_latency:  # time one checkpoint in its own process
        checkpoint, name = Path(args.child_latency[0]), args.child_latency[1]
        write_json_atomic(eval_dir / f"{name}.latency.json", time_variant(checkpoint, cfg["eval"]))
        return 0
    unknown = {v for pair in cfg["questions"].values() for v in pair} - set(cfg["variants"])
    if unknown:
        raise ValueError(f"ablation questions name unknown variants: {sorted(unknown)}")
    eval_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(cfg["runs_dir"])
    jobs = [(name, seed) for seed in cfg["seeds"] for name in cfg["variants"]]
    evals: dict[str, dict[int, dict]] = {}
    logs: dict[str, dict[int, list]] = {}
    for name, seed in tqdm(jobs, desc="ablation runs"):
        run_dir = runs_dir / f"{name}_s{seed}"
        if not args.eval_only:
            train_variant(cfg["recipe"], list(cfg["variants"][name]), seed, run_dir)
        checkpoint = run_dir / "checkpoints" / "last.pt"
        log = read_log(run_dir)
        finished = log and log[-1]["step"] >= total_steps(
            cfg["recipe"], train_overrides(list(cfg["variants"][name]), seed, run_dir)) - 1
        if not (checkpoint.is_file() and finished):
            continue
        logs.setdefault(name, {})[seed] = log
        evals.setdefault(name, {})[seed] = run_child(
            "asmamba.bench.ablations", ["--child", str(checkpoint), f"{name}_s{seed}", "--out", str(out),
                                        *args.overrides],
            eval_dir / f"{name}_s{seed}.json", force=args.force)
        timing = run_child(
            "asmamba.bench.ablations", ["--child-latency", str(checkpoint), f"{name}_s{seed}", "--out", str(out),
                                        *args.overrides],
            eval_dir / f"{name}_s{seed}.latency.json", force=args.force or args.latency_again)
        if "latency_ms" in timing:  # the dedicated timing replaces the one taken before the evaluation
            evals[name][seed].update(latency_ms=timing["latency_ms"], latency_matches=timing["latency_matches"])
    table = render(cfg, evals, logs, machine_line(cfg["eval"]["threads"]))
    write_json_atomic(out / "ablations.json", {"config": cfg, "results": evals})
    (out / "ablations.md").write_text(table)
    plot_curves(logs, cfg["questions"], out / "ablations_curves.png")
    print(table)
    if args.readme:
        replace_readme_block(Path(args.readme), README_BLOCK,
                             table + "\n![ablation training curves](benchmarks/results/ablations_curves.png)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
