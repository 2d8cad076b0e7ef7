"""Verdicts: give, undo (audit trail kept), history, exports, and the feedback manifest.

A verdict row is never changed except for `undone_at`; the standing verdict of a
record is its newest row with `undone_at IS NULL`. Exports:

- `verdict_rows`: every verdict (undone ones included, with `undone_at`) joined with
  its record: the audit trail, as CSV or JSON.
- `feedback_items`: one `pipeline.data.feedback.FeedbackItem` per record with a standing
  verdict (false alarm -> the good training set, defect -> the labelled test set),
  written by `write_feedback_manifest` in the format the training flow reads.
"""
from __future__ import annotations

import csv
import io
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from inference.review.models import VERDICTS, Verdict
from inference.store.models import Record, utcnow

MAX_CLASS_CHARS = 100
MAX_COMMENT_CHARS = 2000


class NothingToUndo(LookupError):
    """There is no standing verdict to undo."""


class UndoForbidden(PermissionError):
    """A reviewer tried to undo another reviewer's verdict (admins may)."""


def _clean(value: str | None, name: str, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long; keep it under {limit}")
    return value or None


def add_verdict(session: Session, record_id: str, verdict: str, reviewer: str, defect_class: str | None = None,
                comment: str | None = None) -> Verdict:
    """Store (and flush) a verdict; ValueError for an unknown record or verdict, or a class on a false alarm."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    defect_class = _clean(defect_class, "defect class", MAX_CLASS_CHARS)
    comment = _clean(comment, "comment", MAX_COMMENT_CHARS)
    if verdict == "false_alarm" and defect_class is not None:
        raise ValueError("a defect class goes with a 'defect' verdict; clear it for a false alarm")
    if session.get(Record, record_id) is None:
        raise LookupError(f"no flagged record {record_id!r}")
    row = Verdict(record_id=record_id, verdict=verdict, defect_class=defect_class, comment=comment, reviewer=reviewer,
                  created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def undo(session: Session, reviewer: str, is_admin: bool = False, record_id: str | None = None) -> Verdict:
    """Undo the standing verdict of `record_id`, or (without it) the reviewer's own latest standing verdict.

    Raises NothingToUndo when there is none, UndoForbidden when a reviewer targets someone
    else's verdict (admins may undo anyone's).
    """
    stmt = select(Verdict).where(Verdict.undone_at.is_(None))
    stmt = stmt.where(Verdict.record_id == record_id) if record_id is not None else stmt.where(Verdict.reviewer == reviewer)
    row = session.scalars(stmt.order_by(Verdict.id.desc()).limit(1)).first()
    if row is None:
        raise NothingToUndo("nothing to undo" + (f" on record {record_id}" if record_id else f" for {reviewer}"))
    if row.reviewer != reviewer and not is_admin:
        raise UndoForbidden(f"the verdict on {row.record_id} is {row.reviewer}'s; only they or an admin can undo it")
    row.undone_at = utcnow()
    session.flush()
    return row


def history(session: Session, record_id: str) -> list[Verdict]:
    """Every verdict on a record, newest first (undone ones included)."""
    return list(session.scalars(select(Verdict).where(Verdict.record_id == record_id).order_by(Verdict.id.desc())))


EXPORT_COLUMNS = ("verdict_id", "record_id", "verdict", "defect_class", "comment", "reviewer", "created_at", "undone_at",
                  "station", "model_version", "score", "threshold", "captured_at", "image_path")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def verdict_rows(session: Session, include_undone: bool = True) -> list[dict[str, Any]]:
    """Every verdict with its record's station, model, score and image, oldest first."""
    stmt = (select(Verdict, Record.station, Record.model_version, Record.score, Record.threshold, Record.captured_at,
                   Record.image_path)
            .join(Record, Record.id == Verdict.record_id).order_by(Verdict.id))
    if not include_undone:
        stmt = stmt.where(Verdict.undone_at.is_(None))
    out = []
    for v, station, model_version, score, threshold, captured_at, image_path in session.execute(stmt):
        out.append({
            "verdict_id": v.id, "record_id": v.record_id, "verdict": v.verdict, "defect_class": v.defect_class,
            "comment": v.comment, "reviewer": v.reviewer, "created_at": _iso(v.created_at), "undone_at": _iso(v.undone_at),
            "station": station, "model_version": model_version, "score": score, "threshold": threshold,
            "captured_at": _iso(captured_at), "image_path": image_path,
        })
    return out


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text with a header of EXPORT_COLUMNS (empty cells for None)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in EXPORT_COLUMNS})
    return buf.getvalue()


def standing_verdicts(session: Session) -> list[tuple[Verdict, Record]]:
    """(standing verdict, record) for every reviewed record, oldest verdict first."""
    latest = (select(func.max(Verdict.id)).where(Verdict.undone_at.is_(None)).group_by(Verdict.record_id)).scalar_subquery()
    stmt = select(Verdict, Record).join(Record, Record.id == Verdict.record_id).where(Verdict.id.in_(latest)).order_by(Verdict.id)
    return [(v, r) for v, r in session.execute(stmt)]


def feedback_items(session: Session, image_root: Path, relative_to: Path | None = None) -> list[Any]:
    """FeedbackItems of every record with a standing verdict; image paths absolute, or relative
    to the folder `relative_to` (the manifest's folder) when given."""
    from pipeline.data.feedback import FeedbackItem

    root = Path(image_root).resolve()

    def where(rel: str) -> str:
        path = root / rel
        return os.path.relpath(path, Path(relative_to).resolve()) if relative_to is not None else str(path)

    return [
        FeedbackItem(image=where(r.image_path), verdict=v.verdict, defect_class=v.defect_class, record_id=r.id,
                     station=r.station, model_version=r.model_version, score=float(r.score), reviewer=v.reviewer,
                     reviewed_at=v.created_at.isoformat(), comment=v.comment)
        for v, r in standing_verdicts(session)
    ]


def write_feedback_manifest(session: Session, image_root: Path, path: Path, product: str | None = None,
                            relative: bool = False) -> tuple[Path, int]:
    """Write the feedback manifest (atomically, by `write_feedback`); returns (path, number of items).

    Image paths are absolute, or relative to the manifest's folder with `relative`."""
    from pipeline.data.feedback import write_feedback

    items = feedback_items(session, image_root, Path(path).parent if relative else None)
    return write_feedback(path, items, product=product), len(items)
