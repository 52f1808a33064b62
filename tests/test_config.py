"""Config presets, overrides and validation."""

import pytest

from asmamba.config import ConfigError, available_presets, load_config


def test_presets_ship():
    assert {"base", "tiny"} <= set(available_presets("model"))


def test_base_has_kickoff_dimensions():
    cfg = load_config("base")
    assert (cfg.encoder.c_enc, cfg.dims.c_match, cfg.dims.c_geom, cfg.encoder.c_fine) == (128, 128, 32, 64)


def test_tiny_inherits_base_keys():
    tiny = load_config("tiny")
    assert tiny.dims.c_match == 64
    assert tiny.coarse.threshold == load_config("base").coarse.threshold  # not named in tiny.yaml


def test_dotlist_override():
    cfg = load_config("tiny", ["mamba.scan=hilbert", "blocks.num=3"])
    assert cfg.mamba.scan == "hilbert" and cfg.blocks.num == 3


@pytest.mark.parametrize(
    "config,overrides,needle",
    [
        ("base", ["mamba.scna=hilbert"], "scna"),
        ({"dims": {"c_mach": 3}}, None, "c_mach"),
        ("base", ["mamba.scan=zigzag"], "zigzag"),
        ("base", ["blocks.num=two"], "blocks.num"),
        ("nope", None, "nope"),
        ("base", ["blocks.num"], "key=value"),
    ],
)
def test_bad_config_names_the_problem(config, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(config, overrides)


def test_yaml_file_with_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("_base_: tiny\ncoarse:\n  threshold: 0.5\n")
    cfg = load_config(str(path))
    assert cfg.coarse.threshold == 0.5 and cfg.dims.c_match == 64


def test_config_is_read_only():
    cfg = load_config("tiny")
    with pytest.raises(Exception):
        cfg.dims.c_match = 3
