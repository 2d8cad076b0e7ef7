"""Reading images and masks, and writing images atomically."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import atomic_open
from pipeline.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _decode(path: Path, what: str) -> np.ndarray:
    """Decode a file as-is (any depth/channels); DataError naming the path on failure."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; fix the path or remove the entry")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file; point to an image file")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty (0 bytes); re-export or remove it")
    try:
        # np.fromfile + imdecode works for non-ASCII paths, where cv2.imread fails on some platforms.
        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except (cv2.error, OSError, ValueError) as exc:
        raise DataError(f"{what} {path} could not be read ({exc}); re-export it as PNG/JPEG or remove it") from exc
    if image is None:
        raise DataError(
            f"{what} {path} is not a decodable image (corrupt or unsupported format); "
            f"re-export it as one of {', '.join(IMAGE_EXTENSIONS)} or remove it"
        )
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"{what} {path} has zero size {image.shape}; re-export or remove it")
    return image


def _to_uint8(image: np.ndarray, path: Path, what: str) -> np.ndarray:
    """8-bit unchanged; 16-bit scaled by 1/257 with rounding (65535 -> 255)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DataError(f"{what} {path} has unsupported pixel type {image.dtype}; convert it to 8- or 16-bit unsigned")


def _color_planes(image: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Drop alpha: returns [H, W] gray or [H, W, 3] BGR."""
    if image.ndim == 2:
        return image
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            return image[:, :, 0]
        if channels == 2:  # gray + alpha
            return image[:, :, 0]
        if channels == 3:
            return image
        if channels == 4:  # BGRA
            return image[:, :, :3]
    raise DataError(f"{what} {path} has unsupported shape {image.shape}; save it as gray, RGB or RGBA")


def read_image(path: Path, channels: int = 1) -> np.ndarray:
    """uint8 [H, W] (channels=1, colour converted to gray) or uint8 [H, W, 3] RGB (channels=3).

    Raises DataError naming the path when the file is missing, empty, not decodable or zero-sized.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    image = _color_planes(_to_uint8(_decode(path, "image"), path, "image"), path, "image")
    if channels == 1:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def read_mask(path: Path | None, shape: tuple[int, int], *, image_path: Path | None = None) -> np.ndarray:
    """bool [H, W]; None -> all False of `shape`.

    Binarized at > 127 (real masks have anti-aliased edges); colour masks: any channel > 127.
    A mask whose size differs from `shape` raises DataError; `image_path`, if given, is named too.
    """
    height, width = int(shape[0]), int(shape[1])
    if path is None:
        return np.zeros((height, width), dtype=bool)
    path = Path(path)
    mask = _color_planes(_to_uint8(_decode(path, "mask"), path, "mask"), path, "mask")
    binary = mask > 127
    if binary.ndim == 3:
        binary = binary.any(axis=2)
    if binary.shape != (height, width):
        image_part = f"its image {image_path}" if image_path is not None else "its image"
        raise DataError(
            f"mask {path} is {binary.shape[1]}x{binary.shape[0]} (WxH) but {image_part} is {width}x{height}; "
            "fix the image/mask pairing or resize the mask to the image size (nearest-neighbour)"
        )
    return binary


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Encode by the path's extension into a temp file in the same folder, then os.replace.

    3-channel input is taken as RGB (what read_image returns), 4-channel as RGBA;
    bool input is written as 0/255. Creates parent dirs.
    """
    path = Path(path)
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, buffer = False, None
    try:
        ok, buffer = cv2.imencode(path.suffix, array)
    except cv2.error:  # unknown extension or unsupported dtype/channels
        pass
    if not ok or buffer is None:
        raise DataError(
            f"could not encode an image of shape {array.shape} dtype {array.dtype} as {path.suffix!r} for {path}; "
            f"use one of {', '.join(IMAGE_EXTENSIONS)} and uint8 data"
        )
    with atomic_open(path) as handle:
        handle.write(buffer.tobytes())
