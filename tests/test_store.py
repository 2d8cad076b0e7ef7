"""Results store: round trips on SQLite and PostgreSQL, migrations, image files, path safety,
spool-and-replay while the database is unreachable (SQLite file made unavailable; PostgreSQL
cut off through a local TCP proxy the test controls).

PostgreSQL tests use a fresh database `loupe_test_<uuid>` on 127.0.0.1:5432 (user postgres),
dropped at the end of the session; they skip when no server answers there.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from sqlalchemy import inspect, select

from inference.store import ImagePathError, Record, ResultsStore
from inference.store.migrate import MIGRATIONS, current_revision, downgrade, head_revision, upgrade

PG_HOST, PG_PORT = "127.0.0.1", 5432


# ----------------------------------------------------------------------------- helpers


class TcpProxy:
    """A threaded TCP forwarder to `target` that the test can cut (drop live connections, refuse new ones) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():  # outage: the connection is closed at once
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Start an outage: live connections are dropped, new ones closed on accept."""
        self.up.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


def _pg_reachable() -> bool:
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    if not _pg_reachable():
        pytest.skip(f"no PostgreSQL server at {PG_HOST}:{PG_PORT}")
    import psycopg

    name = f"loupe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(db: str, port: int = PG_PORT) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:{port}/{db}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'results.db'}"
    return pg_url(request.getfixturevalue("pg_database"))


def frame(seed: int, shape: tuple[int, ...] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def amap(seed: int, size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[4:12, 6:14] = 0.5 + 0.1 * (seed % 3)
    return m


def add(store: ResultsStore, run: str, i: int, **kw: object) -> str:
    return store.add_flagged(run, frame=frame(i), anomaly_map=amap(i), score=0.6 + i / 100, threshold=0.5, is_defect=True,
                             model_version="v1", station="s1", source="video.avi", frame_index=i, **kw)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- round trip, migrations, images


def test_round_trip(store_url: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    store = ResultsStore(store_url, image_root=images)
    run = store.start_run("s1", "video.avi", "v1")
    ids = [add(store, run, 0), add(store, run, 1, strip=(10, 74, 0, 64))]
    rgb = frame(7, (40, 50, 3))
    ids.append(store.add_flagged(run, frame=rgb, anomaly_map=np.full((16, 16), 0.5, np.float32), score=0.9, threshold=0.5,
                                 is_defect=True, model_version="v1", station="s1", source="video.avi", frame_index=2))
    store.update_run(run, frames=30, flagged=3, dropped=1, errors=2)
    store.end_run(run, {"frames": 31, "flagged": 3, "fps": 12.5})
    store.close()

    again = ResultsStore(store_url, image_root=images)  # a second open: migrations are a no-op
    r = again.get_run(run)
    assert r is not None and (r.frames, r.flagged, r.dropped, r.errors) == (31, 3, 1, 2)
    assert r.ended_at is not None and r.ended_at.tzinfo is not None and '"fps": 12.5' in r.summary
    recs = again.records(run)
    assert [x.id for x in recs] == ids and [x.frame_index for x in recs] == [0, 1, 2]
    assert (recs[1].strip_y0, recs[1].strip_y1, recs[1].strip_x0, recs[1].strip_x1) == (10, 74, 0, 64)
    assert recs[0].strip_y0 is None and recs[0].captured_at.tzinfo is not None
    assert (recs[0].width, recs[0].height, recs[2].width, recs[2].height) == (64, 48, 50, 40)
    got = cv2.imread(str(again.image_path(recs[0].image_path)), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(got, frame(0))
    got_rgb = cv2.cvtColor(cv2.imread(str(again.image_path(recs[2].image_path))), cv2.COLOR_BGR2RGB)
    assert np.array_equal(got_rgb, rgb)
    m = cv2.imread(str(again.image_path(recs[2].map_path)), cv2.IMREAD_UNCHANGED)
    assert m.dtype == np.uint8 and m.shape == (40, 50) and (m == 128).all()  # threshold 0.5 -> 128
    ov = cv2.imread(str(again.image_path(recs[0].overlay_path)))
    assert ov.shape == (48, 64, 3)
    for rec in recs:
        for rel in (rec.image_path, rec.map_path, rec.overlay_path):
            assert rel.count("/") == 1 and rel.split("/")[0] == rel.split("/")[1][:2] and rel.endswith(".png")
    assert no_temp_files(images)
    again.close()


def test_migrations(tmp_path: Path) -> None:
    assert (MIGRATIONS / "env.py").is_file() and (MIGRATIONS / "versions" / "0001_initial.py").is_file()
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = ResultsStore(url)
    assert current_revision(store.engine) == head_revision()
    tables = set(inspect(store.engine).get_table_names())
    assert {"runs", "records", "alembic_version"} <= tables
    cols = {c["name"] for c in inspect(store.engine).get_columns("records")}
    assert {"id", "run_id", "station", "source", "frame_index", "strip_y0", "strip_y1", "strip_x0", "strip_x1", "captured_at",
            "score", "threshold", "is_defect", "model_version", "image_path", "map_path", "overlay_path", "width", "height"} <= cols
    downgrade(store.engine, "base")
    assert "records" not in inspect(store.engine).get_table_names()
    upgrade(store.engine)
    assert current_revision(store.engine) == head_revision()
    store.close()


def test_default_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOUPE_HOME", str(tmp_path / "home"))
    store = ResultsStore()
    assert store.url == f"sqlite:///{tmp_path / 'home' / 'results' / 'results.db'}"
    assert store.image_root == tmp_path / "home" / "results" / "images"
    run = store.start_run("s", "x", "v")
    rid = add(store, run, 3)
    assert (tmp_path / "home" / "results" / "results.db").is_file()
    assert store.image_path(store.records(run)[0].image_path).is_file() and store.records()[0].id == rid
    store.close()


def test_image_path_refuses_traversal(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    (tmp_path / "secret.txt").write_text("no")
    for bad in ("../secret.txt", "/etc/passwd", "ab/../../secret.txt", "", str(tmp_path / "secret.txt")):
        with pytest.raises(ImagePathError):
            store.image_path(bad)
    os.symlink(tmp_path, store.image_root / "link")
    with pytest.raises(ImagePathError):
        store.image_path("link/secret.txt")
    assert store.image_path("ab/abc.png") == (store.image_root / "ab" / "abc.png").resolve()
    store.close()


def test_same_content_same_file(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    run = store.start_run("s", "x", "v")
    a, b = add(store, run, 5), add(store, run, 5)
    ra, rb = store.records(run)
    assert a != b and ra.image_path == rb.image_path and ra.overlay_path == rb.overlay_path
    assert len(list(store.image_root.rglob("*.png"))) == 3
    store.close()


# ----------------------------------------------------------------------------- spool and replay


def _all_records(url: str, images: Path) -> list[Record]:
    s = ResultsStore(url, image_root=images, spool_dir=images.parent / "other-spool")
    try:
        with s.session() as ses:
            return list(ses.scalars(select(Record).order_by(Record.frame_index)))
    finally:
        s.close()


def test_spool_and_replay_sqlite(tmp_path: Path) -> None:
    """The SQLite file disappears (a folder takes its name: opening fails) for a while; nothing is lost."""
    db = tmp_path / "db" / "results.db"
    url, images = f"sqlite:///{db}", tmp_path / "images"
    store = ResultsStore(url, image_root=images, retry_interval=0.05)
    run = store.start_run("s1", "video.avi", "v1")
    before = [add(store, run, i) for i in range(2)]
    assert store.pending == 0 and store.available

    aside = db.with_name("aside.db")
    os.replace(db, aside)
    db.mkdir()  # the database "file" is now unopenable
    during = [add(store, run, i) for i in range(2, 6)]
    store.update_run(run, frames=6, flagged=6)
    assert not store.available and store.pending == 5
    spooled = [store.spool.read(p) for p in store.spool.files()]
    assert [i.op for i in spooled] == ["add_record"] * 4 + ["update_run"] and no_temp_files(store.spool.folder)
    for item in spooled[:4]:  # images are on disk before a record is spooled
        for key in ("image_path", "map_path", "overlay_path"):
            assert cv2.imread(str(store.image_path(item.data[key]))) is not None

    db.rmdir()
    os.replace(aside, db)  # the database is back
    import time

    time.sleep(0.1)
    after = [add(store, run, 6)]  # the next write replays the spool first, in order
    assert store.pending == 0 and store.available and store.replayed_total == 5
    store.end_run(run, {"frames": 7, "flagged": 7})
    store.close()
    recs = _all_records(url, images)
    assert [r.id for r in recs] == before + during + after
    for r in recs:
        assert cv2.imread(str(images / r.image_path)) is not None
    check = ResultsStore(url, image_root=images)
    assert check.get_run(run).frames == 7
    check.close()


def test_spool_survives_restart_and_replay_is_idempotent(tmp_path: Path) -> None:
    """Operations spooled by a process that ends during the outage are replayed by the next one; replaying twice adds nothing."""
    db = tmp_path / "results.db"
    url, images = f"sqlite:///{db}", tmp_path / "images"
    store = ResultsStore(url, image_root=images)
    run = store.start_run("s1", "x", "v1")
    first = add(store, run, 0)
    aside = tmp_path / "aside.db"
    os.replace(db, aside)
    db.mkdir()
    second = add(store, run, 1)
    store.close()  # still unreachable: the operation stays spooled
    assert len(store.spool) == 1
    # a replay after a partial commit: the same record id spooled again (already committed before)
    store.spool.put("add_record", _record_data(store, run, first))
    db.rmdir()
    os.replace(aside, db)
    reopened = ResultsStore(url, image_root=images)  # replays on open
    assert reopened.pending == 0
    assert [r.id for r in reopened.records(run)] == [first, second]
    reopened.close()


def _record_data(store: ResultsStore, run: str, rid: str) -> dict:
    """Row data of an add_record operation for an id that is already committed (as after a crash between commit and unlink)."""
    return {"id": rid, "run_id": run, "station": "s1", "source": "x", "frame_index": 0, "strip_y0": None, "strip_y1": None,
                      "strip_x0": None, "strip_x1": None, "captured_at": "2026-01-01T00:00:00+00:00",
                      "score": 0.6, "threshold": 0.5, "is_defect": True, "model_version": "v1", "image_path": "aa/a.png",
                      "map_path": "aa/b.png", "overlay_path": "aa/c.png", "width": 64, "height": 48}


def test_spool_and_replay_postgres(pg_database: str, tmp_path: Path) -> None:
    """PostgreSQL behind a TCP proxy: connections dropped and refused for a while, then back; nothing lost, nothing twice."""
    proxy = TcpProxy((PG_HOST, PG_PORT))
    images = tmp_path / "images"
    try:
        store = ResultsStore(pg_url(pg_database, proxy.port), image_root=images, spool_dir=tmp_path / "spool",
                             retry_interval=0.05, connect_timeout=2)
        run = store.start_run("pg", "rtsp://cam", "v1")
        before = [add(store, run, i) for i in range(2)]
        proxy.cut()
        during = [add(store, run, i) for i in range(2, 5)]
        store.update_run(run, frames=5, flagged=5)
        assert not store.available and store.pending == 4
        proxy.restore()
        import time

        time.sleep(0.2)
        assert store.flush(force=True) and store.pending == 0
        after = [add(store, run, 5)]
        store.end_run(run, {"frames": 6, "flagged": 6})
        store.close()
        recs = _all_records(pg_url(pg_database), images)
        mine = [r.id for r in recs if r.run_id == run]
        assert mine == before + during + after
        check = ResultsStore(pg_url(pg_database), image_root=images, spool_dir=tmp_path / "spool2")
        r = check.get_run(run)
        assert (r.frames, r.flagged) == (6, 6) and r.ended_at is not None
        check.close()
    finally:
        proxy.close()


def test_start_while_database_down(tmp_path: Path) -> None:
    """A station that starts during an outage (migrations impossible) spools from the first write and catches up later."""
    db = tmp_path / "results.db"
    db.mkdir()
    url, images = f"sqlite:///{db}", tmp_path / "images"
    store = ResultsStore(url, image_root=images, retry_interval=0.01)
    assert not store.available
    run = store.start_run("s1", "x", "v1")
    rid = add(store, run, 0)
    assert store.pending == 2
    db.rmdir()
    assert store.flush(force=True)
    assert [r.id for r in store.records(run)] == [rid]
    store.close()
