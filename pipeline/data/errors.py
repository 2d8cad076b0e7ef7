"""The one exception type for bad input data."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; message names the file(s) and the fix."""
