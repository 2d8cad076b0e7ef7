"""Several data sources plus reviewer feedback -> one validated manifest for a training run.

The training flow takes a list of sources (image folders, MVTec roots, JSON/CSV
manifests) and feedback manifests (`pipeline.data.feedback`); the pipeline steps take
one data path. `combine_sources` validates everything (every image decodes; one error
lists every bad file, or `skip_bad` skips them with a warning), and writes one JSON
manifest `{"train": [[image, null, 0], ...], "test": [[image, mask, label, class], ...]}`
with absolute paths, named by its content hash, plus a provenance file next to it that
says where every row came from.

Which rows a source contributes: its `train` rows (good images) if it has a train split,
and its labelled `test` rows if it has a test split (MVTec roots, JSON manifests with a
"test" list, CSV manifests with test rows). Plain image folders and plain-list JSON
manifests are training data only. Feedback: false alarms join `train`, confirmed defects
join `test` (label 1, no mask).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.atomic import write_json_atomic
from pipeline.data.errors import DataError
from pipeline.data.feedback import feedback_provenance, feedback_samples
from pipeline.data.fingerprint import fingerprint
from pipeline.data.sample import Sample
from pipeline.data.sources import check_readable, load_samples


@dataclass
class CombinedData:
    """The combined manifest and what is in it."""

    manifest: Path
    provenance: Path
    n_train: int
    n_test_good: int
    n_test_defect: int
    train_fingerprint: str  # the same value pretrain_step/fit_step compute for the manifest's train rows
    test_fingerprint: str | None
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """Whether the test rows can measure AUROC (both good and defective images)."""
        return self.n_test_good > 0 and self.n_test_defect > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(manifest=str(self.manifest), provenance=str(self.provenance), labelled=self.labelled)
        return d


def _has_test_split(source: Path) -> bool:
    if source.is_dir():
        return (source / "train" / "good").is_dir() and (source / "test").is_dir()
    if source.suffix.lower() == ".json":
        try:
            return isinstance(doc := json.loads(source.read_text(encoding="utf-8-sig")), dict) and "test" in doc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False  # load_samples reports the bad file properly
    return source.suffix.lower() == ".csv"


def _has_train_split(source: Path) -> bool:
    if source.is_file() and source.suffix.lower() == ".json":
        try:
            doc = json.loads(source.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return True  # let load_samples raise the clear error
        return not isinstance(doc, dict) or "train" in doc
    return True


def _load_or_empty(source: Path, split: str) -> list[Sample]:
    try:
        return load_samples(source, split)  # type: ignore[arg-type]
    except DataError as err:
        if "no images found" in str(err) and source.suffix.lower() == ".csv":
            return []  # a CSV manifest with only the other split's rows
        raise


def combine_sources(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    feedback: Sequence[str | Path] = (),
    channels: int = 1,
    skip_bad: bool = False,
) -> CombinedData:
    """Validate and merge data sources and feedback into `out_dir/<hash>.json` (+ `<hash>.provenance.json`)."""
    if not sources:
        raise DataError("no data sources given; pass at least one image folder, MVTec root or manifest")
    train: list[Sample] = []
    test: list[Sample] = []
    origin: dict[Path, str] = {}
    described: list[dict[str, Any]] = []
    for raw in sources:
        src = Path(raw).expanduser().resolve()
        if not src.exists():
            raise DataError(f"data source {src} does not exist; check the path")
        tr = _load_or_empty(src, "train") if _has_train_split(src) else []
        te = _load_or_empty(src, "test") if _has_test_split(src) else []
        for s in tr + te:
            origin.setdefault(s.image, str(src))
        train += tr
        test += te
        described.append({"source": str(src), "train": len(tr), "test": len(te)})
    fb_prov: list[dict[str, Any]] = []
    for raw in feedback:
        good, defects = feedback_samples(raw)
        for s in good + defects:
            origin.setdefault(s.image, f"feedback:{Path(raw).expanduser().resolve()}")
        train += good
        test += defects
        fb_prov += feedback_provenance(raw)
        described.append({"feedback": str(Path(raw).expanduser().resolve()), "train": len(good), "test": len(defects)})

    # As the manifest will read back: good training rows (a plain folder's images have no label yet).
    train = [Sample(image=s.image, mask=None, label=0, defect_class="good") for s in train]
    train, test = _dedupe(train, "train"), _dedupe(test, "test")
    leak = sorted({s.image for s in train} & {s.image for s in test})
    if leak:
        raise DataError(f"{len(leak)} image(s) are both training and test data, e.g. {', '.join(map(str, leak[:5]))}; "
                        "a test image must never be trained on: remove it from one of the sources")
    if not train:
        raise DataError(f"no good training images in {', '.join(map(str, sources))}; give at least one source with training images")
    train = check_readable(train, skip_bad=skip_bad, channels=channels)
    if test:
        test = check_readable(test, skip_bad=skip_bad, channels=channels)

    doc: dict[str, Any] = {"description": "combined by pipeline.data.combine for a training run",
                           "train": [[str(s.image), None, 0] for s in train]}
    if test:
        doc["test"] = [[str(s.image), str(s.mask) if s.mask else None, s.label, s.defect_class] for s in test]
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = Path(out_dir)
    manifest = write_json_atomic(out_dir / f"data-{key}.json", doc)
    rows = [{"image": str(s.image), "split": split, "label": s.label, "class": s.defect_class, "from": origin.get(s.image)}
            for split, samples in (("train", train), ("test", test)) for s in samples]
    provenance = write_json_atomic(out_dir / f"data-{key}.provenance.json", {"sources": described, "feedback": fb_prov, "rows": rows})
    return CombinedData(
        manifest=manifest, provenance=provenance, n_train=len(train),
        n_test_good=sum(1 for s in test if s.label == 0), n_test_defect=sum(1 for s in test if s.label == 1),
        train_fingerprint=fingerprint(train), test_fingerprint=fingerprint(test) if test else None, sources=described,
    )


def _dedupe(samples: list[Sample], split: str) -> list[Sample]:
    """One row per image; the same image twice with another label/mask/class is an error."""
    seen: dict[Path, Sample] = {}
    conflicts = []
    for s in samples:
        prev = seen.get(s.image)
        if prev is None:
            seen[s.image] = s
        elif prev != s:
            conflicts.append(f"{s.image}: {prev.label}/{prev.defect_class} vs {s.label}/{s.defect_class}")
    if conflicts:
        raise DataError(f"{len(conflicts)} {split} image(s) appear in several sources with different labels:\n"
                        + "\n".join(f"  - {c}" for c in conflicts[:20]) + "\nkeep one label per image")
    if len(seen) < len(samples):
        warnings.warn(f"{len(samples) - len(seen)} {split} image(s) appear in more than one source; each is used once")
    return list(seen.values())
