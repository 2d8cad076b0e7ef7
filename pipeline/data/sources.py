"""Turning a data source (image folder, MVTec AD root, JSON/CSV manifest) into Samples."""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pipeline.data.errors import DataError
from pipeline.data.io import IMAGE_EXTENSIONS, read_image, read_mask
from pipeline.data.sample import Sample

Split = Literal["train", "test", "all"]

_SPLITS = ("train", "test", "all")
_LAYOUTS = (
    "supported layouts: a folder of images (unlabelled, so not for evaluation), "
    "an MVTec AD category root (train/good/, test/<kind>/, ground_truth/<kind>/<stem>_mask.png), "
    "or a manifest (.json list of [image, mask, label(, class)] rows or {\"train\": [...], \"test\": [...]}; "
    ".csv with columns image,mask,label,split(,class))"
)
_ROW_KEYS = {"image", "mask", "label", "class", "defect_class"}
_LIST_LIMIT = 20  # how many offending files/rows an error message spells out


def load_samples(source: str | Path, split: Split) -> list[Sample]:
    """Samples of `split` from a plain image folder, an MVTec AD root or a .json/.csv manifest.

    Raises DataError when the source is missing, has no images, references missing files,
    or has rows that don't fit the split (e.g. defects in train).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    root = _normalize(Path(source).expanduser())
    if not root.exists():
        raise DataError(f"data source {root} does not exist; check the path. {_LAYOUTS}")
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".json":
            samples = _load_json_manifest(root, split)
        elif suffix == ".csv":
            samples = _load_csv_manifest(root, split)
        else:
            raise DataError(f"data source {root} is a file but not a .json/.csv manifest; {_LAYOUTS}")
    elif (root / "train" / "good").is_dir() and (root / "test").is_dir():
        samples = _load_mvtec(root, split)
    else:
        samples = _load_folder(root, split)
    if not samples:
        raise DataError(f"no images found in {root} for split {split!r}; {_LAYOUTS}")
    return samples


def check_readable(samples: list[Sample], skip_bad: bool = False, channels: int = 1) -> list[Sample]:
    """Decode every image and mask (checking mask size); return the good samples in order.

    Bad samples raise one DataError listing all of them, or with skip_bad a warning listing
    every skipped file and its reason. Raises anyway if nothing readable is left.
    """
    good: list[Sample] = []
    problems: list[str] = []
    for sample in samples:
        try:
            image = read_image(sample.image, channels)
            if sample.mask is not None:
                read_mask(sample.mask, image.shape[:2], image_path=sample.image)
        except DataError as exc:
            problems.append(str(exc))
            continue
        good.append(sample)
    if not problems:
        return good
    listing = "\n".join(f"  - {problem}" for problem in problems)
    if not skip_bad:
        raise DataError(
            f"{len(problems)} of {len(samples)} samples cannot be read:\n{listing}\n"
            "fix or remove these files, or pass --skip-bad to skip them with a warning"
        )
    if not good:
        raise DataError(f"all {len(samples)} samples are unreadable, nothing left to use:\n{listing}")
    warnings.warn(f"skipping {len(problems)} of {len(samples)} unreadable samples (--skip-bad):\n{listing}", stacklevel=2)
    return good


# ----------------------------------------------------------------------------- folders


def _normalize(path: Path) -> Path:
    """Absolute and without '..' parts, but symlinks kept (names stay as the user wrote them)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted by relative path; follows symlinked folders once."""
    if not folder.is_dir():
        return []
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # symlink loop or the same folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
        if not recursive:
            dirnames[:] = []
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _load_folder(root: Path, split: Split) -> list[Sample]:
    """Unlabelled images: fine for training, never for evaluation."""
    if split == "test":
        raise DataError(
            f"{root} is a plain image folder without labels, so it cannot be used for evaluation (split 'test'); "
            "pass an MVTec AD root (test/good, test/<defect>, ground_truth/...) or a .json/.csv manifest with labels"
        )
    return [Sample(image=path) for path in _list_images(root)]


def _load_mvtec(root: Path, split: Split) -> list[Sample]:
    """MVTec AD category root: train/good, test/<kind>, ground_truth/<kind>/<stem>_mask.png."""
    samples: list[Sample] = []
    if split in ("train", "all"):
        good_dir = root / "train" / "good"
        stray = [p for p in _list_images(root / "train") if good_dir not in p.parents]
        if stray:
            raise DataError(
                f"MVTec layout {root}: {len(stray)} images in train/ outside train/good/ "
                f"({_first(stray)}); training uses good images only: move defects to test/<kind>/ or remove them"
            )
        samples += [Sample(image=p, mask=None, label=0, defect_class="good") for p in _list_images(good_dir)]
    if split in ("test", "all"):
        test_dir = root / "test"
        stray = _list_images(test_dir, recursive=False)
        if stray:
            raise DataError(
                f"MVTec layout {root}: {len(stray)} images directly in test/ ({_first(stray)}) have no label; "
                "move them into test/good/ or test/<defect kind>/"
            )
        for kind_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            kind = kind_dir.name
            for image in _list_images(kind_dir):
                if kind == "good":
                    samples.append(Sample(image=image, mask=None, label=0, defect_class="good"))
                else:
                    mask = _mvtec_mask(root, kind_dir, image)
                    samples.append(Sample(image=image, mask=mask, label=1, defect_class=kind))
    return samples


def _mvtec_mask(root: Path, kind_dir: Path, image: Path) -> Path | None:
    """ground_truth/<kind>/<sub>/<stem>_mask.png (other extensions tried too); None = image-level label."""
    relative = image.relative_to(kind_dir)
    folder = root / "ground_truth" / kind_dir.name / relative.parent
    for ext in (".png",) + tuple(e for e in IMAGE_EXTENSIONS if e != ".png"):
        candidate = folder / f"{image.stem}_mask{ext}"
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class _Row:
    """One manifest row as written, before paths are resolved."""

    where: str  # "train row 3" / "line 7", for error messages
    image: str
    mask: str | None
    label: int
    defect_class: str | None


def _load_json_manifest(manifest: Path, split: Split) -> list[Sample]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest {manifest} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix it") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {manifest} could not be read ({exc}); check the file") from exc

    if isinstance(data, list):
        rows = [_parse_json_row(manifest, f"row {i}", raw) for i, raw in enumerate(data, 1)]
        if split == "train":
            _require_good(manifest, rows, "a plain-list manifest used for training")
        return _to_samples(manifest, rows)

    if isinstance(data, dict):
        parts = [name for name in ("train", "test") if name in data]
        if not parts:
            raise DataError(f"manifest {manifest} is a JSON object without \"train\" or \"test\" lists; {_LAYOUTS}")
        wanted = ["train", "test"] if split == "all" else [split]
        if split != "all" and split not in data:
            raise DataError(f"manifest {manifest} has no \"{split}\" list (it has {parts}); add it or use another split")
        rows = []
        for name in wanted:
            if name not in data:
                continue
            if not isinstance(data[name], list):
                raise DataError(f"manifest {manifest}: \"{name}\" must be a list of rows, got {type(data[name]).__name__}")
            part = [_parse_json_row(manifest, f"{name} row {i}", raw) for i, raw in enumerate(data[name], 1)]
            if name == "train":
                _require_good(manifest, part, "its \"train\" list")
            rows += part
        return _to_samples(manifest, rows)

    raise DataError(f"manifest {manifest} must hold a JSON list or object, got {type(data).__name__}; {_LAYOUTS}")


def _parse_json_row(manifest: Path, where: str, raw: Any) -> _Row:
    """[image, mask, label(, class)] or {"image", "mask", "label", "class"}."""
    if isinstance(raw, (list, tuple)):
        if len(raw) not in (3, 4):
            raise DataError(f"manifest {manifest} {where}: expected [image, mask, label] or [image, mask, label, class], got {raw!r}")
        image, mask, label = raw[0], raw[1], raw[2]
        defect_class = raw[3] if len(raw) == 4 else None
    elif isinstance(raw, dict):
        unknown = sorted(set(raw) - _ROW_KEYS)
        if unknown:
            raise DataError(f"manifest {manifest} {where}: unknown keys {unknown}; allowed: image, mask, label, class")
        if "image" not in raw or "label" not in raw:
            raise DataError(f"manifest {manifest} {where}: needs at least \"image\" and \"label\", got {raw!r}")
        image, mask, label = raw["image"], raw.get("mask"), raw["label"]
        defect_class = raw.get("class", raw.get("defect_class"))
    else:
        raise DataError(f"manifest {manifest} {where}: expected a list or object, got {raw!r}")
    return _make_row(manifest, where, image, mask, label, defect_class)


def _load_csv_manifest(manifest: Path, split: Split) -> list[Sample]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DataError(f"manifest {manifest} is empty; it needs a header image,mask,label,split(,class)")
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
            missing = [c for c in ("image", "mask", "label", "split") if c not in reader.fieldnames]
            if missing:
                raise DataError(
                    f"manifest {manifest} lacks columns {missing} (header: {reader.fieldnames}); "
                    "the header must be image,mask,label,split with optional class"
                )
            train: list[_Row] = []
            test: list[_Row] = []
            for record in reader:
                where = f"line {reader.line_num}"
                if None in record or None in record.values():
                    raise DataError(f"manifest {manifest} {where}: wrong number of fields; every line needs one value per header column")
                part = record["split"].strip().lower()
                if part not in ("train", "test"):
                    raise DataError(f"manifest {manifest} {where}: split {record['split']!r} must be 'train' or 'test'")
                row = _make_row(manifest, where, record["image"], record["mask"], record["label"], record.get("class"))
                (train if part == "train" else test).append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"manifest {manifest} could not be read as CSV ({exc}); save it as UTF-8 CSV") from exc
    rows: list[_Row] = []
    if split in ("train", "all"):
        _require_good(manifest, train, "its train rows")
        rows += train
    if split in ("test", "all"):
        rows += test
    return _to_samples(manifest, rows)


def _make_row(manifest: Path, where: str, image: Any, mask: Any, label: Any, defect_class: Any) -> _Row:
    """Validate types and values of one row; fill in the defect class."""
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"manifest {manifest} {where}: image must be a non-empty path string, got {image!r}")
    if mask is not None and not isinstance(mask, str):
        raise DataError(f"manifest {manifest} {where}: mask must be a path string, null or \"\", got {mask!r}")
    if defect_class is not None and not isinstance(defect_class, str):
        raise DataError(f"manifest {manifest} {where}: class must be a string, got {defect_class!r}")
    image = image.strip()
    mask = (mask.strip() or None) if mask is not None else None
    value = _parse_label(manifest, where, label)
    name = (defect_class.strip() or None) if defect_class is not None else None
    if value == 0:
        if name not in (None, "good"):
            raise DataError(f"manifest {manifest} {where}: label 0 (good) but class {name!r}; good rows take class 'good' or none")
        name = "good"
    elif name == "good":
        raise DataError(f"manifest {manifest} {where}: label 1 (defect) but class 'good'; fix the label or the class")
    elif name is None:
        name = _class_from_path(manifest, image)
    return _Row(where=where, image=image, mask=mask, label=value, defect_class=name)


def _parse_label(manifest: Path, where: str, label: Any) -> int:
    """0/1 from bool, int, 0.0/1.0 or the strings "0"/"1"."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, (int, float)) and label in (0, 1):
        return int(label)
    if isinstance(label, str) and label.strip() in ("0", "1"):
        return int(label.strip())
    raise DataError(f"manifest {manifest} {where}: label must be 0 (good) or 1 (defect), got {label!r}")


