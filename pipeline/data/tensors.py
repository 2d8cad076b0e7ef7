"""Decoded, resized image and mask tensors for training and evaluation.

Everything downstream works on one square size S (the scorer's input), so images
are decoded once, resized, and kept as uint8 (762 MTD images at 256 px: 50 MB).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.io import read_image, read_mask
from pipeline.data.sample import Sample


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] -> [size, size(, C)]; area filter when shrinking (no aliasing)."""
    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def load_images(samples: list[Sample], size: int, channels: int = 1, progress: bool = False) -> torch.Tensor:
    """Decode and resize -> uint8 [N, C, size, size]."""
    out = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    for i, s in enumerate(tqdm(samples, desc="loading images", disable=not progress, leave=False)):
        img = resize_image(read_image(s.image, channels=channels), size)
        out[i] = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    return torch.from_numpy(out)


def load_masks(samples: list[Sample], size: int) -> np.ndarray:
    """Masks at the evaluation size -> bool [N, size, size] (all False where a sample has none).

    Nearest-neighbour resizing keeps masks binary; the mask's size is checked
    against its image first, so a mismatched mask is an error, not a silent stretch.
    """
    out = np.zeros((len(samples), size, size), dtype=bool)
    for i, s in enumerate(samples):
        if s.mask is None:
            continue
        h, w = read_image(s.image).shape[:2]
        m = read_mask(s.mask, (h, w), image_path=s.image)
        out[i] = cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return out
