"""The review queue: filtered, keyset-paginated reads of flagged records with their status.

Pagination is by seek, not OFFSET: a page is "the next `limit` records after this
cursor" in the sort order, where the cursor is the sort key of the last record shown
(`(captured_at, id)` for newest-first, `(score, id)` for highest-score-first). The
composite indexes `ix_records_captured_at_id` and `ix_records_score_id` (migration
0002) let the database read a page straight off the index, so the first and the
thousandth page cost the same.

A record's status is its latest verdict that is not undone ("defect" or
"false_alarm"), or "unreviewed" when there is none.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from inference.review.models import STATUSES, UNREVIEWED, Verdict
from inference.store.models import Record

SORTS: tuple[str, ...] = ("newest", "score")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def _parse_time(value: str | None, name: str) -> datetime | None:
    """ISO-8601 (a `datetime-local` input gives 2026-11-29T16:05) -> aware UTC; naive means UTC."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an ISO-8601 time such as 2026-11-29T16:05") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


@dataclass(frozen=True)
class QueueFilter:
    """What the reviewer selected: filters and sort order (from query parameters)."""

    station: str | None = None
    model_version: str | None = None
    status: str | None = None  # None: all; else one of STATUSES
    since: datetime | None = None
    until: datetime | None = None
    sort: str = "newest"

    @classmethod
    def parse(cls, station: str | None = None, model_version: str | None = None, status: str | None = None,
              since: str | None = None, until: str | None = None, sort: str | None = None) -> "QueueFilter":
        """Validate raw query-parameter strings; ValueError naming the bad parameter."""
        if status not in (None, "", *STATUSES):
            raise ValueError(f"status={status!r}: use one of {', '.join(STATUSES)} (or leave it empty for all)")
        if sort not in (None, "", *SORTS):
            raise ValueError(f"sort={sort!r}: use one of {', '.join(SORTS)}")
        return cls(station=station or None, model_version=model_version or None, status=status or None,
                   since=_parse_time(since, "since"), until=_parse_time(until, "until"), sort=sort or "newest")

    def params(self, **extra: Any) -> dict[str, str]:
        """The non-default filters as query parameters (plus `extra` where not None)."""
        out: dict[str, str] = {}
        for key in ("station", "model_version", "status"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.strftime("%Y-%m-%dT%H:%M:%S")
        if self.sort != "newest":
            out["sort"] = self.sort
        out.update({k: str(v) for k, v in extra.items() if v is not None})
        return out

    def query(self, **extra: Any) -> str:
        """`params` as a query string with a leading '?', or '' when there is nothing to say."""
        params = self.params(**extra)
        return "?" + urlencode(params) if params else ""

    def input_value(self, key: str) -> str:
        """A time filter as a `datetime-local` input value."""
        value = getattr(self, key)
        return value.strftime("%Y-%m-%dT%H:%M") if value is not None else ""


def status_expr() -> Any:
    """Correlated scalar subquery: the record's standing verdict, NULL when unreviewed."""
    return (
        select(Verdict.verdict)
        .where(Verdict.record_id == Record.id, Verdict.undone_at.is_(None))
        .order_by(Verdict.id.desc())
        .limit(1)
        .correlate(Record)
        .scalar_subquery()
    )


def standing_conditions() -> list[ColumnElement[bool]]:
    """Conditions on `Verdict` that keep only standing verdicts (not undone, no newer standing one)."""
    newer = aliased(Verdict)
    superseded = exists().where(newer.record_id == Verdict.record_id, newer.undone_at.is_(None), newer.id > Verdict.id)
    return [Verdict.undone_at.is_(None), ~superseded]


def _conditions(f: QueueFilter, with_status: bool = True) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if f.station:
        conds.append(Record.station == f.station)
    if f.model_version:
        conds.append(Record.model_version == f.model_version)
    if f.since is not None:
        conds.append(Record.captured_at >= f.since)
    if f.until is not None:
        conds.append(Record.captured_at < f.until)
    if with_status and f.status:
        standing = exists().where(Verdict.record_id == Record.id, Verdict.undone_at.is_(None))
        conds.append(~standing if f.status == UNREVIEWED else status_expr() == f.status)
    return conds


def _key_column(sort: str) -> Any:
    return Record.score if sort == "score" else Record.captured_at


def _key_of(row: Any, sort: str) -> tuple[Any, str]:
    return (row.score if sort == "score" else row.captured_at, row.id)


def encode_cursor(key: tuple[Any, str]) -> str:
    """Opaque URL-safe cursor for a sort key (a float score or a datetime, and the record id)."""
    first = key[0].isoformat() if isinstance(key[0], datetime) else float(key[0])
    return base64.urlsafe_b64encode(json.dumps([first, key[1]]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    """Inverse of `encode_cursor`; ValueError for a cursor that is not one of ours."""
    try:
        first, rid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if sort == "score":
            return float(first), str(rid)
        return _parse_time(str(first), "cursor"), str(rid)
    except (ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"bad page cursor {cursor!r}; start again from the first page") from exc


def _after(sort: str, key: tuple[Any, str]) -> ColumnElement[bool]:
    """Rows after `key` in descending order. Written as `k <= c AND (k < c OR id < i)` so that
    the index on (k, id) gives a range scan on every database."""
    col = _key_column(sort)
    return and_(col <= key[0], or_(col < key[0], Record.id < key[1]))


def _before(sort: str, key: tuple[Any, str]) -> ColumnElement[bool]:
    col = _key_column(sort)
    return and_(col >= key[0], or_(col > key[0], Record.id > key[1]))


def _order(sort: str, descending: bool = True) -> list[Any]:
    col = _key_column(sort)
    return [col.desc(), Record.id.desc()] if descending else [col.asc(), Record.id.asc()]


@dataclass
class QueueRow:
    """One record as the queue shows it."""

    id: str
    captured_at: datetime
    station: str
    source: str
    model_version: str
    score: float
    threshold: float
    is_defect: bool
    image_path: str
    map_path: str
    overlay_path: str
    width: int
    height: int
    frame_index: int
    run_id: str
    status: str

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["captured_at"] = self.captured_at.isoformat()
        return out


_ROW_COLUMNS = (Record.id, Record.captured_at, Record.station, Record.source, Record.model_version, Record.score,
                Record.threshold, Record.is_defect, Record.image_path, Record.map_path, Record.overlay_path,
                Record.width, Record.height, Record.frame_index, Record.run_id)


def _rows(result: Any) -> list[QueueRow]:
    return [QueueRow(**{**row._asdict(), "status": row.status or UNREVIEWED}) for row in result]


@dataclass
class QueuePage:
    """One page of the queue and the cursors around it."""

    rows: list[QueueRow]
    next_cursor: str | None  # older / lower score
    prev_cursor: str | None  # newer / higher score
    filter: QueueFilter = field(default_factory=QueueFilter)


def queue_page(session: Session, f: QueueFilter, after: str | None = None, before: str | None = None,
               limit: int = DEFAULT_LIMIT) -> QueuePage:
    """The page after cursor `after` (or before cursor `before`, or the first page)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit={limit}: use 1 to {MAX_LIMIT}")
    conds = _conditions(f)
    stmt = select(*_ROW_COLUMNS, status_expr().label("status"))
    if before:
        key = decode_cursor(before, f.sort)
        stmt = stmt.where(*conds, _before(f.sort, key)).order_by(*_order(f.sort, descending=False)).limit(limit + 1)
        rows = _rows(session.execute(stmt))
        more_before = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        prev_cursor = encode_cursor(_key_of(rows[0], f.sort)) if rows and more_before else None
        next_cursor = encode_cursor(_key_of(rows[-1], f.sort)) if rows else None
        return QueuePage(rows, next_cursor, prev_cursor, f)
    if after:
        conds.append(_after(f.sort, decode_cursor(after, f.sort)))
    stmt = stmt.where(*conds).order_by(*_order(f.sort)).limit(limit + 1)
    rows = _rows(session.execute(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(_key_of(rows[-1], f.sort)) if rows and more else None
    prev_cursor = encode_cursor(_key_of(rows[0], f.sort)) if rows and after else None
    return QueuePage(rows, next_cursor, prev_cursor, f)


def queue_counts(session: Session, f: QueueFilter) -> dict[str, int]:
    """Records matching the filters other than status, per status, plus "all".

    Counted from the verdicts side (one row per reviewed record) rather than with the
    per-record status subquery, so the cost grows with the reviewed records; unreviewed
    is the rest.
    """
    conds = _conditions(f, with_status=False)
    total = session.scalar(select(func.count()).select_from(Record).where(*conds)) or 0
    stmt = select(Verdict.verdict, func.count()).where(*standing_conditions())
    if conds:
        stmt = stmt.join(Record, Record.id == Verdict.record_id).where(*conds)
    counts = {status: 0 for status in STATUSES}
    for verdict, n in session.execute(stmt.group_by(Verdict.verdict)):
        counts[verdict] = n
    counts[UNREVIEWED] = total - sum(counts[v] for v in STATUSES if v != UNREVIEWED)
    counts["all"] = total
    return counts


def filter_choices(session: Session) -> dict[str, list[str]]:
    """The stations and model versions present (for the filter drop-downs)."""
    return {
        "stations": list(session.scalars(select(Record.station).distinct().order_by(Record.station))),
        "model_versions": list(session.scalars(select(Record.model_version).distinct().order_by(Record.model_version))),
    }


def get_row(session: Session, record_id: str) -> QueueRow | None:
    """One record with its status, or None."""
    stmt = select(*_ROW_COLUMNS, status_expr().label("status")).where(Record.id == record_id)
    rows = _rows(session.execute(stmt))
    return rows[0] if rows else None


def neighbours(session: Session, row: QueueRow, f: QueueFilter) -> tuple[str | None, str | None]:
    """Ids of the previous (newer / higher score) and next record around `row` in the filtered queue."""
    key = _key_of(row, f.sort)
    conds = _conditions(f)
    prev_id = session.scalars(select(Record.id).where(*conds, _before(f.sort, key))
                              .order_by(*_order(f.sort, descending=False)).limit(1)).first()
    next_id = session.scalars(select(Record.id).where(*conds, _after(f.sort, key)).order_by(*_order(f.sort)).limit(1)).first()
    return prev_id, next_id

