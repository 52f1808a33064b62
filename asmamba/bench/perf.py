"""``asmamba bench perf``: where one AS-Mamba forward spends its time, and the speed targets of issue 14.

    asmamba bench perf [--out benchmarks/results] [--readme README.md] [--force] [key=value ...]

Parts (``configs/bench/perf.yaml``; each runs in a child process of its own and writes ``perf/<part>.json``):

- ``components``: wall time of each part of one forward at ``size`` (encoder, position, initializer, every block's
  flow / global path / local path / FFN, coarse and fine matching, the rest), median over the repeats.
- ``latency``: AS-Mamba at ``size`` and ``large_size``, the ``baselines`` at ``size`` and (``compare_pytorch_scan``)
  AS-Mamba with the PyTorch scan and one scan call per direction, all in one process, one after another in every
  repeat, so that the ratios compare runs seconds apart under the same machine load.
- ``memory``: peak RSS of a fresh process that builds the model and matches one ``memory_size`` pair.
- ``scan``: the selective scan at batch 1, dim 512, N 16, L 9600 (float32), forward and forward + backward, with the
  backend :func:`asmamba.ops.selective_scan` picks here, the blocked PyTorch scan and :func:`reference_scan`
  (mamba-ssm's ``selective_scan_ref`` algorithm, re-implemented here), alternating in every repeat.
- ``train``: training steps of a recipe (its data, batch size and resolution) with the current code and with the
  PyTorch scan, alternating.

Prints a table and writes ``perf.json`` (atomically) and ``perf.md``; ``--readme`` replaces the README's
``bench-perf`` block. A rerun reuses the parts already measured (``--force`` measures again). The machine's load
average is recorded with every part: on a shared machine read the ratios, which come from back-to-back runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from asmamba.bench.common import (
    build_any_matcher, machine_line, markdown_table, parse_bench_args, replace_readme_block, run_child,
    write_json_atomic,
)

README_BLOCK = "bench-perf"
PARTS = ("components", "latency", "memory", "scan", "train")


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def load_average() -> Optional[float]:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(milliseconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Per-repeat ratios (each numerator over the denominator measured next to it), summarised."""
    return summary([a / b for a, b in zip(numerators, denominators)])


@contextlib.contextmanager
def previous_scan_path() -> Iterator[None]:
    """The release before the compiled kernel: the blocked PyTorch scan on CPU and one scan call per JEGO direction."""
    import asmamba.mamba.selective_scan as ss
    from asmamba.model.joint_mamba import JointMambaScan

    saved = ss.prefer_compiled, JointMambaScan.grouped_scan
    ss.prefer_compiled, JointMambaScan.grouped_scan = False, False
    try:
        yield
    finally:
        ss.prefer_compiled, JointMambaScan.grouped_scan = saved


def build_asmamba(cfg: dict) -> torch.nn.Module:
    from asmamba import ASMamba

    weights = None if str(cfg["weights"]).lower() == "none" else cfg["weights"]
    return ASMamba(config=cfg["config"], pretrained=weights)


def pair_of(size: Sequence[int]) -> dict[str, Tensor]:
    from asmamba.profile import stereo_pair

    w, h = size
    return stereo_pair(h, w)