# Folder names that say where an image sits, not what is wrong with it.
_GENERIC_FOLDERS = {"test", "train", "val", "valid", "validation", "images", "imgs", "img", "data", "defect", "defects", "bad"}


def _class_from_path(manifest: Path, written: str) -> str:
    """First non-generic folder of the image path as written ("MT_Blowhole/Imgs/x.jpg" -> "MT_Blowhole",
    "test/scratch/000.png" -> "scratch"), else "defect"."""
    path = PurePosixPath(written.replace("\\", "/"))
    if path.is_absolute():
        # Inside the manifest's folder: use the part relative to it; elsewhere the parent folder's name.
        try:
            path = PurePosixPath(Path(os.path.normpath(path)).relative_to(manifest.parent).as_posix())
        except ValueError:
            return path.parent.name or "defect"
    folders = [part for part in path.parts[:-1] if part not in (".", "..") and part.lower() not in _GENERIC_FOLDERS]
    return folders[0] if folders else "defect"


def _resolve(manifest: Path, written: str) -> Path:
    """Relative to the manifest's folder; absolute accepted; Windows separators tolerated."""
    candidates = [written]
    if "\\" in written and os.sep == "/":
        candidates.append(written.replace("\\", "/"))
    resolved = [_normalize(manifest.parent / Path(c).expanduser()) for c in candidates]
    for path in resolved:
        if path.exists():
            return path
    return resolved[-1]


