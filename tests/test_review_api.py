"""Review app over a real SQLite results store, through FastAPI's TestClient.

Records are made by `ResultsStore.add_flagged` from synthetic frames and maps, so the
images, maps and overlays on disk are the store's own.
"""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from sqlalchemy import select

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from inference.review.app import create_app  # noqa: E402
from inference.review.models import Verdict  # noqa: E402
from inference.review.users import add_user  # noqa: E402
from inference.store import ResultsStore  # noqa: E402

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _frame(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    frame = rng.integers(60, 200, (size, size), dtype=np.uint8)
    m = np.zeros((size, size), np.float32)
    y, x = rng.integers(4, size - 12, 2)
    m[y:y + 8, x:x + 8] = 0.9  # above the 0.5 threshold: an outline to draw
    return frame, m


def fill(store: ResultsStore, n: int = 12) -> list[str]:
    """n flagged records on two stations and two model versions, one minute apart, scores rising with index."""
    rng = np.random.default_rng(0)
    runs = {(st, mv): store.start_run(st, "synthetic", mv, started_at=T0) for st in ("line-1", "line-2") for mv in ("m1", "m2")}
    ids = []
    for i in range(n):
        station, mv = ("line-1" if i % 2 == 0 else "line-2"), ("m1" if i < n // 2 else "m2")
        frame, m = _frame(rng)
        ids.append(store.add_flagged(runs[(station, mv)], frame=frame, anomaly_map=m, score=0.5 + 0.01 * ((i * 7) % n),
                                     threshold=0.5, is_defect=True, model_version=mv, station=station, source="synthetic",
                                     frame_index=i, captured_at=T0 + timedelta(minutes=i)))
    for rid in runs.values():
        store.update_run(rid, frames=100, flagged=n // 4)
    return ids


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ResultsStore]:
    s = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    with s.session() as session:
        add_user(session, "alice", PASSWORDS["alice"], "admin")
        add_user(session, "bob", PASSWORDS["bob"], "reviewer")
    yield s
    s.close()


@pytest.fixture()
def ids(store: ResultsStore) -> list[str]:
    return fill(store)


@pytest.fixture()
def client(store: ResultsStore, ids: list[str]) -> TestClient:
    return TestClient(create_app(store=store, secret_key="test-secret"))


def token(client: TestClient, path: str = "/login") -> str:
    match = _TOKEN.search(client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: TestClient, user: str = "alice") -> str:
    """Log in; returns the session's CSRF token."""
    r = client.post("/login", data={"username": user, "password": PASSWORDS[user], "csrf_token": token(client)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return token(client, "/queue")


def verdicts(store: ResultsStore) -> list[Verdict]:
    with store.session() as s:
        return list(s.scalars(select(Verdict).order_by(Verdict.id)))


def queue_ids(client: TestClient, **params: Any) -> list[str]:
    r = client.get("/api/queue", params=params)
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


# ---------------------------------------------------------------------- access


def test_unauthenticated_pages_redirect_and_api_gets_401(client: TestClient, ids: list[str], store: ResultsStore) -> None:
    image = store.records()[0].image_path
    for page in ("/", "/queue", f"/items/{ids[0]}", "/dashboard", "/admin/users"):
        r = client.get(page, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), page
    for path in ("/api/queue", f"/api/items/{ids[0]}", "/export/verdicts.csv", "/export/verdicts.json",
                 "/export/feedback.json", f"/images/{image}", f"/items/{ids[0]}/heatmap.png", "/api/me"):
        assert client.get(path).status_code == 401, path
    # posts without a session: pages redirect, API answers 401, nothing is stored
    r = client.post(f"/items/{ids[0]}/verdict", data={"verdict": "defect"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect"}).status_code == 401
    assert verdicts(store) == []


def test_login_wrong_password_and_logout(client: TestClient) -> None:
    tok = token(client)
    r = client.post("/login", data={"username": "alice", "password": "wrong-password", "csrf_token": tok})
    assert r.status_code == 401 and "Wrong username or password" in r.text
    r = client.post("/login", data={"username": "nobody", "password": "whatever1", "csrf_token": tok})
    assert r.status_code == 401
    assert client.get("/api/me").status_code == 401
    r = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": tok,
                                    "next": "/dashboard"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    assert client.get("/api/me").json() == {"username": "alice", "role": "admin"}
    # the anonymous token died with the anonymous session (no fixation)
    new_tok = token(client, "/queue")
    assert new_tok != tok
    assert client.post("/logout", data={"csrf_token": tok}, follow_redirects=False).status_code == 403
    assert client.post("/logout", data={"csrf_token": new_tok}, follow_redirects=False).status_code == 303
    assert client.get("/api/me").status_code == 401


def test_open_redirect_refused(client: TestClient) -> None:
    r = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": token(client),
                                    "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/queue"


def test_password_change_ends_sessions(client: TestClient, store: ResultsStore) -> None:
    from inference.review.users import set_password

    login(client, "bob")
    assert client.get("/api/me").status_code == 200
    with store.session() as s:
        set_password(s, "bob", "another-password")
    assert client.get("/api/me").status_code == 401


def test_csrf_missing_or_wrong_is_refused(client: TestClient, ids: list[str], store: ResultsStore) -> None:
    # the login form itself is protected
    r = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
    assert r.status_code == 403
    tok = login(client)
    for data in ({"verdict": "defect"}, {"verdict": "defect", "csrf_token": ""}, {"verdict": "defect", "csrf_token": tok + "x"}):
        r = client.post(f"/items/{ids[0]}/verdict", data=data, follow_redirects=False)
        assert r.status_code == 403, data
    assert client.post("/undo", data={}, follow_redirects=False).status_code == 403
    assert client.post("/admin/users", data={"username": "eve", "password": "eve-password"}).status_code == 403
    assert client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect"}).status_code == 403
    assert client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect"},
                       headers={"X-CSRF-Token": "nope"}).status_code == 403
    assert verdicts(store) == []
    r = client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect"}, headers={"X-CSRF-Token": tok})
    assert r.status_code == 201


def test_images_only_from_the_store_root(client: TestClient, store: ResultsStore, tmp_path: Path) -> None:
    rec = store.records()[0]
    (tmp_path / "secret.png").write_bytes(b"not for you")  # next to the image root, outside it
    (store.image_root / "notes.txt").write_text("not an image")
    assert client.get(f"/images/{rec.image_path}").status_code == 401
    login(client)
    r = client.get(f"/images/{rec.image_path}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (rec.height, rec.width)
    for bad in ("../secret.png", "..%2Fsecret.png", "%2e%2e/secret.png", "%2e%2e%2fsecret.png", "../results.db",
                f"{rec.image_path[:2]}/../../secret.png", "..%5Csecret.png", "%2Fetc%2Fpasswd", "notes.txt",
                "does/not/exist.png"):
        r = client.get(f"/images/{bad}")
        assert r.status_code == 404, (bad, r.status_code)


def test_default_bind_is_localhost() -> None:
    from inference.review.serve import DEFAULT_HOST

    assert DEFAULT_HOST == "127.0.0.1"


def test_pages_render(client: TestClient, ids: list[str]) -> None:
    login(client)
    r = client.get("/queue")
    assert r.status_code == 200
    assert "Content-Security-Policy" in r.headers and r.headers["X-Frame-Options"] == "DENY"
    for rid in ids:
        assert f"/items/{rid}" in r.text
    assert "12 flagged" in r.text
    r = client.get(f"/items/{ids[5]}")
    assert r.status_code == 200
    for needle in ('id="btn-defect"', 'id="btn-false-alarm"', 'id="opacity"', f"/items/{ids[5]}/heatmap.png",
                   f"/items/{ids[5]}/outline.png", f'href="/items/{ids[6]}"', f'href="/items/{ids[4]}"', "m1", "line-2"):
        assert needle in r.text, needle
    assert client.get("/items/" + "0" * 32).status_code == 404
    dash = client.get("/dashboard")
    assert dash.status_code == 200 and dash.text.count("<svg") == 2 and "line-1" in dash.text
    # heatmap and outline are real images of the record's size; the outline has drawn pixels
    heat = cv2.imdecode(np.frombuffer(client.get(f"/items/{ids[5]}/heatmap.png").content, np.uint8), cv2.IMREAD_UNCHANGED)
    outline = cv2.imdecode(np.frombuffer(client.get(f"/items/{ids[5]}/outline.png").content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (32, 32, 3) and outline.shape == (32, 32, 4)
    assert 0 < (outline[:, :, 3] > 0).sum() < 32 * 32


def test_admin_page_is_for_admins(client: TestClient, store: ResultsStore) -> None:
    login(client, "bob")
    assert client.get("/admin/users").status_code == 403
    client.post("/logout", data={"csrf_token": token(client, "/queue")})
    tok = login(client, "alice")
    r = client.post("/admin/users", data={"username": "carol", "password": "carol-password", "role": "reviewer",
                                          "csrf_token": tok}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post("/admin/users", data={"username": "carol", "password": "carol-password", "role": "reviewer",
                                          "csrf_token": tok})
    assert r.status_code == 400 and "already exists" in r.text
    assert "carol" in client.get("/admin/users").text


# ---------------------------------------------------------------------- verdicts


def test_verdict_round_trip_into_feedback_manifest(client: TestClient, ids: list[str], store: ResultsStore,
                                                   tmp_path: Path) -> None:
    from pipeline.data.feedback import feedback_samples, read_feedback

    tok = login(client, "bob")
    page = client.get(f"/items/{ids[3]}").text
    after = re.search(r'name="next" value="([^"]+)"', page).group(1)
    r = client.post(f"/items/{ids[3]}/verdict", data={"verdict": "false_alarm", "csrf_token": tok, "next": after},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == after == f"/items/{ids[2]}"
    r = client.post(f"/items/{ids[2]}/verdict", data={"verdict": "defect", "defect_class": "scratch", "comment": "deep",
                                                      "csrf_token": tok}, follow_redirects=False)
    assert r.status_code == 303
    # a class on a false alarm and an unknown verdict are refused, not dropped
    assert client.post(f"/items/{ids[1]}/verdict", data={"verdict": "false_alarm", "defect_class": "x", "csrf_token": tok}).status_code == 400
    assert client.post(f"/items/{ids[1]}/verdict", data={"verdict": "maybe", "csrf_token": tok}).status_code == 400

    rows = verdicts(store)
    assert [(v.record_id, v.verdict, v.defect_class, v.comment, v.reviewer) for v in rows] == [
        (ids[3], "false_alarm", None, None, "bob"), (ids[2], "defect", "scratch", "deep", "bob")]
    assert all(v.undone_at is None and abs(v.created_at - datetime.now(timezone.utc)) < timedelta(minutes=5) for v in rows)
    assert client.get(f"/api/items/{ids[3]}").json()["status"] == "false_alarm"

    r = client.get("/export/feedback.json", params={"product": "tiles"})
    assert r.status_code == 200
    manifest = tmp_path / "feedback.json"
    manifest.write_bytes(r.content)
    doc = json.loads(r.content)
    assert doc["format"] == "loupe-feedback" and doc["version"] == 1 and doc["product"] == "tiles"
    items = read_feedback(manifest)
    by_record = {it.record_id: it for it in items}
    assert set(by_record) == {ids[2], ids[3]}
    rec = {r.id: r for r in store.records()}
    fa, de = by_record[ids[3]], by_record[ids[2]]
    assert fa.verdict == "false_alarm" and fa.reviewer == "bob" and fa.station == rec[ids[3]].station
    assert Path(fa.image) == (store.image_root / rec[ids[3]].image_path).resolve() and Path(fa.image).is_file()
    assert fa.score == pytest.approx(rec[ids[3]].score) and fa.model_version == rec[ids[3]].model_version
    assert de.verdict == "defect" and de.defect_class == "scratch" and de.comment == "deep"
    good, labelled = feedback_samples(manifest)
    assert [s.label for s in good] == [0] and [(s.label, s.defect_class) for s in labelled] == [(1, "scratch")]


def test_undo_keeps_the_audit_trail(client: TestClient, ids: list[str], store: ResultsStore) -> None:
    tok = login(client, "bob")
    client.post(f"/items/{ids[0]}/verdict", data={"verdict": "defect", "csrf_token": tok})
    client.post(f"/items/{ids[1]}/verdict", data={"verdict": "false_alarm", "csrf_token": tok})
    # U on any page undoes bob's latest verdict and returns to that item, keeping the filters
    r = client.post("/undo", data={"csrf_token": tok, "qs": "?station=line-2"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/items/{ids[1]}?station=line-2"
    rows = verdicts(store)
    assert len(rows) == 2 and rows[1].undone_at is not None and rows[0].undone_at is None
    assert client.get(f"/api/items/{ids[1]}").json()["status"] == "unreviewed"
    hist = client.get(f"/api/items/{ids[1]}").json()["verdicts"]
    assert len(hist) == 1 and hist[0]["undone_at"] is not None
    # a second verdict after undo is the new standing one
    client.post(f"/items/{ids[1]}/verdict", data={"verdict": "defect", "csrf_token": tok})
    assert client.get(f"/api/items/{ids[1]}").json()["status"] == "defect"
    assert {it["record_id"]: it["verdict"] for it in client.get("/export/feedback.json").json()["items"]} == {
        ids[0]: "defect", ids[1]: "defect"}
    # bob cannot undo alice's verdict; alice (admin) can undo bob's
    client.post("/logout", data={"csrf_token": tok})
    tok_a = login(client, "alice")
    client.post(f"/api/items/{ids[4]}/verdict", json={"verdict": "defect"}, headers={"X-CSRF-Token": tok_a})
    assert client.post(f"/api/items/{ids[1]}/undo", headers={"X-CSRF-Token": tok_a}).json()["reviewer"] == "bob"
    client.post("/logout", data={"csrf_token": tok_a})
    tok = login(client, "bob")
    assert client.post(f"/api/items/{ids[4]}/undo", headers={"X-CSRF-Token": tok}).status_code == 403
    r = client.post(f"/items/{ids[0]}/undo", data={"csrf_token": tok, "next": f"/items/{ids[0]}"}, follow_redirects=False)
    assert r.status_code == 303
    assert client.post(f"/api/items/{ids[0]}/undo", headers={"X-CSRF-Token": tok}).status_code == 409  # nothing left
    assert len(verdicts(store)) == 4  # nothing deleted


# ---------------------------------------------------------------------- queue


def test_filters_sort_and_counts(client: TestClient, ids: list[str]) -> None:
    tok = login(client)
    assert queue_ids(client) == ids[::-1]  # newest first
    assert queue_ids(client, station="line-1") == ids[0::2][::-1]
    assert queue_ids(client, model_version="m2") == ids[6:][::-1]
    since, until = (T0 + timedelta(minutes=3)).isoformat(), (T0 + timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M")
    assert queue_ids(client, since=since, until=until) == ids[3:6][::-1]
    by_score = client.get("/api/queue", params={"sort": "score"}).json()["items"]
    scores = [it["score"] for it in by_score]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(ids)
    client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect"}, headers={"X-CSRF-Token": tok})
    client.post(f"/api/items/{ids[1]}/verdict", json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": tok})
    client.post(f"/api/items/{ids[2]}/verdict", json={"verdict": "defect"}, headers={"X-CSRF-Token": tok})
    client.post(f"/api/items/{ids[2]}/undo", headers={"X-CSRF-Token": tok})
    assert queue_ids(client, status="defect") == [ids[0]]
    assert queue_ids(client, status="false_alarm") == [ids[1]]
    assert queue_ids(client, status="unreviewed") == [i for i in ids[::-1] if i not in (ids[0], ids[1])]
    counts = client.get("/api/queue", params={"station": "line-1"}).json()["counts"]
    assert counts == {"unreviewed": 5, "defect": 1, "false_alarm": 0, "all": 6}
    page = client.get("/queue", params={"status": "unreviewed", "station": "line-2"}).text
    assert f"/items/{ids[1]}" not in page and f"/items/{ids[3]}" in page
    # neighbours follow the filters: line-1 only
    item = client.get(f"/api/items/{ids[4]}", params={"station": "line-1"}).json()
    assert (item["prev_id"], item["next_id"]) == (ids[6], ids[2])
    for bad in ({"status": "maybe"}, {"sort": "random"}, {"since": "yesterday"}, {"after": "garbage"}):
        assert client.get("/api/queue", params=bad).status_code == 400, bad
        assert client.get("/queue", params=bad).status_code == 400, bad


@pytest.mark.parametrize("sort", ["newest", "score"])
def test_keyset_pagination_visits_every_item_once(client: TestClient, ids: list[str], sort: str) -> None:
    login(client)
    full = queue_ids(client, sort=sort, limit=100)
    seen, cursor, pages = [], None, []
    while True:
        params = {"sort": sort, "limit": 5, **({"after": cursor} if cursor else {})}
        body = client.get("/api/queue", params=params).json()
        pages.append(body)
        seen += [it["id"] for it in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == full and len(set(seen)) == len(ids) and [len(p["items"]) for p in pages] == [5, 5, 2]
    # going back from the last page gives the middle page again
    back = client.get("/api/queue", params={"sort": sort, "limit": 5, "before": pages[2]["prev_cursor"]}).json()
    assert [it["id"] for it in back["items"]] == [it["id"] for it in pages[1]["items"]]
    first = client.get("/api/queue", params={"sort": sort, "limit": 5, "before": back["prev_cursor"]}).json()
    assert [it["id"] for it in first["items"]] == [it["id"] for it in pages[0]["items"]] and first["prev_cursor"] is None
    html = client.get("/queue", params={"sort": sort, "limit": 5, "after": pages[0]["next_cursor"]}).text
    assert 'id="page-next"' in html and 'id="page-prev"' in html


def test_queue_uses_the_index(store: ResultsStore) -> None:
    """The page query reads the composite index (no full-table sort), on SQLite's plan."""
    from sqlalchemy.dialects import sqlite

    from inference.review import queue as q

    for sort, index in (("newest", "ix_records_captured_at_id"), ("score", "ix_records_score_id")):
        f = q.QueueFilter(sort=sort)
        stmt = (q.select(*q._ROW_COLUMNS).where(q._after(sort, (T0 if sort == "newest" else 0.6, "f" * 32)))
                .order_by(*q._order(sort)).limit(51))
        sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
        with store.engine.connect() as conn:
            plan = " | ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert index in plan and "TEMP B-TREE" not in plan, (f, plan)


# ---------------------------------------------------------------------- exports and CLI


def test_exports_csv_and_json(client: TestClient, ids: list[str]) -> None:
    tok = login(client)
    client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect", "defect_class": "dent", "comment": "a, \"b\""},
                headers={"X-CSRF-Token": tok})
    client.post(f"/api/items/{ids[1]}/verdict", json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": tok})
    client.post("/api/undo", headers={"X-CSRF-Token": tok})
    r = client.get("/export/verdicts.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["record_id"], row["verdict"], row["reviewer"]) for row in rows] == [(ids[0], "defect", "alice"),
                                                                                     (ids[1], "false_alarm", "alice")]
    assert rows[0]["comment"] == 'a, "b"' and rows[0]["defect_class"] == "dent" and rows[0]["undone_at"] == ""
    assert rows[1]["undone_at"] != "" and rows[0]["station"] == "line-1" and float(rows[0]["score"]) > 0
    data = client.get("/export/verdicts.json").json()["verdicts"]
    assert [(d["record_id"], d["undone_at"] is None) for d in data] == [(ids[0], True), (ids[1], False)]
    assert [d["record_id"] for d in client.get("/export/verdicts.json", params={"include_undone": False}).json()["verdicts"]] == [ids[0]]


def test_cli_users_and_feedback_export(store: ResultsStore, ids: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from inference.review import verdicts as vd
    from pipeline.data.feedback import read_feedback

    runner = CliRunner()
    db = store.url
    r = runner.invoke(app, ["users", "add", "dave", "--role", "admin", "--password", "dave-password", "--db", db])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["users", "add", "dave", "--password", "dave-password", "--db", db])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["users", "add", "eve", "--role", "boss", "--password", "eve-password", "--db", db])
    assert r.exit_code == 2 and "invalid role" in r.output
    r = runner.invoke(app, ["users", "add", "eve", "--password", "short", "--db", db])
    assert r.exit_code == 2 and "too short" in r.output
    r = runner.invoke(app, ["users", "add", "eve", "--db", db], input="eve-password\neve-password\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["users", "list", "--db", db])
    assert r.exit_code == 0 and "dave" in r.output and "admin" in r.output and "eve" in r.output
    with store.session() as s:
        vd.add_verdict(s, ids[0], "false_alarm", "dave")
        vd.add_verdict(s, ids[1], "defect", "dave", "crack")
    out = tmp_path / "out" / "feedback.json"
    r = runner.invoke(app, ["review", "--db", db, "export", "--feedback", str(out), "--product", "tiles", "--relative",
                            "--csv", str(tmp_path / "v.csv")])
    assert r.exit_code == 0, r.output
    items = read_feedback(out)
    assert sorted((it.record_id, it.verdict) for it in items) == sorted([(ids[0], "false_alarm"), (ids[1], "defect")])
    raw = json.loads(out.read_text())["items"]
    assert all(not Path(it["image"]).is_absolute() and (out.parent / it["image"]).is_file() for it in raw)
    assert (tmp_path / "v.csv").read_text().count("\n") == 3
    r = runner.invoke(app, ["review", "export", "--db", db])
    assert r.exit_code == 2 and "nothing to export" in r.output


def test_demo_login(store: ResultsStore, ids: list[str]) -> None:
    from inference.review.demo import prepare_demo_review

    info = prepare_demo_review(store.url, store.image_root)
    assert info["created"] and info["flagged"] == len(ids) and info["url"] == "http://127.0.0.1:8000/"
    assert info["username"] in info["text"] and info["password"] in info["text"] and "loupe review" in info["command"]
    again = prepare_demo_review(store.url, store.image_root)
    assert not again["created"]
    client = TestClient(create_app(store=store, secret_key="k"))
    r = client.post("/login", data={"username": info["username"], "password": info["password"], "csrf_token": token(client)},
                    follow_redirects=False)
    assert r.status_code == 303


def test_migration_0002_down_and_up(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from inference.store.migrate import upgrade

    store = ResultsStore(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert {"users", "verdicts"} <= set(inspect(store.engine).get_table_names())
        from alembic import command

        from inference.store.migrate import alembic_config

        cfg = alembic_config()
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        assert not {"users", "verdicts"} & set(inspect(store.engine).get_table_names())
        upgrade(store.engine)
        names = set(inspect(store.engine).get_table_names())
        indexes = {ix["name"] for ix in inspect(store.engine).get_indexes("records")}
        assert {"users", "verdicts"} <= names and {"ix_records_captured_at_id", "ix_records_score_id"} <= indexes
    finally:
        store.close()


def test_dashboard_numbers(client: TestClient, ids: list[str], store: ResultsStore) -> None:
    from inference.review import dashboard

    tok = login(client)
    for rid, verdict in ((ids[0], "false_alarm"), (ids[1], "false_alarm"), (ids[2], "defect"), (ids[7], "defect")):
        client.post(f"/api/items/{rid}/verdict", json={"verdict": verdict}, headers={"X-CSRF-Token": tok})
    client.post(f"/api/items/{ids[2]}/undo", headers={"X-CSRF-Token": tok})
    client.post(f"/api/items/{ids[2]}/verdict", json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": tok})
    with store.session() as s:
        models = {m.model_version: m for m in dashboard.model_stats(s)}
        series, stations, bucket = dashboard.flagged_rate(s)
    assert (models["m1"].records, models["m1"].defects, models["m1"].false_alarms) == (6, 0, 3)
    assert (models["m2"].records, models["m2"].defects, models["m2"].false_alarms) == (6, 1, 0)
    assert models["m1"].false_alarm_share == 1.0 and models["m2"].false_alarm_share == 0.0
    # every run: 100 frames, 3 flagged (fill's update_run), all started at T0
    assert bucket == "hour" and set(series) == {"line-1", "line-2"}
    assert series["line-1"] == [(T0, pytest.approx(0.03))]
    assert [(s.station, s.runs, s.frames, s.flagged) for s in stations] == [("line-1", 2, 200, 6), ("line-2", 2, 200, 6)]
    page = client.get("/dashboard").text
    assert "3 of 3" in page and "0 of 1" in page


def test_every_flagged_item_of_an_every_frame_run_is_in_the_queue(tiny_data: Path, tmp_path: Path,
                                                                   single_thread: None) -> None:
    """Acceptance: a real live-inspection run (policy every-frame, a tiny exported bundle) over the
    tiny data's test images; every record it stores appears in the review queue, and no other."""
    from inference.export import export_bundle
    from inference.live import LiveConfig, LiveInspector
    from inference.sources.arrays import ArraySource
    from pipeline.data.io import read_image
    from pipeline.steps import fit_step, pretrain_step

    run = tmp_path / "run"
    pretrain_step(tiny_data / "split.json", run, "smoke", epochs=0, progress=False)
    fit_step(run, tiny_data / "split.json", progress=False)
    bundle = tmp_path / "bundle"
    export_bundle(run, bundle, max_batch=8)
    frames = [read_image(p) for p in sorted((tiny_data / "test").rglob("*.png"))]
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        loop = LiveInspector(ArraySource(frames), str(bundle), store, LiveConfig(station="line-9", policy="every-frame"))
        summary = loop.run()
        store.flush(force=True)
        assert summary["frames"] == len(frames) and summary["dropped"] == 0
        record_ids = [r.id for r in store.records(summary["run_id"])]
        assert record_ids, "the tiny model flagged nothing; the test needs at least one flagged frame"
        assert len(record_ids) == summary["flagged"]
        with store.session() as s:
            add_user(s, "alice", PASSWORDS["alice"], "admin")
        client = TestClient(create_app(store=store, secret_key="k"))
        login(client)
        listed, cursor = [], None
        while True:
            body = client.get("/api/queue", params={"limit": 7, **({"after": cursor} if cursor else {})}).json()
            listed += [it["id"] for it in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sorted(listed) == sorted(record_ids)
        assert client.get("/api/queue").json()["counts"]["all"] == len(record_ids)
        assert client.get(f"/items/{listed[0]}").status_code == 200
    finally:
        store.close()


def test_postgresql_store(tmp_path: Path) -> None:
    """The same queries on PostgreSQL: seek pagination both ways, filters, counts, verdicts, undo, exports, dashboard."""
    import socket
    import uuid

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")
    import psycopg

    name = f"loupe_test_{uuid.uuid4().hex[:12]}"
    admin = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        store = ResultsStore(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", image_root=tmp_path / "images")
        try:
            ids = fill(store)
            with store.session() as s:
                add_user(s, "alice", PASSWORDS["alice"], "admin")
            client = TestClient(create_app(store=store, secret_key="k"))
            tok = login(client)
            for sort in ("newest", "score"):
                full = queue_ids(client, sort=sort, limit=100)
                first = client.get("/api/queue", params={"sort": sort, "limit": 5}).json()
                second = client.get("/api/queue", params={"sort": sort, "limit": 5, "after": first["next_cursor"]}).json()
                back = client.get("/api/queue", params={"sort": sort, "limit": 5, "before": second["prev_cursor"]}).json()
                assert [it["id"] for it in first["items"] + second["items"]] == full[:10]
                assert [it["id"] for it in back["items"]] == full[:5]
            assert queue_ids(client) == ids[::-1]
            client.post(f"/api/items/{ids[0]}/verdict", json={"verdict": "defect", "defect_class": "dent"}, headers={"X-CSRF-Token": tok})
            client.post(f"/api/items/{ids[1]}/verdict", json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": tok})
            client.post(f"/api/items/{ids[1]}/undo", headers={"X-CSRF-Token": tok})
            client.post(f"/api/items/{ids[3]}/verdict", json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": tok})
            assert queue_ids(client, status="defect") == [ids[0]]
            assert queue_ids(client, status="false_alarm") == [ids[3]]
            assert client.get("/api/queue", params={"station": "line-2"}).json()["counts"] == {
                "unreviewed": 5, "defect": 0, "false_alarm": 1, "all": 6}
            since = (T0 + timedelta(minutes=3)).isoformat()
            assert queue_ids(client, since=since, model_version="m1") == ids[3:6][::-1]
            items = {it["record_id"]: it["verdict"] for it in client.get("/export/feedback.json").json()["items"]}
            assert items == {ids[0]: "defect", ids[3]: "false_alarm"}
            assert len(client.get("/export/verdicts.json").json()["verdicts"]) == 3
            assert client.get("/dashboard").status_code == 200 and client.get(f"/items/{ids[4]}").status_code == 200
        finally:
            store.close()
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
