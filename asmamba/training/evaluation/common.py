"""Shared pieces of the evaluation runners: calling a matcher, timing it, and writing results."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

PathLike = Union[str, os.PathLike]

OUTPUT_KEYS = ("keypoints0", "keypoints1", "confidence", "batch_indexes")


def check_matcher(matcher: Any) -> nn.Module:
    """The matcher itself if it is an ``nn.Module`` (put in eval mode), else a TypeError."""
    if not isinstance(matcher, nn.Module):
        kind = type(matcher).__name__
        raise TypeError(f"the matcher must be a torch.nn.Module (kornia matcher contract), got {kind}")
    return matcher.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_matcher(
    matcher: nn.Module,
    image0: torch.Tensor,
    image1: torch.Tensor,
    mask0: Optional[torch.Tensor] = None,
    mask1: Optional[torch.Tensor] = None,
    device: Union[str, torch.device] = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Match one pair under the kornia contract and time the call.

    Args:
        image0, image1: ``(1, 1, H, W)`` float in [0, 1].
        mask0, mask1: optional ``(1, H, W)`` bool valid-pixel masks (passed only when given).
    Returns:
        keypoints0 ``(N, 2)``, keypoints1 ``(N, 2)``, confidence ``(N,)`` (float64 numpy, batch 0 only) and the
        latency in milliseconds (synchronised on CUDA).
    Raises:
        ValueError: the output lacks a contract key or has mismatched lengths.
    """
    device = torch.device(device)
    data = {"image0": image0.to(device), "image1": image1.to(device)}
    if mask0 is not None and mask1 is not None:
        data["mask0"], data["mask1"] = mask0.to(device), mask1.to(device)
    _sync(device)
    start = time.perf_counter()
    out = matcher(data)
    _sync(device)
    latency_ms = (time.perf_counter() - start) * 1000.0
    missing = [k for k in OUTPUT_KEYS if k not in out]
    if missing:
        raise ValueError(f"matcher output lacks {missing} (kornia matcher contract: {', '.join(OUTPUT_KEYS)})")
    k0, k1 = out["keypoints0"].detach().cpu().double(), out["keypoints1"].detach().cpu().double()
    conf, bids = out["confidence"].detach().cpu().double(), out["batch_indexes"].detach().cpu()
    if not (len(k0) == len(k1) == len(conf) == len(bids)):
        raise ValueError(
            f"matcher output lengths differ: keypoints0 {len(k0)}, keypoints1 {len(k1)}, confidence {len(conf)}, "
            f"batch_indexes {len(bids)}"
        )
    keep = bids == 0
    return k0[keep].reshape(-1, 2).numpy(), k1[keep].reshape(-1, 2).numpy(), conf[keep].numpy(), latency_ms


def build_named_matcher(name: str, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """``asmamba.baselines.build_matcher(name)`` on ``device``, in eval mode (imported lazily)."""
    from asmamba.baselines import build_matcher

    return build_matcher(name).to(device).eval()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite_or_none(value: Any) -> Any:
    """JSON has no inf/nan: they become None (a failed estimate)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json_atomic(path: PathLike, results: dict) -> Path:
    """Write ``results`` as JSON through a temporary file and ``os.replace`` (inf/nan -> null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(_finite_or_none(results), indent=2, default=_json_default) + "\n")
    os.replace(tmp, p)
    return p


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats printed with 2 decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    """Median, NaN for an empty list."""
    return float(np.median(values)) if len(values) else float("nan")


#: the two robust estimators every runner reports, with their table labels
SOLVER_LABELS = {"opencv": "OpenCV", "poselib": "LO-RANSAC"}


def summarise_records(
    name: str, records: list[dict], thresholds: Sequence[float], error_of: Callable[[dict, str], float]
) -> dict[str, Any]:
    """Per-source summary: ``auc_<solver>`` (percent at each threshold, from ``error_of(record, solver)``),
    ``mean_matches``, ``median_latency_ms`` and the ``per_pair`` records themselves."""
    from asmamba.training.evaluation.metrics import error_auc

    summary: dict[str, Any] = {"name": name, "pairs": len(records)}
    for solver in SOLVER_LABELS:
        aucs = error_auc([error_of(r, solver) for r in records], thresholds)
        summary[f"auc_{solver}"] = {f"{t:g}": 100.0 * a for t, a in zip(thresholds, aucs)}
    summary["mean_matches"] = float(np.mean([r["matches"] for r in records])) if records else 0.0
    summary["median_latency_ms"] = median([r["latency_ms"] for r in records])
    summary["per_pair"] = records
    return summary


def summary_markdown(
    results: dict[str, Any], thresholds: Sequence[float], unit: str, extra: Sequence[tuple[str, str]], title: str
) -> str:
    """Markdown table of runner summaries under a protocol line starting with ``title``: AUC columns per solver
    and threshold, then ``extra`` ``(header, summary key)`` columns, then matches and latency."""
    p = results["protocol"]
    note = (
        f"{title}, resize_max={p['resize_max']}, RANSAC {p['ransac_threshold_px']} px, device {p['device']}; "
        "AUC in percent."
    )
    header = ["dataset", "pairs"]
    header += [f"AUC@{t:g}{unit} {label}" for label in SOLVER_LABELS.values() for t in thresholds]
    header += [h for h, _ in extra] + ["matches", "latency ms"]
    rows = [
        [d["name"], d["pairs"]]
        + [d[f"auc_{s}"][f"{t:g}"] for s in SOLVER_LABELS for t in thresholds]
        + [d[key] for _, key in extra]
        + [d["mean_matches"], d["median_latency_ms"]]
        for d in results["datasets"]
    ]
    return note + "\n\n" + markdown_table(header, rows)
