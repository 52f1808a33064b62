"""``asmamba export``: a checkpoint -> fp16 inference weights with its config and inference overrides."""

from __future__ import annotations

import pytest
import torch

from asmamba import ASMamba
from asmamba.checkpoint import CheckpointError, save_checkpoint
from asmamba.cli import main as cli_main
from asmamba.config import ConfigError, to_plain
from asmamba.export import export_weights


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A trainer-style fp32 checkpoint of the tiny model (random weights), with a step and an optimizer entry."""
    torch.manual_seed(0)
    model = ASMamba(config="tiny", pretrained=None)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, {"config": to_plain(model.config), "state_dict": model.net.state_dict(), "step": 1400,
                           "optimizer": {"state": {}, "param_groups": []}})
    return path, {k: v.clone() for k, v in model.net.state_dict().items()}, float(model.config.coarse.threshold)


def test_export_writes_fp16_weights_with_the_override_and_nothing_else(trained_like, tmp_path):
    src, state, threshold = trained_like
    out = tmp_path / "shipped.pt"
    export_weights(src, out, ["coarse.threshold=0.05"])
    assert threshold != 0.05
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"format", "version", "config", "state_dict", "step"} and ckpt["step"] == 1400
    assert ckpt["state_dict"].keys() == state.keys()
    for key, value in state.items():
        expected = value.half() if value.is_floating_point() else value
        assert ckpt["state_dict"][key].dtype == expected.dtype and torch.equal(ckpt["state_dict"][key], expected), key
    shipped = ASMamba(pretrained=str(out))
    assert shipped.config.coarse.threshold == 0.05
    source = ASMamba(pretrained=str(src))
    changed = {k for k, v in to_plain(shipped.config).items() if v != to_plain(source.config)[k]}
    assert changed == {"coarse"}  # only the overridden section differs


def test_export_refuses_unknown_keys_architecture_changes_and_missing_files(trained_like, tmp_path):
    src, _, _ = trained_like
    out = tmp_path / "x.pt"
    with pytest.raises(ConfigError, match="coarse.thresh"):
        export_weights(src, out, ["coarse.thresh=0.1"])
    with pytest.raises(CheckpointError, match="does not fit"):
        export_weights(src, out, ["blocks.num=3"])
    with pytest.raises(CheckpointError, match="nope.pt"):
        export_weights(tmp_path / "nope.pt", out)
    assert not out.exists()


def test_export_command_line(trained_like, tmp_path, capsys):
    src, _, _ = trained_like
    out = tmp_path / "cli.pt"
    assert cli_main(["export", str(src), str(out), "coarse.threshold=0.1"]) == 0
    assert "coarse.threshold 0.1" in capsys.readouterr().out
    assert ASMamba(pretrained=str(out)).config.coarse.threshold == 0.1
    assert cli_main(["export", str(src), str(tmp_path), "coarse.threshold=0.1"]) == 2  # a folder as OUT
    assert "is a folder" in capsys.readouterr().err
    assert cli_main(["export", str(src), str(out), "coarse.thresh=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asmamba export: error:") and "coarse.thresh" in err[0]