def _to_samples(manifest: Path, rows: list[_Row]) -> list[Sample]:
    """Resolve paths; one DataError listing every referenced file that is missing."""
    samples: list[Sample] = []
    missing: list[str] = []
    for row in rows:
        image = _resolve(manifest, row.image)
        mask = _resolve(manifest, row.mask) if row.mask is not None else None
        if not image.is_file():
            missing.append(f"{row.where}: image {image}")
        if mask is not None and not mask.is_file():
            missing.append(f"{row.where}: mask {mask}")
        samples.append(Sample(image=image, mask=mask, label=row.label, defect_class=row.defect_class))
    if missing:
        shown = "\n".join(f"  - {item}" for item in missing[:_LIST_LIMIT])
        more = f"\n  ... and {len(missing) - _LIST_LIMIT} more" if len(missing) > _LIST_LIMIT else ""
        raise DataError(
            f"manifest {manifest} references {len(missing)} missing files "
            f"(paths are relative to {manifest.parent}):\n{shown}{more}\n"
            "fix the paths or remove those rows"
        )
    return samples


def _require_good(manifest: Path, rows: list[_Row], what: str) -> None:
    """Training is on good images only: every row must have label 0."""
    bad = [row for row in rows if row.label != 0]
    if bad:
        shown = ", ".join(f"{row.where} ({row.image})" for row in bad[:5])
        raise DataError(
            f"manifest {manifest}: {len(bad)} defect rows (label 1) in {what}, e.g. {shown}; "
            "training uses good images only: move defect rows to the test split "
            "(a {\"train\": [...], \"test\": [...]} object or the CSV split column) or remove them"
        )


def _first(paths: list[Path], limit: int = 5) -> str:
    """A few paths for an error message, plus how many more."""
    text = ", ".join(str(p) for p in paths[:limit])
    return text + (f", ... {len(paths) - limit} more" if len(paths) > limit else "")
