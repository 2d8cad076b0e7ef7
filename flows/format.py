"""Number formatting shared by the `loupe` commands' human output."""
from __future__ import annotations

from typing import Any


def fmt(value: Any, percent: bool = False, missing: str = "n/a") -> str:
    """A metric for people: floats to 4 decimals (or a percentage), None as `missing`."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent else f"{value:.4f}"
    return str(value)