def size_name(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


# --------------------------------------------------------------------------------------------------------------------
# components: forward hooks on the network's parts
# --------------------------------------------------------------------------------------------------------------------


class ComponentTimer:
    """Wall time spent inside each top-level part of an ``ASMambaNet`` and inside each block's parts.

    Module forward hooks take the time before and after every call (parts called twice, like a block's flow
    predictor and FFN, add up). Names: ``encoder``, ``initializer``, ``blocks.0``, ``blocks.0.global_path``, ...,
    ``fine_matching``, ``fine_matching.decoder``, ...
    """

    #: top-level parts whose own children are timed too
    PARTS_OF = ("fine_matching",)

    def __init__(self, net: torch.nn.Module) -> None:
        self.totals: dict[str, float] = {}
        self._starts: dict[str, list[float]] = {}
        self._handles = []
        for name, child in net.named_children():
            if isinstance(child, torch.nn.ModuleList):
                for i, item in enumerate(child):
                    self._watch(f"{name}.{i}", item)
                    for part, module in item.named_children():
                        self._watch(f"{name}.{i}.{part}", module)
            else:
                self._watch(name, child)
                if name in self.PARTS_OF:
                    for part, module in child.named_children():
                        self._watch(f"{name}.{part}", module)

    def _watch(self, key: str, module: torch.nn.Module) -> None:
        self.totals[key] = 0.0
        self._starts[key] = []

        def before(*_):
            self._starts[key].append(time.perf_counter())

        def after(*_):
            self.totals[key] += (time.perf_counter() - self._starts[key].pop()) * 1000

        self._handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def part_components(cfg: dict) -> dict:
    model = build_asmamba(cfg)
    pair = pair_of(cfg["size"])
    timer = ComponentTimer(model.net)
    runs: list[dict[str, float]] = []
    with torch.inference_mode():
        for i in range(cfg["warmup"] + cfg["repeats"]):
            timer.reset()
            total, out = timed(lambda: model(pair))
            if i >= cfg["warmup"]:
                # the top-level parts: "encoder", ..., and the items of a ModuleList ("blocks.0"), not their parts
                top = sum(v for k, v in timer.totals.items() if "." not in k or k.count(".") == 1 and
                          k.split(".")[0] not in timer.totals)
                runs.append({**timer.totals, "total": total, "other": total - top})
    timer.remove()
    keys = list(runs[0])
    return {"size": size_name(cfg["size"]), "matches": len(out["keypoints0"]),
            "ms": {k: statistics.median(r[k] for r in runs) for k in keys}}


# --------------------------------------------------------------------------------------------------------------------
# latency, memory
# --------------------------------------------------------------------------------------------------------------------


def part_latency(cfg: dict) -> dict:
    model = build_asmamba(cfg)
    small, large = pair_of(cfg["size"]), pair_of(cfg["large_size"])
    baselines, errors = {}, {}
    for name in cfg["baselines"]:
        try:
            baselines[name] = build_any_matcher(name)
        except Exception as error:  # not installed here (e.g. the lightglue environment): say why
            errors[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    calls: dict[str, Callable[[], Any]] = {
        "asmamba": lambda: model(small), "asmamba_large": lambda: model(large),
        **{name: (lambda m=m: m(small)) for name, m in baselines.items()},
    }
    if cfg["compare_pytorch_scan"]:
        def previous() -> Any:
            with previous_scan_path():
                return model(small)

        calls["asmamba_previous"] = previous
    times: dict[str, list[float]] = {name: [] for name in calls}
    matches: dict[str, int] = {}
    with torch.inference_mode():
        for name, call in calls.items():  # warm-up (the compiled kernels load or compile on the first call)
            for _ in range(cfg["warmup"]):
                matches[name] = len(call()["keypoints0"])
        for _ in tqdm(range(cfg["repeats"]), desc="latency repeats", leave=False):
            for name, call in calls.items():
                ms, out = timed(call)
                times[name].append(ms)
                matches[name] = len(out["keypoints0"])
    result = {"size": size_name(cfg["size"]), "large_size": size_name(cfg["large_size"]),
              "ms": {name: summary(t) for name, t in times.items()}, "matches": matches, "errors": errors,
              "large_over_small": ratios(times["asmamba_large"], times["asmamba"])}
    if "asmamba_previous" in times:
        result["previous_over_current"] = ratios(times["asmamba_previous"], times["asmamba"])
    for name in baselines:
        result[f"asmamba_over_{name}"] = ratios(times["asmamba"], times[name])
    return result


def part_memory(cfg: dict) -> dict:
    model = build_asmamba(cfg)
    pair = pair_of(cfg["memory_size"])
    with torch.inference_mode():
        matches = len(model(pair)["keypoints0"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"size": size_name(cfg["memory_size"]), "peak_rss_mib": peak, "matches": matches}


# --------------------------------------------------------------------------------------------------------------------
# the selective scan against mamba-ssm's reference algorithm
# --------------------------------------------------------------------------------------------------------------------


def reference_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
                   delta_bias: Tensor, delta_softplus: bool = True) -> Tensor:
    """mamba-ssm's ``selective_scan_ref`` algorithm for (batch, N, L) B and C: all decays ``exp(delta A)`` and drives
    ``delta B u`` formed up front as (batch, dim, L, N) tensors, then one Python step per time step (state update,
    read-out), then skip and gate.

    One change: the per-step slices are taken with ``unbind`` rather than by indexing, so that autograd's backward
    stays linear in L (indexing ``deltaA[:, :, i]`` makes every step's backward write a full-size gradient: 240 s
    for forward + backward at L = 1200 on the README's machine, growing with L squared).
    """
    delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decays = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    drives = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    state = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]))
    ys = []
    for decay, drive, C_t in zip(decays.unbind(2), drives.unbind(2), C.unbind(2)):
        state = decay * state + drive
        ys.append(torch.einsum("bdn,bn->bd", state, C_t))
    y = torch.stack(ys, dim=2)
    return (y + u * D[:, None]) * F.silu(z)


