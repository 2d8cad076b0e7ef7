"""`loupe` commands for the review app and its users (issue 7): review, users.

Registered on the main app by `flows.cli`; heavy imports stay inside the commands so
that `loupe --help` stays fast.
"""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `loupe` app."""
