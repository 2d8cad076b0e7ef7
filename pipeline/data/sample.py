"""One image with its (optional) ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """An image plus its pixel mask, image-level label and defect class.

    label: 0 good, 1 defect, None unknown (unlabelled folder).
    defect_class: "good" for label 0, the class name for defects, None if unknown.
    """

    image: Path  # absolute path
    mask: Path | None = None  # absolute path; None = image-level label only, or good
    label: int | None = None
    defect_class: str | None = None