def scan_inputs(batch: int, dim: int, n_state: int, length: int, seed: int = 0) -> dict[str, Tensor]:
    """Float32 scan inputs of a trained layer's scale: step sizes softplus(delta + bias) around 0.01 .. 0.1."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g),
        "A": -torch.exp(torch.randn(dim, n_state, generator=g)),
        "B": torch.randn(batch, n_state, length, generator=g),
        "C": torch.randn(batch, n_state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.log(torch.expm1(torch.empty(dim).uniform_(0.01, 0.1, generator=g))),
    }


def _forward_ms(scan: Callable[..., Tensor], inputs: dict[str, Tensor]) -> float:
    with torch.no_grad():
        return timed(lambda: scan(**inputs, delta_softplus=True))[0]


def _forward_backward_ms(scan: Callable[..., Tensor], inputs: dict[str, Tensor]) -> float:
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    return timed(lambda: scan(**leaves, delta_softplus=True).sum().backward())[0]


def part_scan(cfg: dict) -> dict:
    from asmamba.mamba.selective_scan import backend_name, selective_scan, selective_scan_pytorch

    s = cfg["scan"]
    inputs = scan_inputs(s["batch"], s["dim"], s["state"], s["length"])
    ref_length = min(s["reference_length"], s["length"])
    ref_inputs = {k: (v[..., :ref_length] if v.dim() == 3 else v) for k, v in inputs.items()}
    scale = s["length"] / ref_length
    scans = {"current": selective_scan, "pytorch": selective_scan_pytorch}
    with torch.no_grad():  # agreement on the reference's length, and the first (compiling or cache-loading) calls
        reference_out = reference_scan(**ref_inputs)
        error = {name: float((scan(**ref_inputs, delta_softplus=True) - reference_out).abs().max())
                 for name, scan in scans.items()}
    _forward_backward_ms(selective_scan, {k: (v[..., :64] if v.dim() == 3 else v) for k, v in inputs.items()})
    times: dict[str, list[float]] = {}
    for _ in tqdm(range(s["repeats"]), desc="scan repeats", leave=False):
        for mode, measure in (("forward", _forward_ms), ("forward_backward", _forward_backward_ms)):
            times.setdefault(f"reference_{mode}", []).append(measure(reference_scan, ref_inputs) * scale)
            for name, scan in scans.items():
                times.setdefault(f"{name}_{mode}", []).append(measure(scan, inputs))
    result = {"backend": backend_name("cpu"), "shape": {k: s[k] for k in ("batch", "dim", "state", "length")},
              "reference_length": ref_length, "max_abs_error_vs_reference": error,
              "ms": {k: summary(v) for k, v in times.items()}}
    for name in scans:
        for mode in ("forward", "forward_backward"):
            result[f"speedup_{name}_{mode}"] = ratios(times[f"reference_{mode}"], times[f"{name}_{mode}"])
    return result


# --------------------------------------------------------------------------------------------------------------------
# training steps
# --------------------------------------------------------------------------------------------------------------------


def part_train(cfg: dict) -> dict:
    from asmamba.training.trainer import Trainer, load_train_config

    t = cfg["train"]
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(load_train_config(t["config"], [f"run.out_dir={out_dir}", f"run.threads={cfg['threads']}"]))
        trainer.train_step(0)  # warm-up: data caches, the compiled kernels
        with previous_scan_path():
            trainer.train_step(0)
        times: dict[str, list[float]] = {"current": [], "previous": []}
        for step in tqdm(range(1, t["steps"] + 1), desc="training steps", leave=False):
            times["current"].append(timed(lambda: trainer.train_step(step))[0])
            with previous_scan_path():
                times["previous"].append(timed(lambda: trainer.train_step(step))[0])
    return {"config": t["config"], "batch_size": int(trainer.cfg.data.batch_size),
            "ms": {k: summary(v) for k, v in times.items()},
            "steps_per_hour": {k: 3.6e6 / statistics.median(v) for k, v in times.items()},
            "previous_over_current": ratios(times["previous"], times["current"])}


def default_config(overrides: Sequence[str] = ()) -> dict:
    """``configs/bench/perf.yaml`` with ``key=value`` overrides, as a plain dict."""
    from asmamba.bench.common import load_bench_config, plain

    return plain(load_bench_config("perf", overrides))


PART_FUNCTIONS = {"components": part_components, "latency": part_latency, "memory": part_memory,
                  "scan": part_scan, "train": part_train}


# --------------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------------


def _ratio_text(r: Optional[dict]) -> str:
    if not r:
        return "-"
    return f"{r['median']:.2f}x" + (f" ({r['min']:.2f}-{r['max']:.2f})" if r["n"] > 1 else "")


def _failed(part: Optional[dict]) -> Optional[str]:
    if part is None:
        return "not run"
    if "error" in part:
        return "not run: " + part["error"].strip().splitlines()[-1][:120]
    return None


def render(results: dict, cfg: dict, machine: str) -> str:
    """The targets table, the per-component table and the scan table, with the load of every part."""
    lines = []
    lat, mem, scan, train, comp = (results.get(p) for p in ("latency", "memory", "scan", "train", "components"))
    rows = []
    if _failed(lat) is None:
        ms = lat["ms"]["asmamba"]["median"]
        baseline = ", ".join(f"{name}: {lat['ms'][name]['median']:.0f} ms, "
                             f"AS-Mamba/it {_ratio_text(lat[f'asmamba_over_{name}'])}"
                             for name in cfg["baselines"] if name in lat["ms"])
        missing = "; ".join(f"{name} not run ({why})" for name, why in lat["errors"].items())
        met = "yes" if ms <= cfg["latency_target_ms"] else "no"
        if "aliked_lightglue" in lat["ms"]:
            met = "yes" if met == "yes" and lat["asmamba_over_aliked_lightglue"]["median"] < 1 else "no"
        elif met == "yes":
            met = "yes (ALIKED+LightGlue not in this run)"
        rows.append([f"{lat['size']} latency, {cfg['weights']} weights",
                     f"{ms:.0f} ms ({lat['matches']['asmamba']} matches)",
                     f"<= {cfg['latency_target_ms']} ms and below ALIKED+LightGlue", met])
        if baseline or missing:
            rows.append(["same run: baselines at " + lat["size"], "; ".join(x for x in (baseline, missing) if x),
                         "", ""])
        if "previous_over_current" in lat:
            rows.append([f"{lat['size']}: PyTorch scan, one scan call per direction / current",
                         f"{lat['ms']['asmamba_previous']['median']:.0f} ms / {ms:.0f} ms = "
                         f"{_ratio_text(lat['previous_over_current'])}", "", ""])
        r = lat["large_over_small"]
        rows.append([f"{lat['large_size']} / {lat['size']} time",
                     f"{r['median']:.2f}x ({lat['ms']['asmamba_large']['median']:.0f} ms)",
                     f"<= {cfg['scaling_target']:g}x", "yes" if r["median"] <= cfg["scaling_target"] else "no"])
    else:
        rows.append(["latency", _failed(lat), "", ""])
    if _failed(mem) is None:
        rows.append([f"peak RSS, {mem['size']} pair", f"{mem['peak_rss_mib']:.0f} MiB",
                     f"< {cfg['memory_target_mib']} MiB",
                     "yes" if mem["peak_rss_mib"] < cfg["memory_target_mib"] else "no"])
    else:
        rows.append(["peak RSS", _failed(mem), "", ""])
    if _failed(scan) is None:
        for mode in ("forward", "forward_backward"):
            r = scan[f"speedup_current_{mode}"]
            rows.append([f"selective scan {mode.replace('_', ' + ')}, {scan['backend']} vs reference loop",
                         _ratio_text(r), f">= {cfg['scan']['target']:g}x",
                         "yes" if r["median"] >= cfg["scan"]["target"] else "no"])
    else:
        rows.append(["selective scan", _failed(scan), "", ""])
    if _failed(train) is None:
        r = train["previous_over_current"]
        sph = train["steps_per_hour"]
        rows.append([f"training step ({train['config']}, batch {train['batch_size']})",
                     f"{train['ms']['current']['median']:.0f} ms: {sph['current']:.0f} steps/h (previous "
                     f"{sph['previous']:.0f} steps/h), {_ratio_text(r)} faster",
                     f">= {cfg['train']['target']:g}x faster",
                     "yes" if r["median"] >= cfg["train"]["target"] else "no"])
    else:
        rows.append(["training step", _failed(train), "", ""])
    lines.append(markdown_table(["target", "measured", "goal", "met"], rows))

    if _failed(comp) is None:
        ms = comp["ms"]
        total = ms["total"]
        comp_rows = [[k, f"{v:.0f}", f"{100 * v / total:.0f} %"] for k, v in ms.items() if k != "total"]
        comp_rows.append(["total", f"{total:.0f}", "100 %"])
        lines.append(f"\nOne forward at {comp['size']} ({comp['matches']} matches), median of {cfg['repeats']}:\n")
        lines.append(markdown_table(["component", "ms", "share"], comp_rows))
    if _failed(scan) is None:
        ms = scan["ms"]
        scan_rows = []
        for mode in ("forward", "forward_backward"):
            scan_rows.append([mode.replace("_", " + "), f"{ms[f'reference_{mode}']['median']:.0f}",
                              f"{ms[f'pytorch_{mode}']['median']:.0f}", f"{ms[f'current_{mode}']['median']:.0f}",
                              _ratio_text(scan[f"speedup_pytorch_{mode}"]),
                              _ratio_text(scan[f"speedup_current_{mode}"])])
        shape = scan["shape"]
        lines.append(f"\nSelective scan, batch {shape['batch']}, dim {shape['dim']}, N {shape['state']}, "
                     f"L {shape['length']}, float32 (ms, median of {cfg['scan']['repeats']}; speed-ups per repeat, "
                     "median (min-max)):\n")
        lines.append(markdown_table(["", "reference loop", "PyTorch blocked", scan["backend"], "PyTorch vs reference",
                                     f"{scan['backend']} vs reference"], scan_rows))
    loads = ", ".join(f"{p} {results[p]['load_average']}" for p in PARTS
                      if results.get(p) and results[p].get("load_average") is not None)
    lines.append(f"\n{time.strftime('%Y-%m-%d')}, CPU: {machine}. Each part a fresh process; machine load average "
                 f"(1 min) at each part's start: {loads or 'unknown'}.\n")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, cfg, out = parse_bench_args("perf", __doc__, argv, child_nargs=1)
    parts_dir = out / "perf"
    unknown = [p for p in cfg["parts"] if p not in PARTS]
    if unknown:
        raise SystemExit(f"asmamba bench perf: unknown part(s) {unknown}; parts are {list(PARTS)}")
    if args.child:
        part = args.child[0]
        torch.set_num_threads(cfg["threads"])
        load = load_average()
        result = PART_FUNCTIONS[part](cfg)
        result.update(load_average=load, load_average_end=load_average(), threads=cfg["threads"])
        write_json_atomic(parts_dir / f"{part}.json", result)
        return 0
    parts_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for part in tqdm(cfg["parts"], desc="perf parts"):
        results[part] = run_child("asmamba.bench.perf", ["--child", part, "--out", str(out), *args.overrides],
                                  parts_dir / f"{part}.json", force=args.force)
    table = render(results, cfg, machine_line(cfg["threads"]))
    write_json_atomic(out / "perf.json", {"config": cfg, "results": results})
    tmp = out / "perf.md.tmp"
    tmp.write_text(table)
    os.replace(tmp, out / "perf.md")
    print(table)
    if args.readme:
        replace_readme_block(Path(args.readme), README_BLOCK, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
