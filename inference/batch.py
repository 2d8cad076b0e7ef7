"""Batch inspection of image files with a bundle: one chunk of files -> one result per file.

Images are decoded and resized to the bundle's input size exactly as in training and
evaluation (`pipeline.data.tensors.load_images`: gray or colour as the bundle takes,
area filter when shrinking), then run through `inference.runtime.BundleInspector`.
A file that cannot be decoded gets an `error` instead of a score (never dropped).
Flagged files (is_defect) also carry their anomaly map and the decoded image at its own
size (what the results store keeps), so a chunk can run in another process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class FileResult:
    image: str
    score: float | None = None
    is_defect: bool | None = None
    error: str | None = None
    label: int | None = None  # ground truth when the data has it
    defect_class: str | None = None
    anomaly_map: np.ndarray | None = None  # float32 [S, S], flagged files only
    frame: np.ndarray | None = None  # uint8 [H, W] or [H, W, 3] as decoded, flagged files only
    record_id: str | None = None  # set when the result is written to the results store


def inspect_files(bundle_dir: str | Path, images: Sequence[str | Path], *, labels: Sequence[int | None] | None = None,
                  classes: Sequence[str | None] | None = None, runtime: str | None = None, batch_size: int = 16) -> list[FileResult]:
    """Score `images` with the bundle; returns one FileResult per image, in order."""
    from inference.runtime import BundleInspector
    from pipeline.data import DataError, Sample, read_image
    from pipeline.data.tensors import resize_image

    inspector = BundleInspector.load(bundle_dir, runtime=runtime)
    spec = inspector.spec
    labels = list(labels) if labels is not None else [None] * len(images)
    classes = list(classes) if classes is not None else [None] * len(images)
    results = [FileResult(image=str(p), label=lab, defect_class=cls) for p, lab, cls in zip(images, labels, classes)]
    decoded: list[tuple[int, np.ndarray]] = []
    for i, p in enumerate(images):
        try:
            decoded.append((i, read_image(Path(p), channels=spec.channels)))
        except DataError as err:
            results[i].error = str(err)
    for start in range(0, len(decoded), batch_size):
        part = decoded[start : start + batch_size]
        frames = np.stack([_to_hwc(resize_image(img, spec.size)) for _, img in part])
        r = inspector.run(frames)
        for (i, img), score, amap, flag in zip(part, r.score, r.anomaly_map, r.is_defect):
            res = results[i]
            res.score, res.is_defect = float(score), bool(flag)
            if flag:
                res.anomaly_map, res.frame = np.asarray(amap, np.float32), img
    return results


def _to_hwc(img: np.ndarray) -> np.ndarray:
    return img[..., None] if img.ndim == 2 else img
