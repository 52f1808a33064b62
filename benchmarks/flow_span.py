"""Issue 12, design 6: how well each block's flow predicts the match, and how large the adaptive span it opens is.

For held-out validation pairs (``configs/data/corpus_val.yaml``: held-out training scenes, never an evaluation
scene) with dense ground truth (planar homographies and synthetic depth; sparse SfM depth gives few cells), every
block's flow ``Phi = (mu, log sigma^2)`` is compared with the ground-truth warp of each covisible cell centre,
``(x - 3.5) / 8`` in the other image's coarse cells (the same target as the flow loss):

- end-point error ``|mu - gt|`` (cells; median and mean),
- sigma (cells, per axis, median) and the side of the span it opens, ``max(k * min_spacing, 2 * r * sigma)`` cells for
  a ``k x k`` span of radius ``r`` sigmas (``blocks.local_*``),
- coverage: the share of cells whose ground truth lies inside their span (both axes within its half side),
- calibration: the share of cells with ``|mu - gt| <= sigma`` on an axis (68 % for a calibrated Gaussian).

    python benchmarks/flow_span.py --weights asmamba-xfeat /work/runs/cpu_xfeat_v2/checkpoints/best.pt --pairs 24

Writes ``benchmarks/results/flow_span.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def flow_statistics(flow: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, k: int, radius_sigmas: float,
                    min_spacing: float) -> dict[str, np.ndarray]:
    """Per-cell errors of one flow map against its ground truth.

    Args:
        flow: ``(B, h, w, 4)`` (mu_x, mu_y, log var_x, log var_y); gt: ``(B, h*w, 2)``; valid: ``(B, h*w)`` bool.
        k, radius_sigmas, min_spacing: the local path's span rule (:func:`asmamba.model.local_path.span_offsets`).
    Returns:
        arrays over the valid cells: ``epe`` (cells), ``sigma`` (n, 2), ``side`` (n, 2) span side in cells,
        ``inside`` (n,) bool, ``within_sigma`` (n, 2) bool.
    """
    flow = flow.flatten(1, 2)[valid].double()  # (n, 4)
    gt = gt[valid].double()
    err = (flow[:, :2] - gt).abs()  # (n, 2)
    sigma = torch.exp(0.5 * flow[:, 2:])
    spacing = torch.clamp(2 * radius_sigmas * sigma / k, min=min_spacing)
    side = spacing * k  # the k samples span (k - 1) spacings; a sample stands for one spacing around it
    return {"epe": err.norm(dim=1).numpy(), "sigma": sigma.numpy(), "side": side.numpy(),
            "inside": (err <= side / 2).all(dim=1).numpy(), "within_sigma": (err <= sigma).numpy()}


def summarise(stats: list[dict[str, np.ndarray]]) -> dict[str, float]:
    cat = {key: np.concatenate([s[key] for s in stats]) for key in stats[0]}
    return {"cells": int(len(cat["epe"])), "epe_median": float(np.median(cat["epe"])),
            "epe_mean": float(np.mean(cat["epe"])), "sigma_median": float(np.median(cat["sigma"])),
            "span_side_median": float(np.median(cat["side"])), "coverage": 100.0 * float(np.mean(cat["inside"])),
            "within_1_sigma": 100.0 * float(np.mean(cat["within_sigma"]))}


def measure(weights: str, items: list[dict]) -> dict[str, dict[str, float]]:
    from asmamba.matcher import ASMamba
    from asmamba.training.supervision import compute_supervision_coarse
    from asmamba.training.trainer import add_valid_sizes, collate

    net = ASMamba(pretrained=weights).net.eval()
    b = net.cfg.blocks
    per_block: dict[str, list[dict[str, np.ndarray]]] = {}
    for item in tqdm(items, desc=f"flow/span {Path(weights).stem}", leave=False):
        batch = add_valid_sizes(collate([item]))
        batch.update(compute_supervision_coarse(batch, stride=8, dense=False))
        with torch.inference_mode():
            data = net(dict(batch))
        for i, (flow01, flow10) in enumerate(data["flows"]):
            for flow, gt, valid in ((flow01, batch["spv_flow0"], batch["spv_valid0"]),
                                    (flow10, batch["spv_flow1"], batch["spv_valid1"])):
                if valid.any():
                    per_block.setdefault(f"block {i}", []).append(
                        flow_statistics(flow, gt, valid, b.local_span, b.local_radius_sigmas, b.local_min_spacing))
    return {name: summarise(stats) for name, stats in per_block.items()}


def dense_validation_items(pairs: int) -> list[dict]:
    """The first ``pairs`` validation items with dense ground truth (planar and synthetic), interleaved."""
    from asmamba.training.data import build_dataset

    dataset = build_dataset("corpus_val")
    items = []
    for idx in range(len(dataset)):
        item = dataset[idx]
        if item.get("source") in ("planar", "synthetic"):
            items.append(item)
        if len(items) == pairs:
            break
    return items


def to_markdown(results: dict[str, dict[str, dict[str, float]]], pairs: int) -> str:
    lines = [f"Flow and adaptive span on {pairs} held-out validation pairs (planar + synthetic, corpus_val), both "
             "directions, every covisible cell:", "",
             "| weights | block | cells | EPE median / mean (cells) | sigma median (cells) | span side median (cells) "
             "| GT inside span | GT within 1 sigma (per axis; 68 % if calibrated) |",
             "|---|---|---|---|---|---|---|---|"]
    for weights, blocks in results.items():
        for block, s in blocks.items():
            lines.append(f"| {weights} | {block} | {s['cells']} | {s['epe_median']:.2f} / {s['epe_mean']:.2f} | "
                         f"{s['sigma_median']:.2f} | {s['span_side_median']:.1f} | {s['coverage']:.1f} % | "
                         f"{s['within_1_sigma']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["asmamba-xfeat"],
                        help="shipped weights names or checkpoint paths")
    parser.add_argument("--pairs", type=int, default=24, help="validation pairs (planar and synthetic)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "flow_span")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    torch.set_num_threads(args.threads)
    items = dense_validation_items(args.pairs)
    if not items:
        print("flow_span: no planar or synthetic validation pairs; build the corpus first (README, Training)",
              file=sys.stderr)
        return 2
    results = {str(w): measure(str(w), items) for w in args.weights}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"pairs": len(items), "results": results}, indent=1))
    markdown = to_markdown(results, len(items))
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
