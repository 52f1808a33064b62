"""What the benchmarks share: configs, child processes, timing of any matcher, tables and the README block."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from asmamba.allocator import tune_from_environment
from asmamba.clitools import ArgumentParser
from asmamba.config import as_dictconfig, merge_with_schema
from asmamba.training.evaluation.common import markdown_table, write_json_atomic

__all__ = ["load_bench_config", "parse_bench_args", "machine_line", "run_child", "measure_matcher", "count_flops",
           "markdown_table", "replace_readme_block", "build_any_matcher", "write_json_atomic"]


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


def parse_bench_args(
    name: str, doc: str, argv: Optional[Sequence[str]], child_nargs: Optional[int] = 2,
    extra: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> tuple[argparse.Namespace, dict, Path]:
    """The options every ``asmamba bench NAME`` takes; returns (args, config as a dict, output folder).

    Also applies the command line's allocator settings (children are fresh processes).
    """
    parser = ArgumentParser(prog=f"asmamba bench {name}", description=doc.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help=f"configs/bench/{name}.yaml keys as key=value")
    parser.add_argument("--out", default="benchmarks/results", help="results folder")
    parser.add_argument("--readme", default=None, help=f"also replace this README's bench-{name} block")
    parser.add_argument("--force", action="store_true", help="measure again what already has results")
    parser.add_argument("--child", nargs=child_nargs, default=None, help=argparse.SUPPRESS)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    tune_from_environment()
    return args, plain(load_bench_config(name, args.overrides)), Path(args.out)


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
    """Median latency, matches, peak RSS and parameters of one matcher on one pair (the peak RSS is the process's:
    measure first in a fresh process)."""
    from asmamba.profile import median_latency_ms

    with torch.inference_mode():
        matches = len(matcher(pair)["keypoints0"])
        ms = median_latency_ms(lambda: matcher(pair), warmup=max(0, warmup - 1), repeats=repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in matcher.parameters())
    return {"latency_ms": ms, "latency_matches": matches, "peak_rss_mib": peak_mib, "params": params}


def count_flops(matcher: torch.nn.Module, pair: dict) -> Optional[float]:
    """FLOPs of one call (torch's counter: matmuls and convolutions), or None if the counter fails.

    Must be the matcher's first call in the process: torch's counter missed every convolution of XFeat, DISK and
    LoFTR on later calls here (torch 2.13 and 2.14), counting their matmuls only.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            matcher(pair)
        return float(counter.get_total_flops())
    except Exception:  # an op the counter cannot trace: leave FLOPs unknown
        return None


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
