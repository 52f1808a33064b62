"""Latency, parameter and FLOP measurements of AS-Mamba (and kornia's LoFTR for comparison)."""

from __future__ import annotations

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


def random_pair(height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A smooth random grayscale pair ``(1, 1, H, W)`` and a shifted copy (so a matcher has something to match)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, height // 8 + 2, width // 8 + 2, generator=g)
    image = torch.nn.functional.interpolate(base, size=(height + 16, width + 16), mode="bicubic").clamp(0, 1)
    return {"image0": image[..., :height, :width].contiguous(), "image1": image[..., 16:, 16:].contiguous()}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of each direct child module and the total."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def flops_per_component(model: nn.Module, run: Callable[[], object]) -> dict[str, float]:
    """FLOPs (torch's flop counter: matmuls and convolutions) of each direct child module during ``run()``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        run()
    per_module = counter.get_flop_counts()
    prefix = type(model).__name__
    out = {}
    for name, _ in model.named_children():
        key = f"{prefix}.{name}"
        out[name] = float(sum(per_module.get(key, {}).values()))
    out["total"] = float(counter.get_total_flops())
    return out
