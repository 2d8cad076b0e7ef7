"""`pretrain.image_size`: the load size of the pretraining images is part of the pretraining,
whether set there or taken from the scorer, and a reused pretraining must match it."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config, pretrain_image_size
from pipeline.steps import pretrain_step, reuse_pretraining


def test_pretrain_image_size_falls_back_to_the_scorer() -> None:
    cfg = load_config("smoke")
    assert cfg.pretrain.image_size is None and pretrain_image_size(cfg) == cfg.scorer.image_size
    cfg = load_config("smoke", {"pretrain.image_size": 48, "scorer.image_size": 32})
    assert pretrain_image_size(cfg) == 48
    assert pretrain_image_size(load_config("default")) == 256 and load_config("default").scorer.image_size == 160


def test_reuse_compares_the_effective_load_size(tiny_data: Path, tmp_path: Path) -> None:
    manifest = tiny_data / "split.json"
    size = load_config("smoke").scorer.image_size
    source = tmp_path / "src"
    pretrain_step(manifest, source, load_config("smoke", {"pretrain.epochs": 0}), progress=False)
    # the same views' source resolution, now set in pretrain, with the scorer reading another size: reusable
    same = load_config("smoke", {"pretrain.epochs": 0, "pretrain.image_size": size, "scorer.image_size": size // 2})
    reuse_pretraining(source, tmp_path / "a", same, manifest)
    assert (tmp_path / "a" / "encoder.pt").is_file()
    # the scorer's size changed and the pretraining would follow it: another pretraining, refused
    other = load_config("smoke", {"pretrain.epochs": 0, "scorer.image_size": size // 2})
    with pytest.raises(ValueError, match="pretrain"):
        reuse_pretraining(source, tmp_path / "b", other, manifest)


def test_demo_override_scores_at_the_demo_images_size_with_the_same_pretraining() -> None:
    from flows.cli import DEMO_DATA, DEMO_OVERRIDES
    from pipeline.config import parse_overrides

    cfg = load_config("default", parse_overrides(DEMO_OVERRIDES["default"]))
    assert cfg.scorer.image_size == DEMO_DATA["size"]
    assert pretrain_image_size(cfg) == pretrain_image_size(load_config("default"))
