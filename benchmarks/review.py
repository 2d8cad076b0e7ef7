"""Review-app benchmark: how long the queue page takes with many flagged records.

    python benchmarks/review.py [--n 10000 100000] [--repeats 7] [--out benchmarks/results/review.json]

For each N, fills a fresh SQLite results store with N flagged records (rows inserted in bulk; they
share a couple of image files written by `ResultsStore.add_flagged`, since only the
rows matter here), gives a verdict to 30% of them, logs in through FastAPI's
TestClient and times full server-side renders of: the first queue page, a deep page
(seek cursor at 75% of the queue), the first page by score, the unreviewed filter, a
station filter, the JSON queue, and an item page. Each is measured `--repeats` times;
the JSON has the median and the max in milliseconds per N. Target: under 1 s per
queue page at 10k records.
Wall-clock times: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402

TARGET_S = 1.0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fill(store: Any, n: int, seed: int = 0) -> list[str]:
    """N records over 4 stations and 3 model versions, one every 3 s; 30% with a verdict. Returns ids newest first."""
    import numpy as np
    from sqlalchemy import insert

    from inference.review.models import User, Verdict
    from inference.review.users import hash_password
    from inference.store.models import Record, Run, new_id

    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
    frame = rng.integers(0, 255, (128, 128), dtype=np.uint8)
    m = np.zeros((128, 128), np.float32)
    m[40:70, 50:90] = 0.9
    run = store.start_run("station-0", "bench", "model-0", started_at=t0)
    first = store.add_flagged(run, frame=frame, anomaly_map=m, score=0.9, threshold=0.5, is_defect=True,
                              model_version="model-0", station="station-0", source="bench", frame_index=0, captured_at=t0)
    rec = next(r for r in store.records(run) if r.id == first)
    stations = [f"station-{i}" for i in range(4)]
    models = [f"model-{i}" for i in range(3)]
    runs = {(s, mv): new_id() for s in stations for mv in models}
    rows, verdicts = [], []
    for i in range(1, n):
        station, mv = stations[i % 4], models[(i * 3) // n]
        rid = new_id()
        rows.append(dict(id=rid, run_id=runs[(station, mv)], station=station, source="bench", frame_index=i,
                         captured_at=t0 + timedelta(seconds=3 * i), score=float(0.5 + rng.gamma(2.0, 0.1)), threshold=0.5,
                         is_defect=True, model_version=mv, image_path=rec.image_path, map_path=rec.map_path,
                         overlay_path=rec.overlay_path, width=128, height=128))
        if rng.random() < 0.3:
            verdicts.append(dict(record_id=rid, verdict="false_alarm" if rng.random() < 0.6 else "defect", reviewer="bench",
                                 created_at=t0 + timedelta(seconds=3 * i + 60)))
    with store.session() as s:
        s.execute(insert(Run), [dict(id=rid, station=st, source="bench", model_version=mv, started_at=t0, frames=10 * n,
                                     flagged=n // 12, dropped=0, errors=0) for (st, mv), rid in runs.items()])
        for k in range(0, len(rows), 5000):
            s.execute(insert(Record), rows[k:k + 5000])
        s.execute(insert(Verdict), verdicts)
        s.add(User(username="bench", password_hash=hash_password("bench-password", rounds=4), role="admin"))
    with store.session() as s:
        from sqlalchemy import select

        return list(s.scalars(select(Record.id).order_by(Record.captured_at.desc(), Record.id.desc())))


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up: template compilation, first connection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_ms": round(1000 * statistics.median(times), 2), "max_ms": round(1000 * max(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10000, 100000], help="flagged records in the store (one run each)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "review.json")
    args = parser.parse_args()

    import re

    from fastapi.testclient import TestClient

    from inference.review.app import create_app
    from inference.review.queue import encode_cursor, get_row
    from inference.store import ResultsStore

    runs = [bench(n, args.repeats) for n in args.n]
    out = {
        "benchmark": "review queue rendering (FastAPI TestClient, SQLite, server-side templates)",
        "reviewed_fraction": 0.3, "page_size": 50, "repeats": args.repeats, "target_ms": 1000 * TARGET_S, "runs": runs,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "note": "wall-clock on a shared 2-core machine (other jobs running): upper bounds",
        "commit": _commit(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(args.out, out)
    for run in runs:
        for name, r in run["results"].items():
            print(f"{run['records']:>7} {name:<26} median {r['median_ms']:8.1f} ms   max {r['max_ms']:8.1f} ms")
        print(f"{run['records']:>7} records: worst queue median {run['worst_queue_median_ms']:.1f} ms "
              f"(target < {1000 * TARGET_S:.0f} ms)")
    print(f"-> {args.out}")


def bench(n: int, repeats: int) -> dict[str, Any]:
    """Fill a store with n records and time the pages; one entry of the JSON's `runs`."""
    import re

    from fastapi.testclient import TestClient

    from inference.review.app import create_app
    from inference.review.queue import encode_cursor, get_row
    from inference.store import ResultsStore

    with tempfile.TemporaryDirectory(prefix="loupe-review-bench-") as tmp:
        store = ResultsStore(f"sqlite:///{Path(tmp) / 'results.db'}")
        t = time.perf_counter()
        ids = fill(store, n)
        fill_s = time.perf_counter() - t
        client = TestClient(create_app(store=store, secret_key="bench"))
        tok = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        r = client.post("/login", data={"username": "bench", "password": "bench-password", "csrf_token": tok},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        deep_index = int(0.75 * len(ids))
        with store.session() as s:
            deep = get_row(s, ids[deep_index])
        deep_cursor = encode_cursor((deep.captured_at, deep.id))

        def page(path: str, **params: Any) -> Callable[[], Any]:
            def run() -> None:
                resp = client.get(path, params=params)
                assert resp.status_code == 200, (path, params, resp.status_code)
                if path == "/queue":
                    assert resp.text.count('class="item-link"') == 50, (path, params)
            return run

        cases = {
            "queue_first_page": page("/queue"),
            "queue_deep_page": page("/queue", after=deep_cursor),
            "queue_by_score": page("/queue", sort="score"),
            "queue_unreviewed": page("/queue", status="unreviewed"),
            "queue_station_filter": page("/queue", station="station-2"),
            "queue_deep_page_by_score": page("/queue", sort="score", after=_score_cursor(store, ids, deep_index)),
            "api_queue_first_page": page("/api/queue"),
            "item_page": page(f"/items/{ids[deep_index]}"),
            "dashboard": page("/dashboard"),
        }
        results = {name: measure(fn, repeats) for name, fn in cases.items()}
        store.close()
    worst = max(r["median_ms"] for name, r in results.items() if name.startswith("queue"))
    return {"records": n, "fill_seconds": round(fill_s, 2), "results": results, "worst_queue_median_ms": worst,
            "meets_target": worst < 1000 * TARGET_S}


def _score_cursor(store: Any, ids: list[str], index: int) -> str:
    """Cursor at position `index` of the by-score order."""
    from sqlalchemy import select

    from inference.review.queue import encode_cursor
    from inference.store.models import Record

    with store.session() as s:
        row = s.execute(select(Record.score, Record.id).order_by(Record.score.desc(), Record.id.desc())
                        .offset(index).limit(1)).one()
    return encode_cursor((row.score, row.id))


if __name__ == "__main__":
    main()
