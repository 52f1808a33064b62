"""JEGO joint scan with multi-head Mamba: both images on one canvas, four directional scans, exact merge, and
JamMa's gated 3x3 aggregation that turns the four one-directional results into omnidirectional features.

Used by the Mamba Initializer (at 1/8) and by every block's global path (at 1/32).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mamba.multihead import MultiHeadMamba, grouped_forward
from ..mamba.scans import JointScan
from .encoder import LayerNorm2d


class GatedAggregator(nn.Module):
    """Gated 3x3 aggregation: every token mixes with its 8 neighbours, which were scanned in other directions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.value = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.gate = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm = LayerNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, h, w) -> (B, C, h, w)
        return self.norm(x + self.proj(self.value(x) * torch.sigmoid(self.gate(x))))


class JointMambaScan(nn.Module):
    """Scan two feature maps jointly in four directions with one multi-head Mamba per direction.

    Args:
        d_model: input channels.
        out_dims: channels of each output stream, e.g. ``(c_match, c_geom)``.
        scan: ``"jego"`` or ``"hilbert"`` order of the joint canvas.
        heads: ``"multi"`` (one SSM head per stream) or ``"single"``.

    The four direction Mambas (separate weights, ``mambas.0`` .. ``mambas.3``) run as one grouped selective scan
    (:func:`asmamba.mamba.multihead.grouped_forward`); ``grouped_scan = False`` runs them one after another, with
    the same results.
    """

    num_directions = 4
    grouped_scan: bool = True

    def __init__(
        self, d_model: int, out_dims: tuple[int, ...], scan: str, heads: str,
        d_state: int = 16, d_conv: int = 4, expand: int = 2,
    ) -> None:
        super().__init__()
        self.scan = JointScan(scan)
        self.norm = nn.LayerNorm(d_model)
        self.mambas = nn.ModuleList(
            MultiHeadMamba(d_model, out_dims, heads=heads, d_state=d_state, d_conv=d_conv, expand=expand)
            for _ in range(self.num_directions)
        )
        self.aggregators = nn.ModuleList(GatedAggregator(c) for c in out_dims)
        self.out_dims = tuple(out_dims)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            f0, f1: ``(B, d_model, h, w)`` with even ``h`` and ``w``.
        Returns:
            one ``(out0, out1)`` pair per stream, each ``(B, out_dims[k], h, w)``.
        """
        size = tuple(f0.shape[-2:])
        seq = self.scan.scan(f0, f1)  # (B, 4, d_model, L), L = h * w / 2
        seq = self.norm(seq.transpose(-1, -2))  # (B, 4, L, d_model)
        directions = [seq[:, k] for k in range(self.num_directions)]
        if self.grouped_scan:
            per_dir = grouped_forward(self.mambas, directions)  # 4 x streams x (B, L, c_s)
        else:
            per_dir = [mamba(x) for mamba, x in zip(self.mambas, directions)]
        outputs = []
        for s, agg in enumerate(self.aggregators):
            stream = torch.stack([per_dir[k][s] for k in range(self.num_directions)], dim=1)  # (B, 4, L, c_s)
            m0, m1 = self.scan.merge(stream.transpose(-1, -2), size=size)  # 2 x (B, c_s, h, w)
            outputs.append((agg(m0), agg(m1)))
        return outputs


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``(B, C, h, w)`` at the bottom/right so that h and w are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x
