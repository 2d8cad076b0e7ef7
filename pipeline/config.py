"""Loupe's run configuration: the dataclasses of each part, composed, loaded from YAML.

Each part's config lives next to its code; this module only composes them and
turns files and dicts into them (strictly: an unknown key is an error, not ignored).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import yaml

from models.encoder import EncoderConfig
from pipeline.contrastive.pretrain import PretrainConfig
from pipeline.scoring.config import ScorerConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class LoupeConfig:
    name: str = "default"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    # "imagenet-lite0" -> the optional package's file; a path -> that file; None -> from scratch
    init_weights: str | None = None


def pretrain_image_size(cfg: LoupeConfig) -> int:
    """Side the pretraining images are loaded at: `pretrain.image_size`, else the scorer's."""
    return cfg.pretrain.image_size or cfg.scorer.image_size


def pretraining_settings(cfg: LoupeConfig) -> dict[str, Any]:
    """What decides a pretraining's result besides the data: init weights, encoder and pretrain
    settings, with the images' effective load size (set in pretrain or taken from the scorer)."""
    d = to_dict(cfg)
    return {"init_weights": d["init_weights"], "encoder": d["encoder"],
            "pretrain": {**d["pretrain"], "image_size": pretrain_image_size(cfg)}}


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys raise with their path."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{where}.{key}")
        elif _is_tuple(hint) and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _is_tuple(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(hint))
    return origin is tuple or hint is tuple


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (lists for tuples) for JSON, YAML and checkpoints."""
    def conv(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """["a.b=3", "c=[1, 2]"] -> {"a.b": 3, "c": [1, 2]} (values parsed as YAML), for `load_config`."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"override {item!r} must be dotted.key=value, e.g. pretrain.epochs=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts: `top`'s keys over `base`'s, section by section (lists and values replace)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _extend(data: dict[str, Any], path: Path, seen: tuple[str, ...]) -> dict[str, Any]:
    """`extends: NAME` (a shipped config, or a YAML path relative to this file): that config's settings under this file's."""
    base = data.pop("extends", None)
    if base is None:
        return data
    if Path(str(base)).suffix and not Path(str(base)).is_absolute():  # a file next to this one
        base = str(path.parent / str(base))
    if str(base) in seen:
        raise ValueError(f"{path}: `extends: {base}` loops ({' -> '.join(seen)} -> {base})")
    parent = to_dict(load_config(base, _seen=(*seen, str(base))))
    parent.pop("name", None)
    return _merge(parent, data)


def load_config(name_or_path: str | Path = "default", overrides: dict[str, Any] | None = None, *,
                _seen: tuple[str, ...] = ()) -> LoupeConfig:
    """A shipped config by name (`default`, `robust`, `imagenet-lite0`, `smoke`) or a YAML file.

    A file may start from another config (`extends: default`) and give only what differs.
    `overrides` uses dotted keys, e.g. {"pretrain.epochs": 3}.
    """
    _seen = _seen or (str(name_or_path),)
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown config {name_or_path!r}; shipped: {shipped_configs()}, or pass a YAML file path")
    elif not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    data = _extend(data, path, _seen)
    data.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(LoupeConfig, data, where=str(path))


def config_from_dict(data: dict[str, Any]) -> LoupeConfig:
    return from_dict(LoupeConfig, data)


def save_config(path: str | Path, cfg: LoupeConfig) -> Path:
    """Write `cfg` as YAML to `path`, atomically (a run's config.yaml, which load_config reads back)."""
    from pipeline.atomic import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
