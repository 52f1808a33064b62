"""benchmarks/flow_span.py: the flow / span statistics of issue 12 design 6, against hand-computed values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flow_span.py"


def _module():
    spec = importlib.util.spec_from_file_location("flow_span", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flow_statistics_by_hand():
    fs = _module()
    gt = torch.tensor([[[2.0, 3.0], [10.0, 1.0], [0.0, 0.0]]])  # (1, 3, 2) cells
    valid = torch.tensor([[True, True, False]])
    # cell 0 off by (3, 4), sigma 2 -> spacing max(1, 2*5*2/5) = 4, span side 20; cell 1 off by (0.5, 0), sigma 0.1
    # -> spacing clamped to 1, side 5
    mu = torch.tensor([[[5.0, 7.0], [10.5, 1.0], [99.0, 99.0]]])
    logvar = torch.log(torch.tensor([[[4.0, 4.0], [0.01, 0.01], [1.0, 1.0]]]))
    flow = torch.cat([mu, logvar], -1).view(1, 1, 3, 4)  # (B, h, w, 4)
    s = fs.flow_statistics(flow, gt, valid, k=5, radius_sigmas=5.0, min_spacing=1.0)
    np.testing.assert_allclose(s["epe"], [5.0, 0.5])
    np.testing.assert_allclose(s["sigma"], [[2.0, 2.0], [0.1, 0.1]], rtol=1e-6)
    np.testing.assert_allclose(s["side"], [[20.0, 20.0], [5.0, 5.0]], rtol=1e-6)
    assert s["inside"].tolist() == [True, True]
    assert s["within_sigma"].tolist() == [[False, False], [False, True]]
    summary = fs.summarise([s])
    assert summary["cells"] == 2 and math.isclose(summary["epe_median"], 2.75)
    assert math.isclose(summary["within_1_sigma"], 25.0) and math.isclose(summary["coverage"], 100.0)
