"""``asmamba train CONFIG [key=value ...]``: AdamW, warm-up + cosine, gradient clipping, AMP on CUDA, a guard that
skips non-finite steps, atomic checkpoints that resume bit for bit, a CSV log and a PNG of the loss curves.

Distributed: under ``torchrun`` the trainer runs PyTorch DDP (NCCL on GPUs, gloo on CPU); every rank reads its own
share of each global batch and only rank 0 writes files.

The data order is a pure function of (seed, step), the items are deterministic, and the checkpoint holds every RNG
state, so ``--resume`` continues with exactly the loss an uninterrupted run would have had.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import half_state_dict, load_state, read_checkpoint, save_checkpoint
from ..config import ConfigError, as_dictconfig, check_choices, configs_dir, load_config, merge_with_schema
from ..matcher import mask_extent
from ..model.network import ASMambaNet
from .losses import ASMambaLoss
from .data.synthetic import write_atomic
from .supervision import compute_supervision_coarse

TRAIN_SCHEMA = "default"
TRAIN_CHOICES = {"supervision.rule": ("mutual", "union")}


# ----------------------------------------------------------------------------------------------- configuration
def load_train_config(config: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/train/<name>.yaml`` or a YAML path, validated against ``configs/train/default.yaml``.

    Raises:
        asmamba.config.ConfigError: unknown key or value, before anything is trained.
    """
    schema = as_dictconfig(TRAIN_SCHEMA, "train")
    cfg = merge_with_schema(schema, as_dictconfig(config, "train"), overrides=list(overrides))
    check_choices(cfg, TRAIN_CHOICES)
    load_config(cfg.model.config, list(cfg.model.overrides))  # the model part must be valid too
    return cfg


# ----------------------------------------------------------------------------------------------- distributed
class Dist:
    """Rank, world size and device of this process (a single process when not under torchrun)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- data
def batch_indices(n_items: int, batch_size: int, seed: int, step: int, rank: int, world: int) -> list[int]:
    """Item indices of this rank's share of global batch ``step``: a seeded permutation per epoch, sliced, so the
    order depends on nothing but (seed, step) - resuming at any step reads the same items."""
    global_bs = batch_size * world
    per_epoch = max(1, n_items // global_bs)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    start = pos * global_bs + rank * batch_size
    return [perm[(start + k) % n_items] for k in range(batch_size)]


#: per-view tensors whose last two dimensions are the image's (H, W); the rest of an item has one shape everywhere
PADDED_KEYS = ("image0", "image1", "mask0", "mask1", "depth0", "depth1")


def collate(items: list[dict]) -> dict:
    """Stack items into a batch. Every view of every item is zero-padded at the bottom and right to one canvas, the
    largest height and width over both views of all items: the model takes ``image0`` and ``image1`` of one size
    (a portrait view beside a landscape one, homography pairs beside SfM pairs). The masks mark the padding, and
    bottom/right padding changes no pixel coordinate, intrinsics or homography."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    items = [dict(item) for item in items]
    H = max(int(item[f"image{k}"].shape[-2]) for item in items for k in "01")
    W = max(int(item[f"image{k}"].shape[-1]) for item in items for k in "01")
    for item in items:
        for key in PADDED_KEYS:
            t = item.get(key)
            if t is not None and t.shape[-2:] != (H, W):
                item[key] = torch.nn.functional.pad(t, (0, W - t.shape[-1], 0, H - t.shape[-2]))
    return torch.utils.data.default_collate(items)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def add_valid_sizes(batch: dict) -> dict:
    """``valid_hw0/1 (B, 2)``: the extent of each image's valid pixels from the top-left corner, i.e. (index of the
    last row, of the last column holding a valid pixel) + 1; only bottom/right padding lies outside it.

    Reads ``mask0``, ``mask1`` ``(B, H, W)``. A homography view's mask is a quadrilateral, not a top-left rectangle:
    counting its valid rows would cut valid cells off the bottom/right, so the extent is taken instead (the
    quadrilateral itself reaches the model as the mask).
    """
    for k in ("0", "1"):
        batch[f"valid_hw{k}"] = mask_extent(batch[f"mask{k}"].bool())
    return batch


# ----------------------------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, total: int, final: float, start: int = 0, rewarmup: int = 0) -> float:
    """Linear warm-up to 1, then cosine decay to ``final``. A run continued from exported weights at step ``start``
    (``run.start_step``) ramps linearly over its first ``rewarmup`` steps again, its optimizer moments being new."""
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        factor = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))
    if start > 0 and rewarmup > 0 and start <= step < start + rewarmup:
        factor *= (step - start + 1) / rewarmup
    return factor


