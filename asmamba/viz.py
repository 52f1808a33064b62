"""Pictures: matches side by side (PNG)."""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    path: Union[str, os.PathLike],
    color_values: Optional[np.ndarray] = None,
    title: str = "",
    max_lines: int = 1500,
    legend: Optional[tuple[str, str, str]] = None,
) -> None:
    """Write a PNG of two images side by side with a line per match.

    Args:
        image0, image1: ``(H, W)`` or ``(H, W, 3)`` uint8 images.
        kpts0, kpts1: ``(N, 2)`` pixel coordinates (pixel centres at integers).
        color_values: ``(N,)`` values in [0, 1] for the colour map (e.g. confidence or correctness).
        max_lines: at most this many lines are drawn (an even subsample), so dense matchers stay readable.
        legend: ``(what the colours mean, label of value 0, label of value 1)``, drawn as a colour bar in the
            bottom-left corner, e.g. ``("match confidence", "0", "1")``.

    Raises:
        FileNotFoundError / NotADirectoryError / PermissionError: ``path``'s folder is missing or not writable
            (checked before drawing).
    """
    from .io import check_output_file

    check_output_file(path, "match picture")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    gap = 10
    canvas_h = max(h0, h1)

    def rgb(img: np.ndarray) -> np.ndarray:
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img

    canvas = np.full((canvas_h, w0 + gap + w1, 3), 255, dtype=np.uint8)
    canvas[:h0, :w0] = rgb(image0)
    canvas[:h1, w0 + gap :] = rgb(image1)
    n = len(kpts0)
    idx = np.linspace(0, n - 1, min(n, max_lines)).astype(int) if n else np.zeros(0, dtype=int)
    values = np.ones(n) if color_values is None else np.asarray(color_values, dtype=float)
    fig = plt.figure(figsize=(canvas.shape[1] / 100, canvas.shape[0] / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(canvas)
    cmap = plt.get_cmap("RdYlGn")
    for i in idx:
        x0, y0 = kpts0[i]
        x1, y1 = kpts1[i]
        ax.plot([x0, x1 + w0 + gap], [y0, y1], color=cmap(float(values[i])), linewidth=0.6, alpha=0.8)
    ax.scatter(kpts0[idx, 0], kpts0[idx, 1], s=1.5, c="cyan") if n else None
    ax.scatter(kpts1[idx, 0] + w0 + gap, kpts1[idx, 1], s=1.5, c="cyan") if n else None
    ax.text(8, 20, title or f"{n} matches", color="white", fontsize=11,
            bbox=dict(facecolor="black", alpha=0.6, linewidth=0))
    ax.set_xlim(0, canvas.shape[1])
    ax.set_ylim(canvas.shape[0], 0)
    ax.axis("off")
    if legend is not None:
        _draw_legend(fig, cmap, canvas.shape[1], canvas.shape[0], *legend)
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _draw_legend(fig, cmap, width: int, height: int, label: str, low: str, high: str) -> None:
    """A horizontal colour bar (value 0 on the left, 1 on the right) with its meaning, on a dark panel in the
    bottom-left corner (readable on any image)."""
    from matplotlib.patches import Rectangle

    bar_w = max(40.0, min(200.0, 0.4 * width))  # pixels (the figure has one point per pixel at dpi 100)
    x0, y0, panel_h = 6.0, 6.0, 42.0
    fig.patches.append(Rectangle((x0 / width, y0 / height), (bar_w + 12) / width, panel_h / height,
                                 transform=fig.transFigure, facecolor="black", alpha=0.6, linewidth=0, zorder=1))
    bar = fig.add_axes([(x0 + 6) / width, (y0 + 13) / height, bar_w / width, 10 / height])
    bar.imshow(np.linspace(0, 1, 256)[None], cmap=cmap, aspect="auto", extent=(0, 1, 0, 1))
    bar.axis("off")
    bar.set_zorder(2)  # above the panel (zorder 1), which is above the picture (0)
    fig.text((x0 + 6) / width, (y0 + panel_h - 3) / height, label, color="white", fontsize=8, va="top")
    fig.text((x0 + 6) / width, (y0 + 2) / height, low, color="white", fontsize=7, va="bottom")
    fig.text((x0 + 6 + bar_w) / width, (y0 + 2) / height, high, color="white", fontsize=7, va="bottom", ha="right")
