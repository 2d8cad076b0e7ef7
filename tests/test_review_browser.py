"""End to end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

A uvicorn server runs the review app in a thread over a SQLite results store filled by
`ResultsStore.add_flagged` with synthetic defect images. The browser logs in, opens the
queue, opens an item, presses F, and the verdict row is checked in the database and in
the feedback manifest; then U undoes it.

With LOUPE_SCREENSHOTS=1 the queue, item and dashboard pages are saved to
docs/review-queue.png, docs/review-item.png and docs/review-dashboard.png (the pictures
in the README).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from sqlalchemy import select

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[1] / "docs"
USER, PASSWORD = "rita", "rita-password"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make setup does) to run the browser tests",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
uvicorn = pytest.importorskip("uvicorn")

from inference.review.app import create_app  # noqa: E402
from inference.review.models import Verdict  # noqa: E402
from inference.review.users import add_user  # noqa: E402
from inference.store import ResultsStore  # noqa: E402
from pipeline.data.synthetic import add_defect, make_surface  # noqa: E402

T0 = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)
KINDS = ("scratch", "spot", "crack", "contamination", "dent", "scratch")


def _fill(store: ResultsStore) -> list[str]:
    """Six flagged frames: synthetic surfaces with one defect each, the map a blurred defect mask."""
    rng = np.random.default_rng(7)
    ids = []
    for i, kind in enumerate(KINDS):
        station = ("line-1", "line-2")[i % 2]
        model = "3f2a9c1b" if i < 3 else "7c41d0e2"
        run = store.start_run(station, f"camera-{station}", model, started_at=T0 + timedelta(hours=i))
        image, mask = add_defect(rng, make_surface(rng, "brushed_metal", (192, 192)), kind)
        m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 4.0)
        m = 0.95 * m / max(float(m.max()), 1e-6) + rng.uniform(0.0, 0.15, m.shape).astype(np.float32)
        ids.append(store.add_flagged(run, frame=image, anomaly_map=m, score=float(0.52 + 0.07 * i), threshold=0.5,
                                     is_defect=True, model_version=model, station=station, source=f"camera-{station}",
                                     frame_index=100 + i, captured_at=T0 + timedelta(hours=i, minutes=3)))
        store.update_run(run, frames=400 + 50 * i, flagged=3 + i)
    return ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ResultsStore, list[str]]]:
    root = tmp_path_factory.mktemp("review")
    store = ResultsStore(f"sqlite:///{root / 'results.db'}")
    ids = _fill(store)
    with store.session() as s:
        add_user(s, USER, PASSWORD, "reviewer")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(store=store, secret_key="browser-test"), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store, ids
    srv.should_exit = True
    thread.join(timeout=10)
    store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def _verdicts(store: ResultsStore) -> list[Verdict]:
    with store.session() as s:
        return list(s.scalars(select(Verdict).order_by(Verdict.id)))


def _wait_for(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001 - a no-argument callable
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_login_queue_item_press_f_undo(server: tuple[str, ResultsStore, list[str]], browser: object) -> None:
    base, store, ids = server
    shots = os.environ.get("LOUPE_SCREENSHOTS") == "1"
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # not logged in: the queue sends us to the login page
    page.goto(f"{base}/queue")
    assert "/login" in page.url
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/queue")

    # the queue lists every flagged record, newest first
    rows = page.locator("table.queue-table tbody tr")
    assert rows.count() == len(ids)
    assert page.locator("a.item-link").first.get_attribute("href") == f"/items/{ids[-1]}"
    assert "6 flagged" in page.locator("#counts").inner_text()
    page.wait_for_load_state("networkidle")
    if shots:
        page.screenshot(path=str(DOCS / "review-queue.png"), full_page=True)

    # open the newest item
    page.locator("a.item-link").first.click()
    page.wait_for_url(f"{base}/items/{ids[-1]}")
    page.wait_for_load_state("networkidle")
    for img in ("#original", "#heatmap", "#outline"):  # every picture loaded (served with the session cookie)
        assert page.eval_on_selector(img, "el => el.complete && el.naturalWidth") == 192, img
    page.locator("#opacity").fill("35")
    assert page.eval_on_selector("#heatmap", "el => el.style.opacity") == "0.35"
    page.locator("#opacity").fill("55")
    page.locator("#opacity").press("Escape")  # the slider keeps its arrow keys until you leave it
    if shots:
        page.screenshot(path=str(DOCS / "review-item.png"), full_page=True)

    # arrows move through the queue
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"{base}/items/{ids[-2]}")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(f"{base}/items/{ids[-1]}")

    # F: false alarm, stored with the reviewer, and the next item opens
    page.keyboard.press("f")
    page.wait_for_url(f"{base}/items/{ids[-2]}")
    rows_db = _verdicts(store)
    assert [(v.record_id, v.verdict, v.reviewer, v.undone_at) for v in rows_db] == [(ids[-1], "false_alarm", USER, None)]
    assert abs(rows_db[0].created_at - datetime.now(timezone.utc)) < timedelta(minutes=5)

    # ... and it is in the feedback manifest the training flow reads
    manifest = page.request.get(f"{base}/export/feedback.json").json()
    assert [(it["record_id"], it["verdict"], it["reviewer"]) for it in manifest["items"]] == [(ids[-1], "false_alarm", USER)]
    assert Path(manifest["items"][0]["image"]).is_file()

    # D with a class typed in the form
    page.fill("input[name=defect_class]", "scratch")
    page.locator("input[name=defect_class]").press("Escape")  # leave the field; keys act again
    page.keyboard.press("d")
    page.wait_for_url(f"{base}/items/{ids[-3]}")
    assert [(v.record_id, v.verdict, v.defect_class) for v in _verdicts(store)][-1] == (ids[-2], "defect", "scratch")

    # U: undo the last verdict (kept, with undone_at) and go back to that item
    page.keyboard.press("u")
    page.wait_for_url(f"{base}/items/{ids[-2]}")
    _wait_for(lambda: _verdicts(store)[-1].undone_at is not None)
    assert len(_verdicts(store)) == 2
    assert page.locator("#status").inner_text() == "unreviewed"

    # the dashboard draws its two charts
    page.goto(f"{base}/dashboard")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("svg.chart polyline").count() == 2  # one line per station
    if shots:
        page.screenshot(path=str(DOCS / "review-dashboard.png"), full_page=True)
    assert not errors, errors
    context.close()


def test_browser_without_login_gets_no_images(server: tuple[str, ResultsStore, list[str]], browser: object) -> None:
    base, store, _ = server
    context = browser.new_context()
    rec = store.records()[0]
    assert context.request.get(f"{base}/images/{rec.image_path}").status == 401
    assert context.request.get(f"{base}/api/queue").status == 401
    context.close()
