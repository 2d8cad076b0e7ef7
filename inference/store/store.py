"""The results store: runs and flagged records in a database, images on disk, a spool for outages.

    from inference.store import ResultsStore
    store = ResultsStore()                                   # sqlite:///$LOUPE_HOME/results/results.db
    store = ResultsStore("postgresql+psycopg://user@host/db", image_root=Path("/data/images"))
    run = store.start_run("station-1", "rtsp://cam1/stream", "3f2a9c1b7e4d")
    rid = store.add_flagged(run, frame=frame, anomaly_map=m, score=0.83, threshold=0.5, is_defect=True,
                            model_version="3f2a9c1b7e4d", station="station-1", source="rtsp://cam1/stream",
                            frame_index=1234)
    store.update_run(run, frames=5000, flagged=12, dropped=0, errors=1)
    store.end_run(run, {"frames": 5000, ...})
    with store.session() as s: s.scalars(select(Record)).all()
    store.image_path(record.overlay_path)                   # absolute path; refuses paths escaping the root

Layout (the contract with the review app): default URL `sqlite:///$LOUPE_HOME/results/results.db`
(LOUPE_HOME defaults to ~/.loupe); images under `$LOUPE_HOME/results/images/`, or for a given
SQLite URL in the `images/` folder next to the database file; for other databases
`image_root` (default `$LOUPE_HOME/results/images`). Image paths in rows are relative to the
image root: `<sha256[:2]>/<sha256>.png` (see `inference.store.images`).

Opening runs Alembic `upgrade head` (the packaged migrations). Every database write is one
transaction. When the database is unreachable (connection refused or dropped, SQLite file
unavailable), the write goes to the spool folder instead (`inference.store.spool`; images are
written first, so they are on disk already) and is replayed in order when the database answers
again: attempts back off from `retry_interval` up to `max_retry_interval` seconds, and the
next write (or `flush()`/`close()`) after that triggers the replay. While anything is spooled,
new writes are spooled behind it, so the database sees operations in their original order.
Primary keys are uuid4 hex generated here, so replaying after a partial commit duplicates nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from filelock import FileLock, Timeout
from sqlalchemy import Engine, create_engine, event, exc, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from inference.store import images as img
from inference.store.migrate import upgrade
from inference.store.models import RECORD_COLUMNS, RUN_COLUMNS, Record, Run, new_id, utcnow
from inference.store.spool import Spool, SpoolError

log = logging.getLogger("loupe.store")

_DATETIME_FIELDS = ("started_at", "ended_at", "captured_at")
_COUNT_FIELDS = ("frames", "flagged", "dropped", "errors")


def loupe_home() -> Path:
    """$LOUPE_HOME, default ~/.loupe."""
    return Path(os.environ.get("LOUPE_HOME") or Path.home() / ".loupe").expanduser()


def default_url() -> str:
    """sqlite:///$LOUPE_HOME/results/results.db"""
    return f"sqlite:///{loupe_home() / 'results' / 'results.db'}"


def _sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.database.startswith("file:"):
        return None
    return Path(u.database).expanduser().absolute()


def default_image_root(url: str) -> Path:
    """`images/` next to a SQLite database file; `$LOUPE_HOME/results/images` otherwise."""
    db = _sqlite_file(url)
    return db.parent / "images" if db is not None else loupe_home() / "results" / "images"


def default_spool_dir(url: str) -> Path:
    """`spool/` next to a SQLite database file; `$LOUPE_HOME/results/spool/<hash of the URL>` otherwise."""
    db = _sqlite_file(url)
    if db is not None:
        return db.parent / "spool"
    key = hashlib.sha256(make_url(url).render_as_string(hide_password=True).encode()).hexdigest()[:12]
    return loupe_home() / "results" / "spool" / key


def is_unavailable(err: BaseException) -> bool:
    """Whether a database error means "cannot reach the database now" (spool and retry) rather than a bad write."""
    if isinstance(err, (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)):
        return True
    return isinstance(err, exc.DBAPIError) and bool(err.connection_invalidated)


