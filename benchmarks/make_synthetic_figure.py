"""Render the README pictures of Loupe's synthetic data.

    python benchmarks/make_synthetic_figure.py [--texture brushed_metal] [--out docs]

Writes ``docs/synthetic_examples.png`` (3 good frames, then one frame per defect kind
with its mask outlined in red, and the same frames without outline underneath) and
``docs/synthetic_strip.png`` (a downscaled line-scan strip with defect outlines, plus
full-resolution crops around its defects).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.synthetic import DEFECTS, TEXTURES, add_defect, make_strip, make_surface  # noqa: E402

RED = (40, 40, 230)  # BGR


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def _outline(image: np.ndarray, mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """uint8 [H, W] image + bool mask -> uint8 [H, W, 3] with the mask contour in red."""
    out = _bgr(image)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, RED, thickness)
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Add a white caption band above a BGR tile."""
    band = np.full((22, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, tile])


def examples_grid(texture: str, seed: int = 0, size: int = 144, gap: int = 4) -> np.ndarray:
    """BGR uint8 grid: row 1 = 3 good frames + each defect with outline; row 2 = same, no outline."""
    top: list[np.ndarray] = []
    bottom: list[np.ndarray] = []
    for i in range(3):
        good = make_surface(np.random.default_rng([seed, 0, i]), texture, (size, size))
        top.append(_label(_bgr(good), f"good {i + 1}"))
        bottom.append(_label(_bgr(good), ""))
    for k, kind in enumerate(DEFECTS):
        rng = np.random.default_rng([seed, 1, k])
        image, mask = add_defect(rng, make_surface(rng, texture, (size, size)), kind)
        top.append(_label(_outline(image, mask), kind))
        bottom.append(_label(_bgr(image), ""))

    def row(tiles: list[np.ndarray]) -> np.ndarray:
        sep = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
        parts: list[np.ndarray] = []
        for t in tiles:
            parts += [t, sep]
        return np.hstack(parts[:-1])

    r1, r2 = row(top), row(bottom)
    return np.vstack([r1, np.full((gap, r1.shape[1], 3), 255, np.uint8), r2[22:]])


def strip_preview(texture: str, seed: int = 0, height: int = 256, width: int = 8192, scale: float = 0.25) -> np.ndarray:
    """BGR uint8: the strip downscaled in 2 rows with defects outlined in red, then a row
    of full-resolution 128 px crops around each defect (no outline)."""
    strip, mask = make_strip(np.random.default_rng(seed), texture, height, width, n_defects=6)
    small = cv2.resize(_outline(strip, mask, thickness=3), (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
    half = small.shape[1] // 2
    rows = [small[:, :half], small[:, half : 2 * half]]
    # One crop per defect: components of the mask after merging nearby pieces (crack branches).
    merged = cv2.dilate(mask.astype(np.uint8), np.ones((31, 31), np.uint8))
    n, _, stats, centroids = cv2.connectedComponentsWithStats(merged)
    crop, crops = min(128, height), []
    for cx, cy in sorted(centroids[1:].tolist()):
        x0 = int(np.clip(cx - crop / 2, 0, width - crop))
        y0 = int(np.clip(cy - crop / 2, 0, height - crop))
        crops += [_bgr(strip[y0 : y0 + crop, x0 : x0 + crop]), np.full((crop, 6, 3), 255, np.uint8)]
    if crops:
        row = np.hstack(crops[:-1])[:, :half]
        rows.append(np.pad(row, ((0, 0), (0, half - row.shape[1]), (0, 0)), constant_values=255))
    gap = np.full((6, half, 3), 255, np.uint8)
    out: list[np.ndarray] = []
    for r in rows:
        out += [r, gap]
    return np.vstack(out[:-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texture", default="brushed_metal", choices=TEXTURES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    png = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    cv2.imwrite(str(args.out / "synthetic_examples.png"), examples_grid(args.texture, args.seed), png)
    cv2.imwrite(str(args.out / "synthetic_strip.png"), strip_preview(args.texture, args.seed), png)
    for name in ("synthetic_examples.png", "synthetic_strip.png"):
        p = args.out / name
        print(f"{p}  {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
