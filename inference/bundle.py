"""Model bundles on disk: read, verify, describe.

A bundle is a folder written by `loupe export` (see `inference.export`):

    BUNDLE_DIR/bundle.json        manifest: format version, input spec, threshold, provenance,
                                  metrics at export, sha256 + size of every file below
    BUNDLE_DIR/model.onnx         the whole inspector, fp32 (the reference graph)
    BUNDLE_DIR/model.fp16.onnx    optional: encoder and search cross-term in fp16 (GPU, TensorRT)
    BUNDLE_DIR/model.int8.onnx    optional: encoder convolutions int8 (QDQ), CPU edge option
    BUNDLE_DIR/inspector.pt       the PyTorch inspector the graphs were exported from
    BUNDLE_DIR/model.<gpu>.trt<version>.engine   optional TensorRT engines (a cache, see below)
    BUNDLE_DIR/timing.<gpu>.trt<version>.cache   optional TensorRT timing cache (not verified: TensorRT checks it)

Verification happens before anything is loaded: an unknown format version, a file
listed in `files` that is missing, has another size or another sha256 raises
`BundleError` naming the file. TensorRT engines are caches built per GPU and
TensorRT version; each one is recorded with its sha256 under `engines` when it is
written, and verified when it is used (a mismatch is a `BundleError` too).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json_atomic

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "loupe-bundle"
#: Format versions this Loupe reads. Bump FORMAT_VERSION on incompatible changes to the layout or graphs.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
#: Model file of each precision.
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
INSPECTOR_COPY = "inspector.pt"
#: Keys every bundle.json has (documented in docs of `inference.export.export_bundle`).
REQUIRED_KEYS = (
    "format", "format_version", "loupe_version", "model_version", "created", "commit", "input", "outputs",
    "threshold", "data_fingerprint", "metrics", "models", "max_batch", "opset", "image_size", "bank_size",
    "files", "engines",
)
_BLOCK = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be used: missing, partial, tampered, or of an unknown format version."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """{"sha256", "bytes"} of a file, as bundle.json stores it."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


@dataclass(frozen=True)
class InputSpec:
    """What the graphs take: `name` uint8 [N, size, size, channels] (NHWC), raw 0..255 pixels.

    Frames of another size or channel count are refused with a clear error (the
    bundle never resizes or converts colour silently: the station's camera geometry
    is part of the model, and a silent resize hides a misconfigured station).
    """

    name: str
    size: int
    channels: int
    dtype: str = "uint8"
    layout: str = "NHWC"

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def spec(self) -> InputSpec:
        i = self.manifest["input"]
        return InputSpec(name=i["name"], size=int(i["size"]), channels=int(i["channels"]), dtype=i["dtype"], layout=i["layout"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def max_batch(self) -> int:
        return int(self.manifest["max_batch"])

    def model_path(self, precision: str = "fp32") -> Path:
        """Path of the graph of `precision` (fp32, fp16, int8); BundleError when the bundle has none."""
        if precision not in MODEL_FILES:
            raise BundleError(f"unknown precision {precision!r}; choose from {sorted(MODEL_FILES)}")
        name = self.manifest["models"].get(precision)
        if not name:
            raise BundleError(
                f"{self.path} has no {precision} model ({MODEL_FILES[precision]}); "
                f"re-export with `loupe export RUN_DIR --out {self.path} --precision {precision}`"
            )
        return self.path / name

    def has(self, precision: str) -> bool:
        return bool(self.manifest["models"].get(precision))


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """bundle.json of `bundle_dir`, format checked (files not verified)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a folder; pass a bundle folder written by `loupe export`")
    if not path.is_file():
        raise BundleError(f"{path} is missing: {bundle_dir} is not a Loupe model bundle (write one with `loupe export RUN_DIR --out {bundle_dir}`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is not readable JSON ({err}); the bundle is damaged, export it again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a Loupe bundle manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {BUNDLE_FORMAT!r})")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{path}: unknown bundle format version {version!r}; this Loupe reads format version(s) "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}. Export the bundle again with this Loupe, or upgrade Loupe."
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path} lacks required keys {missing}; the bundle is damaged or incomplete, export it again")
    return manifest


def verify_file(bundle_dir: Path, name: str, record: dict[str, Any], what: str = "file") -> None:
    """Check one listed file's presence, size and sha256; BundleError naming it otherwise."""
    path = bundle_dir / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"{bundle_dir / BUNDLE_FILE} lists {name!r}, which is outside the bundle; refusing it")
    if not path.is_file():
        raise BundleError(f"partial bundle: {what} {name} listed in {BUNDLE_FILE} is missing from {bundle_dir}; copy the whole bundle folder or export it again")
    size = os.path.getsize(path)
    if "bytes" in record and size != record["bytes"]:
        raise BundleError(f"{path} has {size} bytes, {BUNDLE_FILE} records {record['bytes']}: the file is truncated or was changed; export the bundle again")
    digest = sha256_file(path)
    if digest != record.get("sha256"):
        raise BundleError(f"{path} fails its sha256 check ({digest[:12]}... != recorded {str(record.get('sha256'))[:12]}...): the file was modified or damaged; export the bundle again")


def read_bundle(bundle_dir: str | Path, verify: bool = True) -> Bundle:
    """Read bundle.json and (by default) verify every file it lists. Raises BundleError; loads no model."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{bundle_dir / BUNDLE_FILE} lists no files; export the bundle again")
    for name in list(manifest["models"].values()) + [INSPECTOR_COPY]:
        if name and name not in files:
            raise BundleError(f"{bundle_dir / BUNDLE_FILE}: {name} is not covered by a sha256 in `files`; export the bundle again")
    if verify:
        for name, record in files.items():
            verify_file(bundle_dir, name, record)
    return Bundle(bundle_dir, manifest)


def is_bundle(path: str | Path) -> bool:
    """Whether `path` looks like a bundle folder (has bundle.json); nothing verified."""
    return (Path(path) / BUNDLE_FILE).is_file()


def record_engine(bundle_dir: str | Path, name: str, info: dict[str, Any]) -> None:
    """Add a freshly written TensorRT engine (sha256 + build info) to bundle.json's `engines` (atomic rewrite)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    manifest["engines"][name] = {**file_record(bundle_dir / name), **info}
    write_json_atomic(bundle_dir / BUNDLE_FILE, manifest)
