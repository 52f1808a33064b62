"""Model configuration: OmegaConf YAML presets from ``configs/``, key validation and overrides.

A config names a preset (``"base"``, ``"tiny"``), a YAML file, a dict or a ``DictConfig``. A YAML file may start
from another preset with ``_base_: <name or path>``. ``configs/model/base.yaml`` is the schema: every key a config
or an override names must exist there, so a typo fails at once with the key's name instead of being ignored.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

ConfigLike = Union[str, os.PathLike, Mapping[str, Any], DictConfig, None]


def _data_root() -> str:
    from .io import data_root

    return str(data_root())


# ``${data_root:}`` in any config: the shared real-data folder ($ASMAMBA_DATA, else ../shared/data beside the repo)
OmegaConf.register_resolver("data_root", _data_root, replace=True)

SCHEMA_PRESET = "base"

#: Allowed values of the enumerated keys (checked after merging).
CHOICES: dict[str, tuple[str, ...]] = {
    "encoder.name": ("convnext", "xfeat", "aliked"),
    "encoder.aliked_variant": ("n16", "t16", "n32"),
    "position.kind": ("mlp", "sine"),
    "mamba.scan": ("jego", "hilbert"),
    "mamba.heads": ("multi", "single"),
    "blocks.flow_predictor": ("kan", "mlp"),
    "blocks.kan_basis": ("rbf", "bspline"),
    "coarse.rule": ("mutual", "union"),
    "fine.joint_encoder": ("mamba", "none"),
    "fine.kind": ("two_stage", "window"),
    "blocks.flow_prior": ("correlation", "none"),
    "initializer.aggregator": ("gated3x3",),
}


class ConfigError(ValueError):
    """A configuration names an unknown key, has a value of the wrong type or an unknown choice."""


def configs_dir(kind: str = "model") -> Path:
    """Folder holding the shipped presets of one kind (``model``, ``train``, ``pipelines``)."""
    return Path(str(resources.files("asmamba.configs").joinpath(kind)))


def available_presets(kind: str = "model") -> list[str]:
    """Names of the shipped presets of one kind."""
    return sorted(p.stem for p in configs_dir(kind).glob("*.yaml"))


def _read_yaml(ref: Union[str, os.PathLike], kind: str) -> DictConfig:
    """Load a preset by name or a YAML file by path, following ``_base_`` links."""
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        preset = configs_dir(kind) / f"{ref}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"unknown {kind} config {str(ref)!r}: not a preset ({', '.join(available_presets(kind))}) "
                "and not a .yaml file"
            )
        path = preset
    if not path.is_file():
        raise ConfigError(f"{kind} config file {str(path)!r} does not exist")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{kind} config file {str(path)!r} must hold a mapping at the top level")
    base = cfg.pop("_base_", None)
    if base is None:
        return cfg
    base_ref = base if not str(base).endswith((".yaml", ".yml")) else path.parent / base
    return OmegaConf.merge(_read_yaml(base_ref, kind), cfg)  # type: ignore[return-value]


def as_dictconfig(config: ConfigLike, kind: str) -> DictConfig:
    """A preset name, YAML path, dict or DictConfig of one kind (``model``, ``train``, ``data``) as a DictConfig."""
    if config is None:
        return OmegaConf.create({})
    if isinstance(config, DictConfig):
        return config
    if isinstance(config, Mapping):
        return OmegaConf.create(dict(config))
    if isinstance(config, (str, os.PathLike)):
        return _read_yaml(config, kind)
    raise ConfigError(f"a config must be a preset name, a YAML path, a dict or a DictConfig, got {type(config)}")


def merge_with_schema(schema: DictConfig, *layers: DictConfig, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """Merge config layers onto a schema, refusing keys the schema does not have.

    Raises:
        ConfigError: a layer or an override names an unknown key or gives a value of the wrong type.
    """
    merged = OmegaConf.create(OmegaConf.to_container(schema, resolve=True))
    OmegaConf.set_struct(merged, True)
    try:
        for layer in layers:
            layer = OmegaConf.create(OmegaConf.to_container(layer, resolve=True))
            layer.pop("_base_", None)
            merged = OmegaConf.merge(merged, layer)
    except (ConfigKeyError, ValidationError) as err:
        raise ConfigError(_key_problem(merged, err)) from None
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    for item in overrides or ():  # one at a time, so that the message names the override at fault
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except (ConfigKeyError, ValidationError) as err:
            raise ConfigError(f"override {item!r}: {_key_problem(merged, err)}") from None
    _check_types(OmegaConf.to_container(schema, resolve=True), OmegaConf.to_container(merged, resolve=True), "")
    return merged  # type: ignore[return-value]


def _key_problem(cfg: DictConfig, err: Exception) -> str:
    """One line naming the key an OmegaConf merge refused, and the keys that exist beside it."""
    key = str(getattr(err, "full_key", None) or getattr(err, "key", None) or "?")
    if not isinstance(err, ConfigKeyError):
        first = str(getattr(err, "msg", err)).splitlines()[0]
        return f"bad value for config key {key!r}: {first}"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    known = f"; known keys{' under ' + repr(parent) if parent else ''}: {', '.join(map(str, node.keys()))}" \
        if isinstance(node, DictConfig) else ""
    return f"unknown config key {key!r}{known}"


def _check_types(schema: Any, value: Any, path: str) -> None:
    """Every leaf must have its schema default's type (an int is a valid float; ``None`` defaults take anything)."""
    if schema is None:
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
        for k, v in value.items():
            if k in schema:
                _check_types(schema[k], v, f"{path}.{k}" if path else k)
        return
    if isinstance(schema, bool):
        ok = isinstance(value, bool)
    elif isinstance(schema, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(schema, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(schema, list):
        ok = isinstance(value, list)
    elif isinstance(schema, str):
        ok = isinstance(value, (str, dict))  # a preset name may be replaced by an inline mapping
    else:
        ok = True
    if not ok:
        raise ConfigError(f"config key {path!r} must be of type {type(schema).__name__}, got {value!r}")


def check_choices(cfg: DictConfig, choices: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`ConfigError` when an enumerated key has a value outside its choices."""
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} is {value!r}; allowed: {', '.join(map(str, allowed))}")


def load_config(config: ConfigLike = "base", overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """The full, validated model config.

    Args:
        config: preset name (``"base"``, ``"tiny"``), YAML path, dict or DictConfig; ``None`` means ``"base"``.
        overrides: OmegaConf dotlist, e.g. ``["mamba.scan=hilbert", "blocks.num=3"]``.

    Returns:
        A read-only DictConfig with every key of the schema.

    Raises:
        ConfigError: unknown preset or file, unknown key, wrong value type, or a value outside its choices.
    """
    schema = _read_yaml(SCHEMA_PRESET, "model")
    layer = as_dictconfig("base" if config is None else config, "model")
    cfg = merge_with_schema(schema, layer, overrides=overrides)
    check_choices(cfg, CHOICES)
    _check_model_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_model_values(cfg: DictConfig) -> None:
    if len(cfg.encoder.widths) != 3 or len(cfg.encoder.depths) != 3:
        raise ConfigError("encoder.widths and encoder.depths must each list 3 stages (1/2, 1/4, 1/8)")
    if cfg.blocks.num < 0:
        raise ConfigError(f"blocks.num must be >= 0, got {cfg.blocks.num}")
    if cfg.fine.window < 2:
        raise ConfigError(f"fine.window must be >= 2, got {cfg.fine.window}")
    if cfg.fine.margin < 0 or cfg.fine.subpixel_radius < 1:
        raise ConfigError(f"fine.margin must be >= 0 and fine.subpixel_radius >= 1, got {cfg.fine.margin} and "
                          f"{cfg.fine.subpixel_radius}")
    if cfg.blocks.local_span < 2:
        raise ConfigError(f"blocks.local_span must be >= 2, got {cfg.blocks.local_span}")
    if not 0.0 <= cfg.coarse.threshold < 1.0:
        raise ConfigError(f"coarse.threshold must be in [0, 1), got {cfg.coarse.threshold}")


def to_plain(cfg: Union[DictConfig, ListConfig]) -> Any:
    """A plain dict/list copy of a config (for checkpoints and JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)
