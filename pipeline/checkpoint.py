"""Atomic checkpoint files: a dict of tensors, plain Python values and configs.

Never a pickled module: everything loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_open


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable Loupe checkpoint ({err}); re-run the step that writes it") from err