# ----------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain numbers (``torch.load(weights_only=True)`` reads them back)."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np_keys.tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np_pos),
        "numpy_gauss": [int(np_has_gauss), float(np_gauss)],
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    has_gauss, gauss = state.get("numpy_gauss", (0, 0.0))
    np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), float(gauss)))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: DictConfig, out_dir: Optional[str] = None, resume: bool = False) -> None:
        from .data import build_dataset

        self.cfg = cfg
        self.dist = Dist()
        run = cfg.run
        self.out = Path(out_dir or run.out_dir)
        if run.threads and self.dist.device.type == "cpu":
            torch.set_num_threads(int(run.threads))
        seed_everything(int(run.seed) + self.dist.rank)
        start = int(run.start_step)
        if not 0 <= start < int(cfg.optim.total_steps):
            raise ConfigError(f"run.start_step={start} must be in [0, optim.total_steps={cfg.optim.total_steps})")
        if start and not cfg.model.init:
            raise ConfigError(f"run.start_step={start} continues a run from its weights: set model.init to them")
        self.model_cfg = load_config(cfg.model.config, list(cfg.model.overrides))
        self.model = ASMambaNet(self.model_cfg).to(self.dist.device)
        if cfg.model.init:
            ckpt = read_checkpoint(cfg.model.init)
            load_state(self.model, ckpt["state_dict"], source=f"model.init {cfg.model.init!r}",
                       fresh=list(cfg.model.init_fresh))
            init_step = ckpt.get("step")
            if start and init_step is not None and int(init_step) != start:
                raise ConfigError(f"run.start_step={start} but model.init {cfg.model.init!r} holds the "
                                  f"weights of step {int(init_step)}: continue it at run.start_step={int(init_step)}")
            if cfg.model.reset_frozen_backbone:  # the checkpoint's frozen part may have drifted (issue 12)
                self.model.encoder.reset_frozen()
        # encoder.freeze: the encoder itself stops gradients to its frozen modules (encoder.frozen_modules(): XFeat's
        # backbone, all of a frozen ConvNeXt) and keeps them in eval mode under train(); the optimizer below takes
        # only the parameters that require grad
        self.multiple = self.model.size_multiple()
        self.train_module: torch.nn.Module = self.model
        if self.dist.world > 1:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.loss = ASMambaLoss(dict(cfg.loss.weights), cfg.loss.focal_alpha, cfg.loss.focal_gamma,
                                cfg.loss.pos_weight, cfg.loss.neg_weight)
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, o.warmup_steps, o.total_steps, o.final_lr_factor, start, o.rewarmup_steps),
        )
        self.use_amp = bool(o.amp) and self.dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        train_data = cfg.data.train
        self.dataset = build_dataset(train_data if isinstance(train_data, str) else OmegaConf.to_container(train_data))
        if len(self.dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.val_dataset = None
        if cfg.val.data:
            val_data = cfg.val.data
            self.val_dataset = build_dataset(val_data if isinstance(val_data, str) else
                                             OmegaConf.to_container(val_data))
        self._val_matcher = None
        self.best_score = -math.inf
        self.step = 0
        self.skipped = 0
        if resume:
            self._resume()
        elif start:
            self._start_at(start)

    # ---- checkpoints
    @property
    def last_ckpt(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def _payload(self) -> dict[str, Any]:
        return {
            "config": OmegaConf.to_container(self.model_cfg, resolve=True),
            "train_config": OmegaConf.to_container(self.cfg, resolve=True),
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "skipped": self.skipped,
            "best_score": self.best_score,
        }

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.last_ckpt, self._payload())

    def _resume(self) -> None:
        if not self.last_ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.last_ckpt}")
        ckpt = read_checkpoint(self.last_ckpt)
        load_state(self.model, ckpt["state_dict"], source=str(self.last_ckpt))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.dist.world == 1:
            set_rng_state(ckpt["rng"])
        self.step, self.skipped = int(ckpt["step"]), int(ckpt["skipped"])
        self.best_score = float(ckpt.get("best_score", -math.inf))
        if self.dist.main:
            self._truncate_log(self.step)
            self._truncate_val_log(self.step)

    def _start_at(self, step: int) -> None:
        """Begin a new run at ``step`` of the schedule and the data order (``run.start_step``)."""
        self.step = step
        self.scheduler.last_epoch = step - 1
        with warnings.catch_warnings():  # stepping the schedule without an optimizer step is intended here
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def _truncate_log(self, step: int) -> None:
        """Drop log rows of steps at or after ``step``: a run stopped after its last checkpoint logged steps that the
        resumed run does again (written atomically)."""
        path = self.out / "log.csv"
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and float(r[0]) < step]
        if len(kept) == len(rows):
            return
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, path)

    # ---- validation
    @property
    def best_ckpt(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    def validate(self) -> Optional[dict[str, float]]:
        """Score the current weights on the validation set (``val.data``) through the users' inference path; append
        the row to ``val.jsonl`` and keep the best-scoring weights as ``best.pt`` (fp16 export). The global RNG state
        is restored afterwards, so a validation never changes the training that follows it."""
        if self.val_dataset is None or not self.dist.main:
            return None
        from ..matcher import ASMamba
        from .validation import validate

        state = rng_state()  # before anything below draws a random number (building the wrapper initialises weights)
        if self._val_matcher is None:
            self._val_matcher = ASMamba(config=self.model_cfg, pretrained=None)
            self._val_matcher.net = self.model  # share the weights being trained
        try:
            self._val_matcher.eval()
            row = validate(self._val_matcher, self.val_dataset, self.cfg.val.max_pairs,
                           progress=bool(self.cfg.run.progress))
        finally:
            set_rng_state(state)
            self.model.train()
        row = {"step": float(self.step), **row}
        path = self.out / "val.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if math.isfinite(row["score"]) and row["score"] > self.best_score:
            self.best_score = row["score"]
            self.export(str(self.best_ckpt))
        return row

    def _truncate_val_log(self, step: int) -> None:
        """Drop validation rows of steps after ``step`` (the resumed run validates them again); atomic."""
        path = self.out / "val.jsonl"
        if not path.is_file():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        if len(kept) != len(rows):
            text = "".join(line + "\n" for line in kept)
            write_atomic(path, lambda tmp: tmp.write_text(text))

    # ---- one step
    def _batch(self, step: int) -> dict:
        ids = batch_indices(len(self.dataset), self.cfg.data.batch_size, self.cfg.run.seed, step,
                            self.dist.rank, self.dist.world)
        batch = add_valid_sizes(collate([self.dataset[i] for i in ids]))
        H, W = batch["image0"].shape[-2:]
        if H % self.multiple or W % self.multiple:
            raise ValueError(
                f"training images are {H}x{W}; this model needs sides that are multiples of {self.multiple} "
                "(set the dataset's output size accordingly)"
            )
        batch = to_device(batch, self.dist.device)
        batch.update(compute_supervision_coarse(
            batch, stride=8, rule=self.cfg.supervision.rule, epipolar_margin=self.cfg.supervision.epipolar_margin))
        return batch

    def train_step(self, step: int) -> Optional[dict[str, float]]:
        """One optimisation step; returns the logged losses, or None when the step was skipped.

        A step is skipped when the loss (on any rank) or the clipped gradient norm is not finite: the weights and
        the optimizer's moments stay as they were, the learning-rate schedule still advances (the lr stays a
        function of the step) and, under AMP, the gradient scaler still lowers its scale.
        """
        self.train_module.train()
        batch = self._batch(step)
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses
        with torch.autocast(self.dist.device.type, dtype=torch.float16, enabled=self.use_amp):
            data = self.train_module(batch)
        loss, logged = self.loss(data)
        finite = torch.isfinite(loss.detach()).float()
        if self.dist.world > 1:  # every rank must take the same decision
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.optimizer.zero_grad(set_to_none=True)
        if finite.item() < 1:
            return self._skip()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.cfg.optim.grad_clip
        )
        if not torch.isfinite(grad_norm):  # identical on every rank: DDP has averaged the gradients
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # records the overflow (AMP lowers its scale); also re-arms unscale_
            return self._skip()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logged.update(lr=lr, grad_norm=float(grad_norm), skipped=float(self.skipped),
                      n_gt=float(batch["spv_b_ids"].numel()), n_pred=float(data["pred_b_ids"].numel()))
        return logged

    def _skip(self) -> None:
        self.skipped += 1
        with warnings.catch_warnings():  # stepping the schedule without an optimizer step is intended here
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        return None

    # ---- loop
    def fit(self, max_steps: Optional[int] = None) -> list[dict[str, float]]:
        """Train until ``optim.total_steps`` (or ``max_steps`` more steps); returns this call's log rows (skipped
        steps have none)."""
        from tqdm import tqdm

        total = int(self.cfg.optim.total_steps)
        end = total if max_steps is None else min(total, self.step + max_steps)
        rows: list[dict[str, float]] = []
        bar = tqdm(range(self.step, end), initial=self.step, total=total, desc="train",
                   disable=not self.dist.main or not self.cfg.run.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        for step in bar:
            logged = self.train_step(step)
            self.step = step + 1
            if logged is None:
                if self.dist.main:
                    print(f"step {step}: non-finite loss or gradient, skipped ({self.skipped} so far)",
                          file=sys.stderr)
            else:
                logged["step"] = float(step)
                logged["seconds"] = time.perf_counter() - t0
                rows.append(logged)
                bar.set_postfix(loss=f"{logged['total']:.3f}", coarse=f"{logged['coarse']:.3f}")
                if self.dist.main and (step % self.cfg.run.log_every == 0 or self.step == end):
                    self._append_log(logged)
            if self.val_dataset is not None and (self.step % self.cfg.val.every == 0 or self.step == end):
                self.validate()  # before the save, so the checkpoint knows the best score so far
            if self.step % self.cfg.run.ckpt_every == 0 or self.step == end:  # skipped steps too
                self.save()
        if self.dist.main and rows:
            self.plot()
        self.dist.barrier()
        return rows

    def _append_log(self, row: dict[str, float]) -> None:
        path = self.out / "log.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ["step", "total", "coarse", "fine", "flow", "geom", "lr", "grad_norm", "n_gt", "n_pred", "skipped",
                  "seconds"]
        new = not path.is_file()
        if not new:  # a resumed run appends under the header the file already has
            with open(path, newline="") as f:
                fields = next(csv.reader(f), fields)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def plot(self) -> Optional[Path]:
        """PNG of every loss term (and the validation curves) against the step, from the CSV and JSONL logs."""
        path = self.out / "log.csv"
        if not path.is_file():
            return None
        return plot_training_log(path, self.out / "loss_curves.png", self.out / "val.jsonl")

    def export(self, path: str) -> None:
        """Write an fp16 inference checkpoint (weights + model config) for shipping."""
        save_checkpoint(path, {"config": OmegaConf.to_container(self.model_cfg, resolve=True),
                               "state_dict": half_state_dict(self.model), "step": self.step})


