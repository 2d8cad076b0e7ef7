"""A content hash of a data set, to tie models and reports to the exact data they saw."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.data.errors import DataError
from pipeline.data.sample import Sample

_BLOCK = 1 << 20  # stream files in 1 MiB blocks: data sets don't fit in memory
_VERSION = b"loupe-data-fingerprint-v1\n"


def fingerprint(samples: list[Sample]) -> str:
    """Full sha256 hex over (name, label, class, mask name) entries and the bytes of every image and mask.

    Names are relative to the samples' common folder, so a moved copy of the data hashes the same;
    the order of `samples` doesn't matter; any changed byte, label, class or pairing does.
    """
    paths = [os.path.abspath(p) for s in samples for p in (s.image, s.mask) if p is not None]
    root = _common_root(paths)

    def name(path: Path | None) -> str:
        if path is None:
            return ""
        absolute = os.path.abspath(path)
        return Path(os.path.relpath(absolute, root)).as_posix() if root else Path(absolute).as_posix()

    entries = sorted(
        (((name(s.image), "" if s.label is None else str(s.label), s.defect_class or "", name(s.mask)), s) for s in samples),
        key=lambda entry: entry[0],  # Samples themselves aren't orderable
    )
    digest = hashlib.sha256(_VERSION)
    for key, sample in entries:
        # Length-prefixed JSON header so entry boundaries can't be confused.
        header = json.dumps(key).encode("utf-8")
        digest.update(len(header).to_bytes(8, "little") + header)
        _hash_file(digest, sample.image)
        if sample.mask is not None:
            _hash_file(digest, sample.mask)
    return digest.hexdigest()


def _common_root(paths: list[str]) -> str:
    """Common folder of all files' parents, or "" if there is none (e.g. different drives)."""
    if not paths:
        return ""
    try:
        return os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:
        return ""


def _hash_file(digest: Any, path: Path) -> None:
    """Size-prefixed file contents, streamed."""
    try:
        size = os.path.getsize(path)
        digest.update(size.to_bytes(8, "little"))
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path} to fingerprint the data ({exc}); fix or remove the sample") from exc
