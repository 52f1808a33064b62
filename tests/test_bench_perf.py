"""``asmamba bench perf``: its reference scan against the naive recurrence, its timers, its report, a small run."""

from __future__ import annotations

import json
import time

import pytest
import torch

import asmamba.mamba.selective_scan as ss
from asmamba.bench import perf
from asmamba.bench.common import load_bench_config
from asmamba.config import ConfigError
from asmamba.model.joint_mamba import JointMambaScan
from test_mamba_selective_scan import make_inputs, naive_scan


def test_reference_scan_is_the_recurrence():
    inputs = make_inputs(batch=2, dim=6, n_state=3, length=29)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = perf.reference_scan(**leaves)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref, _ = naive_scan(**ref_leaves, delta_softplus=True)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    weights = torch.randn(out.shape, dtype=out.dtype)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, ref_leaves[name].grad, atol=1e-10, rtol=0, msg=name)


def test_previous_scan_path_switches_and_restores():
    before = ss.prefer_compiled, JointMambaScan.grouped_scan
    with perf.previous_scan_path():
        assert ss.prefer_compiled is False and JointMambaScan.grouped_scan is False
    assert (ss.prefer_compiled, JointMambaScan.grouped_scan) == before
    with pytest.raises(RuntimeError), perf.previous_scan_path():
        raise RuntimeError("inside")
    assert (ss.prefer_compiled, JointMambaScan.grouped_scan) == before