#: the per-source validation criteria that make up ``score`` (see :mod:`asmamba.training.validation`)
VAL_CRITERIA = ("pose_auc@10", "hom_auc@5px")


def plot_training_log(csv_path: Path, png_path: Path, val_path: Optional[Path] = None) -> Path:
    """PNG of the training log: every loss term and the coarse match counts against the step and, when ``val_path``
    (a ``val.jsonl``) holds rows, each source's validation criterion and the selection score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    val_rows = []
    if val_path is not None and val_path.is_file():
        val_rows = [json.loads(line) for line in val_path.read_text().splitlines() if line.strip()]
    steps = [float(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3 if val_rows else 2, figsize=(16.5 if val_rows else 11, 4))
    for key in ("total", "coarse", "fine", "flow", "geom"):
        axes[0].plot(steps, [float(r[key]) for r in rows], label=key)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[0].set_title("AS-Mamba training losses")
    axes[1].plot(steps, [float(r["n_pred"]) for r in rows], label="predicted coarse matches")
    axes[1].plot(steps, [float(r["n_gt"]) for r in rows], label="GT coarse matches")
    axes[1].set_xlabel("step")
    axes[1].legend()
    if val_rows:
        val_steps = [r["step"] for r in val_rows]
        for key in sorted({k for r in val_rows for k in r if k.split("/")[-1] in VAL_CRITERIA}):
            axes[2].plot(val_steps, [r.get(key, math.nan) for r in val_rows], marker="o", label=key)
        axes[2].plot(val_steps, [r["score"] for r in val_rows], marker="s", color="black", label="score (mean)")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("%")
        axes[2].legend()
        axes[2].set_title("validation (held-out training scenes)")
    fig.tight_layout()
    tmp = png_path.with_name(png_path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..clitools import ArgumentParser

    parser = ArgumentParser(prog="asmamba train", description="train AS-Mamba (configs/train/)")
    parser.add_argument("config", help=f"train preset ({', '.join(p.stem for p in configs_dir('train').glob('*.yaml'))}) or YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 run.out_dir=runs/x")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/last.pt")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (a sitting)")
    parser.add_argument("--export", default=None, help="after training, write an fp16 inference checkpoint here")
    args = parser.parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume)
    try:
        trainer.fit(args.max_steps)
        if args.export and trainer.dist.main:
            trainer.export(args.export)
            print(f"exported {args.export}")
        if trainer.dist.world > 1:
            report_weight_agreement(trainer)
    finally:
        trainer.dist.close()
    return 0


def report_weight_agreement(trainer: Trainer) -> bool:
    """Under DDP, check that every rank ended with bit-identical weights: rank 0's flattened parameters are
    broadcast and compared exactly on every rank. Rank 0 prints the verdict and writes ``ddp_agreement.txt``."""
    flat = torch.cat([p.detach().float().flatten() for p in trainer.model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([float(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    agree = bool(same.item() == 1.0)
    if trainer.dist.main:
        print(f"ranks agree on the weights: {agree}")
        trainer.out.mkdir(parents=True, exist_ok=True)
        (trainer.out / "ddp_agreement.txt").write_text(f"{agree}\n")
    return agree
