"""What the benchmarks share: configs, child processes, timing of any matcher, tables and the README block."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from asmamba.config import as_dictconfig, merge_with_schema
from asmamba.training.evaluation.common import markdown_table, write_json_atomic

__all__ = ["load_bench_config", "machine_line", "run_child", "measure_matcher", "markdown_table",
           "replace_readme_block", "build_any_matcher", "write_json_atomic"]


# mappings a user replaces whole (their keys are names, not schema): ``variants={...}``, ``questions={...}``
FREE_MAPPINGS = ("variants", "questions")


def load_bench_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A ``configs/bench`` preset (its keys are the schema) with ``key=value`` overrides.

    ``variants=...`` and ``questions=...`` replace those mappings whole; every other key must exist in the preset.
    """
    schema = as_dictconfig(name, "bench")
    whole = [o for o in overrides if o.split("=", 1)[0] in FREE_MAPPINGS and o.split("=", 1)[0] in schema]
    cfg = merge_with_schema(schema, overrides=[o for o in overrides if o not in whole])
    for item in whole:
        key = item.split("=", 1)[0]
        with open_dict(cfg):
            cfg[key] = OmegaConf.from_dotlist([item])[key]
    return cfg


def machine_line(threads: int) -> str:
    """One line naming the machine: CPU model, cores, torch threads, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def build_any_matcher(name: str) -> torch.nn.Module:
    """``loftr``: kornia's LoFTR architecture with random weights (timing only); anything else: build_matcher."""
    if name == "loftr":
        from kornia.feature import LoFTR

        return LoFTR(pretrained=None).eval()
    from asmamba.baselines import build_matcher

    return build_matcher(name)


def measure_matcher(matcher: torch.nn.Module, pair: dict, warmup: int, repeats: int) -> dict[str, Any]:
    """Median latency, matches, peak RSS, parameters and FLOPs of one matcher on one pair (call first in a process:
    the peak RSS is the process's)."""
    from asmamba.profile import median_latency_ms

    with torch.inference_mode():
        matches = len(matcher(pair)["keypoints0"])
        ms = median_latency_ms(lambda: matcher(pair), warmup=max(0, warmup - 1), repeats=repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in matcher.parameters())
    flops: Optional[float] = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            matcher(pair)
        flops = float(counter.get_total_flops())
    except Exception:  # an op the counter cannot trace: leave FLOPs unknown
        flops = None
    return {"latency_ms": ms, "latency_matches": matches, "peak_rss_mib": peak_mib, "params": params,
            "flops": flops}


def run_child(module: str, args: Sequence[str], out_json: Path, force: bool = False,
              python: Optional[str] = None) -> dict:
    """Run ``python -m module args`` unless ``out_json`` exists (and not ``force``); return its JSON."""
    if out_json.is_file() and not force:
        return json.loads(out_json.read_text())
    start = time.time()
    proc = subprocess.run([python or sys.executable, "-m", module, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}", "seconds": time.time() - start}
    return json.loads(out_json.read_text())


def replace_readme_block(readme: Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``readme`` (atomically)."""
    source = readme.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(source):
        raise ValueError(f"{readme} has no '<!-- {name}:start -->' ... '<!-- {name}:end -->' block to replace")
    updated = pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), source)
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(updated)
    os.replace(tmp, readme)


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
