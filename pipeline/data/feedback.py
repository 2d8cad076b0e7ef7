"""Feedback manifests: reviewers' verdicts on flagged images, fed back into training.

Written by the review app, read by the training flow (`loupe train --feedback FILE`).
JSON, written atomically::

    {"format": "loupe-feedback", "version": 1, "product": str | null, "created": ISO-8601 UTC str,
     "items": [{"image": str,            absolute, or relative to the manifest file
                "verdict": "false_alarm" | "defect",
                "defect_class": str | null, "record_id": str | null, "station": str | null,
                "model_version": str | null, "score": float | null,
                "reviewer": str, "reviewed_at": ISO-8601 str, "comment": str | null}]}

Use in training (`feedback_samples`): false alarms are good images, so they join the good
training set (label 0); confirmed defects join the labelled evaluation set (label 1, class
`defect_class` or "reviewed_defect", no pixel mask). `feedback_provenance` gives each
image's record id, reviewer, station and model version for the training run's records.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from pipeline.atomic import write_json_atomic
from pipeline.data.errors import DataError
from pipeline.data.sample import Sample

FEEDBACK_FORMAT = "loupe-feedback"
FEEDBACK_VERSION = 1
VERDICTS = ("false_alarm", "defect")
#: Class of a confirmed defect whose reviewer gave none.
DEFAULT_DEFECT_CLASS = "reviewed_defect"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _reviewer() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


@dataclass(frozen=True)
class FeedbackItem:
    """One reviewed image. `image` is absolute or relative to the manifest file."""

    image: str
    verdict: str  # "false_alarm" | "defect"
    defect_class: str | None = None
    record_id: str | None = None
    station: str | None = None
    model_version: str | None = None
    score: float | None = None
    reviewer: str = field(default_factory=_reviewer)
    reviewed_at: str = field(default_factory=_now)
    comment: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image, Path):
            object.__setattr__(self, "image", str(self.image))
        problems = _item_problems(asdict(self))
        if problems:
            raise ValueError(f"invalid feedback item for {self.image!r}: {'; '.join(problems)}")


_OPTIONAL_STR = ("defect_class", "record_id", "station", "model_version", "comment")


def _item_problems(raw: dict[str, Any]) -> list[str]:
    """What is wrong with one item dict (empty list: fine)."""
    problems = []
    if not isinstance(raw.get("image"), str) or not raw["image"].strip():
        problems.append(f"image must be a non-empty path string, got {raw.get('image')!r}")
    if raw.get("verdict") not in VERDICTS:
        problems.append(f"verdict must be one of {VERDICTS}, got {raw.get('verdict')!r}")
    if not isinstance(raw.get("reviewer"), str) or not raw["reviewer"].strip():
        problems.append(f"reviewer must be a non-empty string, got {raw.get('reviewer')!r}")
    at = raw.get("reviewed_at")
    try:
        datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        if not isinstance(at, str):
            raise ValueError
    except ValueError:
        problems.append(f"reviewed_at must be an ISO-8601 time string, got {at!r}")
    for key in _OPTIONAL_STR:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            problems.append(f"{key} must be a string or null, got {raw[key]!r}")
    score = raw.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        problems.append(f"score must be a finite number or null, got {score!r}")
    if raw.get("verdict") == "false_alarm" and raw.get("defect_class") not in (None, "good"):
        problems.append(f"a false_alarm has no defect class, got {raw.get('defect_class')!r}")
    return problems


def write_feedback(path: str | Path, items: Iterable[FeedbackItem], product: str | None = None) -> Path:
    """Write a feedback manifest atomically; returns its path."""
    items = list(items)
    for i, item in enumerate(items):
        if not isinstance(item, FeedbackItem):
            raise TypeError(f"feedback item {i} is a {type(item).__name__}, expected FeedbackItem")
    doc = {"format": FEEDBACK_FORMAT, "version": FEEDBACK_VERSION, "product": product, "created": _now(),
           "items": [asdict(item) for item in items]}
    return write_json_atomic(path, doc)


def _read_doc(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"feedback manifest {path} does not exist; pass a file written by the review app (`loupe review export`)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"feedback manifest {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix or re-export it") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"feedback manifest {path} could not be read ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FEEDBACK_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{path} is not a Loupe feedback manifest (format {got!r}, expected {FEEDBACK_FORMAT!r})")
    if doc.get("version") != FEEDBACK_VERSION:
        raise DataError(f"{path}: feedback manifest version {doc.get('version')!r} is not supported (this Loupe reads version {FEEDBACK_VERSION}); "
                        "re-export it with this Loupe or upgrade")
    if not isinstance(doc.get("items"), list):
        raise DataError(f"{path}: \"items\" must be a list of reviewed images")
    return doc


def read_feedback(path: str | Path) -> list[FeedbackItem]:
    """Items of a feedback manifest, image paths made absolute (relative ones are relative to the manifest).

    Raises DataError naming the file and every bad item.
    """
    path = Path(path).expanduser().resolve()
    doc = _read_doc(path)
    names = {f.name for f in fields(FeedbackItem)}
    items, problems = [], []
    for i, raw in enumerate(doc["items"], 1):
        if not isinstance(raw, dict):
            problems.append(f"item {i}: expected an object, got {raw!r}")
            continue
        unknown = sorted(set(raw) - names)
        missing = sorted({"image", "verdict", "reviewer", "reviewed_at"} - set(raw))
        bad = _item_problems(raw) if not missing else []
        if unknown or missing or bad:
            what = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else []) + bad
            problems.append(f"item {i} ({raw.get('image')!r}): {'; '.join(what)}")
            continue
        image = Path(raw["image"]).expanduser()
        raw = {**raw, "image": str(image if image.is_absolute() else (path.parent / image).resolve())}
        items.append(FeedbackItem(**raw))
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"feedback manifest {path} has {len(problems)} bad item(s):\n{listing}\nfix or re-export the manifest")
    return items


def _dedupe(path: Path, items: list[FeedbackItem]) -> list[FeedbackItem]:
    """One item per image; conflicting verdicts on one image are an error, repeats a warning."""
    by_image: dict[str, FeedbackItem] = {}
    conflicts, repeats = [], 0
    for item in items:
        prev = by_image.get(item.image)
        if prev is None:
            by_image[item.image] = item
        elif (prev.verdict, prev.defect_class) != (item.verdict, item.defect_class):
            conflicts.append(f"{item.image}: {prev.verdict}/{prev.defect_class} vs {item.verdict}/{item.defect_class}")
        else:
            repeats += 1
    if conflicts:
        raise DataError(f"feedback manifest {path} gives conflicting verdicts for {len(conflicts)} image(s):\n"
                        + "\n".join(f"  - {c}" for c in conflicts[:20]) + "\nkeep one verdict per image")
    if repeats:
        warnings.warn(f"feedback manifest {path}: {repeats} repeated item(s) with the same verdict, used once")
    return list(by_image.values())


def feedback_samples(path: str | Path) -> tuple[list[Sample], list[Sample]]:
    """(good training samples from false alarms, labelled test samples from confirmed defects).

    Every referenced image must exist (one DataError lists the missing ones).
    """
    path = Path(path).expanduser().resolve()
    items = _dedupe(path, read_feedback(path))
    missing = [it.image for it in items if not Path(it.image).is_file()]
    if missing:
        raise DataError(f"feedback manifest {path} references {len(missing)} missing image(s):\n"
                        + "\n".join(f"  - {m}" for m in missing[:20]) + "\nrestore them or remove those items")
    good = [Sample(image=Path(it.image), mask=None, label=0, defect_class="good") for it in items if it.verdict == "false_alarm"]
    defects = [Sample(image=Path(it.image), mask=None, label=1, defect_class=it.defect_class or DEFAULT_DEFECT_CLASS)
               for it in items if it.verdict == "defect"]
    return good, defects


def feedback_product(path: str | Path) -> str | None:
    """The product a feedback manifest was written for (None: not recorded)."""
    product = _read_doc(Path(path).expanduser().resolve()).get("product")
    return product if isinstance(product, str) else None


def feedback_provenance(path: str | Path) -> list[dict[str, Any]]:
    """Per reviewed image: its manifest, verdict, record id, station, model version, reviewer and time (for run records)."""
    path = Path(path).expanduser().resolve()
    return [{"manifest": str(path), **asdict(it)} for it in _dedupe(path, read_feedback(path))]