class _Sleep(torch.nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _Sleep(0.02), _Sleep(0.01)

    def forward(self, x):
        return self.b(self.a(self.a(x)))  # a twice


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Sleep(0.03)
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.fine_matching = _Block()

    def forward(self, x):
        x = self.encoder(x)
        for block in self.blocks:
            x = block(x)
        x = self.fine_matching(x)
        time.sleep(0.01)  # outside every part
        return x


def test_component_timer_adds_up_each_part():
    net = _Net()
    timer = perf.ComponentTimer(net)
    assert list(timer.totals) == ["encoder", "blocks.0", "blocks.0.a", "blocks.0.b", "blocks.1", "blocks.1.a",
                                  "blocks.1.b", "fine_matching", "fine_matching.a", "fine_matching.b"]
    for _ in range(2):
        timer.reset()
        net(torch.zeros(1))
    t = timer.totals
    assert 30 <= t["encoder"] < 300 and 40 <= t["blocks.0.a"] < 400 and 10 <= t["blocks.1.b"] < 100
    assert t["blocks.0"] >= t["blocks.0.a"] + t["blocks.0.b"]
    assert 40 <= t["fine_matching.a"] < 400 and t["fine_matching"] >= t["fine_matching.a"] + t["fine_matching.b"]
    timer.remove()
    timer.reset()
    net(torch.zeros(1))
    assert sum(timer.totals.values()) == 0


def _results(ms=450.0, large=2100.0, peak=2500.0, scan_speedup=25.0, train_ratio=1.5):
    r = lambda v: {"median": v, "min": v, "max": v, "n": 3}  # noqa: E731
    return {
        "latency": {"size": "640x480", "large_size": "1280x960", "errors": {"aliked_lightglue": "ImportError: x"},
                    "ms": {"asmamba": r(ms), "asmamba_large": r(large), "loftr": r(4000.0),
                           "asmamba_previous": r(900.0)},
                    "matches": {"asmamba": 3600}, "large_over_small": r(large / ms),
                    "previous_over_current": r(900.0 / ms), "asmamba_over_loftr": r(ms / 4000.0), "load_average": 1.5},
        "memory": {"size": "1024x768", "peak_rss_mib": peak, "load_average": 0.5},
        "scan": {"backend": "numba", "shape": {"batch": 1, "dim": 512, "state": 16, "length": 9600},
                 "ms": {f"{k}_{m}": r(v) for k, v in (("reference", 2000.0), ("pytorch", 600.0), ("current", 80.0))
                        for m in ("forward", "forward_backward")},
                 **{f"speedup_{k}_{m}": r(v) for k, v in (("pytorch", 3.0), ("current", scan_speedup))
                    for m in ("forward", "forward_backward")}},
        "train": {"config": "cpu_xfeat", "batch_size": 2, "ms": {"current": r(1000.0), "previous": r(1500.0)},
                  "steps_per_hour": {"current": 3600.0, "previous": 2400.0}, "previous_over_current": r(train_ratio)},
        "components": {"size": "640x480", "matches": 3600, "ms": {"encoder": 100.0, "initializer": 50.0,
                                                                  "other": 10.0, "total": 160.0}},
    }


def test_render_reports_each_target_against_its_goal():
    cfg = perf.default_config()
    text = perf.render(_results(), cfg, "test machine")
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    latency = lines["640x480 latency, default weights"]
    assert "450 ms" in latency and "| yes (ALIKED+LightGlue not in this run) |" in latency
    assert "4.67x" in lines["1280x960 / 640x480 time"] and lines["1280x960 / 640x480 time"].endswith("| yes |")
    assert lines["peak RSS, 1024x768 pair"].endswith("| yes |")
    scan_row = [v for k, v in lines.items() if k.startswith("selective scan forward,")][0]
    assert "25.00x" in scan_row and scan_row.endswith("| yes |")
    assert [v for k, v in lines.items() if k.startswith("training step")][0].endswith("| no |")
    assert "aliked_lightglue not run (ImportError: x)" in text and "= 2.00x" in text  # PyTorch scan / current
    assert "| encoder | 100 | 62 % |" in text and "memory 0.5" in text and "latency 1.5" in text
    slow = perf.render(_results(ms=600.0, large=3300.0, peak=5000.0, scan_speedup=10.0), cfg, "m")
    rows = [line for line in slow.splitlines() if line.startswith("| ") and line.rstrip().endswith("| no |")]
    assert len(rows) == 6  # latency, scaling, memory, both scans, training
    beaten = _results(ms=450.0)
    beaten["latency"]["ms"]["aliked_lightglue"] = {"median": 400.0, "min": 400.0, "max": 400.0, "n": 3}
    beaten["latency"]["asmamba_over_aliked_lightglue"] = {"median": 1.125, "min": 1.1, "max": 1.2, "n": 3}
    row = [line for line in perf.render(beaten, cfg, "m").splitlines() if "latency, default weights" in line][0]
    assert row.endswith("| no |")  # under 500 ms but slower than ALIKED+LightGlue in the same run


def test_render_names_parts_that_did_not_run():
    cfg = perf.default_config()
    text = perf.render({"latency": {"error": "exit 1: Traceback\nValueError: broken"}}, cfg, "m")
    assert "not run: ValueError: broken" in text and "| peak RSS | not run |" in text


def test_perf_config_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="no_such_key"):
        load_bench_config("perf", ["no_such_key=1"])
    with pytest.raises(SystemExit, match="unknown part"):
        perf.main(["parts=[components,nope]", "--out", "/nonexistent"])


def test_perf_command_runs_small_parts(tmp_path):
    """The command end to end on a random tiny model and a small scan: child processes, JSON, table."""
    overrides = ["parts=[components,scan]", "weights=none", "config=tiny", "size=[96,64]", "repeats=1",
                 "scan.dim=8", "scan.length=40", "scan.reference_length=20", "scan.repeats=1"]
    assert perf.main([*overrides, "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "perf.json").read_text())["results"]
    assert saved["components"]["ms"]["total"] > 0 and "initializer" in saved["components"]["ms"]
    assert saved["scan"]["reference_length"] == 20 and saved["scan"]["max_abs_error_vs_reference"]["current"] < 1e-4
    assert (tmp_path / "perf" / "scan.json").is_file() and "Selective scan" in (tmp_path / "perf.md").read_text()
