"""`loupe` commands for live inspection on camera feeds (issue 6): inspect.

Registered on the main app by `flows.cli`; heavy imports stay inside the commands so
that `loupe --help` stays fast.
"""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `loupe` app."""