def make_engine(url: str, connect_timeout: float = 5.0) -> Engine:
    """An engine tuned for a station: SQLite (WAL, a fresh connection per transaction), PostgreSQL (pre-ping, timeout)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        db = _sqlite_file(url)
        if db is None:  # in-memory: one shared connection
            return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        db.parent.mkdir(parents=True, exist_ok=True)
        # NullPool: no connection outlives a transaction, so an unavailable file is noticed at once
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (the review app) do not block the station
            cur.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    args: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql":
        args["connect_timeout"] = max(1, int(round(connect_timeout)))
        # TCP keepalives: a silently dead network path fails in ~15 s instead of hanging a write forever
        args.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=5)
    return create_engine(url, pool_pre_ping=True, pool_recycle=300, connect_args=args)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.astimezone(timezone.utc).isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}


def _from_json(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for k in _DATETIME_FIELDS:
        if isinstance(out.get(k), str):
            out[k] = datetime.fromisoformat(out[k])
    return out


class ResultsStore:
    """Runs and flagged records (database) with their images (disk); spools while the database is away."""

    def __init__(self, url: str | None = None, image_root: Path | None = None, *, spool_dir: Path | None = None,
                 retry_interval: float = 1.0, max_retry_interval: float = 30.0, connect_timeout: float = 5.0) -> None:
        self.url = url or default_url()
        self.image_root = Path(image_root) if image_root is not None else default_image_root(self.url)
        self.image_root.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.url, connect_timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.spool = Spool(Path(spool_dir) if spool_dir is not None else default_spool_dir(self.url))
        self.retry_interval, self.max_retry_interval = retry_interval, max_retry_interval
        self._lock = threading.RLock()
        self._migrated = False
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = retry_interval
        self._pending = len(self.spool) > 0
        self.spooled_total = 0  # operations that went to the spool (this process)
        self.replayed_total = 0  # spooled operations applied later (this process)
        try:
            self._migrate()
        except Exception as err:  # noqa: BLE001 - only "unreachable" is tolerated
            if not is_unavailable(err):
                raise
            self._mark_down(err)
        if self._pending:
            self.flush()

    # ------------------------------------------------------------------ public API

    def __repr__(self) -> str:
        return f"ResultsStore({make_url(self.url).render_as_string(hide_password=True)!r}, image_root={str(self.image_root)!r})"

    @property
    def available(self) -> bool:
        """Whether the last database attempt succeeded."""
        return self._down_since is None

    @property
    def pending(self) -> int:
        """Operations waiting in the spool."""
        return len(self.spool)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, rolled back otherwise."""
        with self._sessions() as s, s.begin():
            yield s

    def start_run(self, station: str, source: str, model_version: str, *, run_id: str | None = None,
                  started_at: datetime | None = None) -> str:
        """Create a run row; returns its id (also while the database is away: the row is spooled)."""
        rid = run_id or new_id()
        self._write("start_run", {"id": rid, "station": station, "source": source, "model_version": model_version,
                                  "started_at": started_at or utcnow(), "ended_at": None, "frames": 0, "flagged": 0,
                                  "dropped": 0, "errors": 0, "summary": None})
        return rid

    def add_flagged(self, run_id: str, *, frame: np.ndarray, anomaly_map: np.ndarray, score: float, threshold: float,
                    is_defect: bool, model_version: str, station: str, source: str, frame_index: int,
                    strip: Sequence[int] | None = None, captured_at: datetime | None = None,
                    record_id: str | None = None) -> str:
        """Store a flagged frame: frame, anomaly map and overlay PNGs (content-addressed, atomic), then its row.

        frame: uint8 gray [H, W] (or [H, W, 1]) or RGB [H, W, 3], as captured.
        anomaly_map: normalized float map (any size; resized to the frame's), threshold 0.5.
        strip: (y0, y1, x0, x1) position on a line-scan strip, or None.
        """
        frame = np.asarray(frame)
        h, w = frame.shape[:2]
        map_u8 = img.map_to_uint8(anomaly_map, (h, w))
        image_rel = img.write_png(self.image_root, frame)
        map_rel = img.write_png(self.image_root, map_u8)
        overlay_rel = img.write_png(self.image_root, img.overlay(frame, map_u8))
        y0, y1, x0, x1 = (None, None, None, None) if strip is None else (int(v) for v in strip)
        rid = record_id or new_id()
        self._write("add_record", {
            "id": rid, "run_id": run_id, "station": station, "source": source, "frame_index": int(frame_index),
            "strip_y0": y0, "strip_y1": y1, "strip_x0": x0, "strip_x1": x1, "captured_at": captured_at or utcnow(),
            "score": float(score), "threshold": float(threshold), "is_defect": bool(is_defect),
            "model_version": model_version, "image_path": image_rel, "map_path": map_rel, "overlay_path": overlay_rel,
            "width": int(w), "height": int(h)})
        return rid

    def update_run(self, run_id: str, **counts: int) -> None:
        """Set a run's counters (frames, flagged, dropped, errors) and/or model_version."""
        bad = set(counts) - set(_COUNT_FIELDS) - {"model_version"}
        if bad:
            raise ValueError(f"update_run takes {_COUNT_FIELDS} and model_version, not {sorted(bad)}")
        self._write("update_run", {"id": run_id, **counts})

    def end_run(self, run_id: str, summary: dict[str, Any] | None = None) -> None:
        """Close a run: ended_at = now, summary (JSON text); counters taken from the summary's keys when present."""
        data: dict[str, Any] = {"id": run_id, "ended_at": utcnow(), "summary": json.dumps(summary) if summary is not None else None}
        for k in _COUNT_FIELDS:
            if summary and isinstance(summary.get(k), int):
                data[k] = summary[k]
        self._write("end_run", data)

    def image_path(self, relative: str) -> Path:
        """Absolute path of a stored image; ImagePathError for absolute paths or paths escaping the image root."""
        return img.resolve(self.image_root, relative)

    def records(self, run_id: str | None = None) -> list[Record]:
        """Records (of one run, or all), oldest first."""
        with self.session() as s:
            q = select(Record).order_by(Record.captured_at, Record.frame_index)
            if run_id is not None:
                q = q.where(Record.run_id == run_id)
            return list(s.scalars(q))

    def get_run(self, run_id: str) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    def flush(self, force: bool = False) -> bool:
        """Replay the spool now if it is due (or `force`); True when nothing is left pending."""
        with self._lock:
            if not self._pending and not force:
                return True
            if not force and time.monotonic() < self._next_try:
                return False
            return self._replay()

    def close(self) -> None:
        """Last replay attempt, then release connections. Anything still spooled stays for the next open."""
        self.flush(force=True)
        left = len(self.spool)
        if left:
            log.warning("results store %r: %d operation(s) still spooled in %s; they are replayed the next time a store "
                        "opens this database", self, left, self.spool.folder)
        self.engine.dispose()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _migrate(self) -> None:
        if self._migrated:
            return
        db = _sqlite_file(self.url)
        if db is not None:
            with FileLock(str(db) + ".migrate.lock"):
                upgrade(self.engine)
        else:
            upgrade(self.engine)
        self._migrated = True

    def _mark_down(self, err: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._backoff = self.retry_interval
            log.warning("results store %r is unreachable (%s); spooling to %s and retrying", self, str(err).splitlines()[0],
                        self.spool.folder)
        else:
            self._backoff = min(self._backoff * 2, self.max_retry_interval)
        self._next_try = now + self._backoff

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("results store %r is reachable again after %.1f s", self, time.monotonic() - self._down_since)
        self._down_since = None
        self._backoff = self.retry_interval
        self._next_try = 0.0

    def _write(self, op: str, data: dict[str, Any]) -> None:
        data = _jsonable(data)
        with self._lock:
            if time.monotonic() >= self._next_try and (not self._pending or self._replay()):
                try:
                    self._migrate()
                    self._apply(op, data)
                    self._mark_up()
                    return
                except Exception as err:  # noqa: BLE001 - only "unreachable" goes to the spool
                    if not is_unavailable(err):
                        raise
                    self._mark_down(err)
            self.spool.put(op, data)
            self._pending = True
            self.spooled_total += 1

    def _replay(self) -> bool:
        """Apply spooled operations in order; True when the spool is empty afterwards."""
        try:
            self.spool.lock.acquire(timeout=0.5)
        except Timeout:  # another process is replaying this spool; try again later
            self._next_try = time.monotonic() + self.retry_interval
            return False
        try:
            try:
                self._migrate()
            except Exception as err:  # noqa: BLE001
                if not is_unavailable(err):
                    raise
                self._mark_down(err)
                return False
            for path in self.spool.files():
                try:
                    item = self.spool.read(path)
                except SpoolError as err:
                    self._quarantine(path, str(err))
                    continue
                try:
                    self._apply(item.op, item.data)
                except Exception as err:  # noqa: BLE001
                    if is_unavailable(err):
                        self._mark_down(err)
                        return False
                    self._quarantine(path, f"{type(err).__name__}: {err}")
                    continue
                path.unlink(missing_ok=True)
                self.replayed_total += 1
            self._pending = False
            self._mark_up()
            return True
        finally:
            self.spool.lock.release()

    def _quarantine(self, path: Path, why: str) -> None:
        """Move a spool file the database refuses (not an outage) to spool/rejected/, loudly."""
        dest = self.spool.folder / "rejected" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), dest)
        log.error("spooled operation %s was refused by the database and moved to %s: %s", path.name, dest, why)

    def _apply(self, op: str, data: dict[str, Any]) -> None:
        """One idempotent operation in one transaction."""
        data = _from_json(data)
        with self.session() as s:
            if op == "start_run":
                if s.get(Run, data["id"]) is None:
                    s.add(Run(**{k: data[k] for k in RUN_COLUMNS if k in data}))
            elif op == "add_record":
                if s.get(Record, data["id"]) is None:
                    s.add(Record(**{k: data[k] for k in RECORD_COLUMNS if k in data}))
            elif op in ("update_run", "end_run"):
                run = s.get(Run, data["id"])
                if run is None:
                    raise LookupError(f"run {data['id']} does not exist")
                for k, v in data.items():
                    if k != "id":
                        setattr(run, k, v)
            else:
                raise ValueError(f"unknown store operation {op!r}")
