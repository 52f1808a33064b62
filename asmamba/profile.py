"""Latency, parameter and FLOP measurements of AS-Mamba (and kornia's LoFTR for comparison)."""

from __future__ import annotations

import re
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def median_latency_ms(fn: Callable[[], object], warmup: int = 1, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def stereo_pair(height: int, width: int) -> dict[str, torch.Tensor]:
    """The Middlebury Motorcycle stereo pair shipped with scikit-image, grayscale, resized to ``(1, 1, H, W)``: a real
    pair, so a trained matcher does its full work (its number of matches drives the fine stage's cost)."""
    import cv2
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()

    def prep(rgb):
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(gray).float().div(255)[None, None]

    return {"image0": prep(left), "image1": prep(right)}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of each direct child module and the total."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def flops_per_component(model: nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """FLOPs (torch's flop counter: matmuls and convolutions) of each direct child module during ``run()``.

    The selective scan's element-wise recurrence is not a matmul and is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        run()
    per_module = counter.get_flop_counts()
    out = {}
    for name, _ in model.named_children():
        # the counter names modules by their path from the outermost module called (e.g. "ASMamba.net.encoder")
        keys = [k for k in per_module if k == name or k.endswith(f".{name}")]
        if keys:
            out[name] = float(sum(per_module[min(keys, key=len)].values()))
        else:  # a ModuleList is never called itself: add up its items
            items = [k for k in per_module if re.search(rf"(^|\.){name}\.\d+$", k)]
            out[name] = float(sum(sum(per_module[k].values()) for k in items))
    out["total"] = float(counter.get_total_flops())
    return out
