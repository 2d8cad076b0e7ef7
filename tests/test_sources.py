"""Frame sources: video files, HTTP streams (reopen with backoff), folder watcher, line-scan tiling and
de-duplication across tile borders, GenICam (simulated producer), frame preparation."""
from __future__ import annotations

import functools
import logging
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from inference.live_prepare import prepare_frame
from inference.live_strip import FrameReporter, StripMerger
from inference.runtime import FrameError
from inference.sources import FolderSource, LineTiler, SourceError, TileConfig, VideoSource, open_source
from inference.sources.base import Frame


def frames_rgb(n: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    assert vw.isOpened(), "OpenCV cannot write FFV1 .avi here"
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


# ----------------------------------------------------------------------------- video and streams


def test_video_file_frames_in_order(tmp_path: Path) -> None:
    want = frames_rgb(12)
    src = open_source(str(write_video(tmp_path / "v.avi", want)))
    assert isinstance(src, VideoSource) and src.kind == "file" and not src.live
    got = list(src)
    assert [f.index for f in got] == list(range(12))
    assert all(np.array_equal(f.image, w) for f, w in zip(got, want))  # FFV1 is lossless; RGB out


def test_missing_video_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope.avi"))
    with pytest.raises(SourceError, match="not a folder"):
        open_source(f"folder:{tmp_path / 'nope'}")


class _FlakyHandler(SimpleHTTPRequestHandler):
    """Serves files; refuses the first `fail_first` requests with 503 (a camera still booting)."""

    fail_first = 0
    requests = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests += 1
        if type(self).requests <= type(self).fail_first:
            self.send_error(503, "camera not ready")
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_stream(tmp_path: Path) -> Iterator[tuple[str, type[_FlakyHandler]]]:
    write_video(tmp_path / "cam.avi", frames_rgb(10))
    handler = type("Handler", (_FlakyHandler,), {"fail_first": 2, "requests": 0})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/cam.avi", handler
    srv.shutdown()
    srv.server_close()


def test_stream_errors_and_ends_are_reopened_with_backoff(http_stream: tuple[str, type], caplog: pytest.LogCaptureFixture) -> None:
    url, handler = http_stream
    caplog.set_level(logging.WARNING, "loupe.sources.video")
    src = open_source(url, backoff_initial=0.05, backoff_max=1.0)
    assert src.kind == "stream" and src.live
    got = []
    for f in src:
        got.append(f)
        if len(got) == 25:  # the 10-frame stream "ends" twice in between: not a normal end for a stream
            src.close()
    assert [f.index for f in got] == list(range(25))
    msgs = [r.getMessage() for r in caplog.records]
    waits = [m for m in msgs if "could not open it; reopening in" in m]
    assert "reopening in 0.05 s (attempt 1)" in waits[0] and "reopening in 0.10 s (attempt 2)" in waits[1]  # backoff doubles
    assert sum("stream ended; reopening" in m for m in msgs) >= 2 and src.reopens >= 3


def test_stream_gives_up_after_max_reopens(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "loupe.sources.video")
    src = VideoSource("http://127.0.0.1:9/none.avi", backoff_initial=0.01, max_reopens=2)  # port 9: nothing listens
    assert list(src) == []
    assert any("giving up after 2 reopen attempts" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- folder watcher


def test_folder_watcher_stable_ordered_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    imgs = frames_rgb(4, (32, 32))
    cv2.imwrite(str(inbox / "b.png"), imgs[1])
    cv2.imwrite(str(inbox / "a.png"), imgs[0])
    (inbox / ".c.png.tmp").write_bytes(b"partial")  # temp files are ignored
    (inbox / "notes.txt").write_text("not an image")
    src = FolderSource(inbox, poll_interval=0.05, stable_seconds=0.6, idle_timeout=1.2)
    got: list[Frame] = []

    def writer() -> None:
        time.sleep(0.9)  # a and b are taken at ~0.6 s
        ok, buf = cv2.imencode(".png", imgs[2])
        data = buf.tobytes()
        with open(inbox / "c.png", "wb") as f:  # written slowly: must not be read half-way
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.3)
            f.write(data[len(data) // 2 :])
        (inbox / "d.png").write_bytes(b"\x89PNG garbage")  # unreadable -> error frame
        (inbox / "a.png").touch()  # touched again: never re-read

    t = threading.Thread(target=writer)
    t.start()
    for f in src:
        got.append(f)
    t.join()
    assert [f.name for f in got] == ["a.png", "b.png", "c.png", "d.png"]
    assert [f.index for f in got] == [0, 1, 2, 3]
    for f, want in zip(got[:3], imgs[:3]):
        assert f.error is None and np.array_equal(f.image, cv2.cvtColor(want, cv2.COLOR_BGR2RGB))
    assert got[3].image is None and "not a decodable image" in got[3].error


def test_folder_watcher_new_files_only(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "old.png"), frames_rgb(1, (8, 8))[0])
    src = FolderSource(tmp_path, poll_interval=0.05, stable_seconds=0.1, idle_timeout=0.5, existing=False)
    threading.Timer(0.1, lambda: cv2.imwrite(str(tmp_path / "new.png"), frames_rgb(1, (8, 8))[0])).start()
    assert [f.name for f in src] == ["new.png"]


# ----------------------------------------------------------------------------- line scan


def test_tiler_covers_strip_with_overlap() -> None:
    rng = np.random.default_rng(1)
    strip = rng.integers(0, 256, (300, 100), dtype=np.uint8)  # scan along y, sensor 100 px wide
    tiler = LineTiler(TileConfig(tile_height=64, overlap=16, width=60), 100)
    tiles = []
    for y in range(0, 300, 37):  # blocks of an odd size
        tiles += tiler.push(strip[y : y + 37])
    tiles += tiler.finish()
    ys = sorted({p[0] for _, p in tiles})
    assert ys == [0, 48, 96, 144, 192, 236]  # stride 48; the last one aligned to the end (300 - 64)
    assert sorted({p[2] for _, p in tiles}) == [0, 40]  # across: 60 wide, last aligned to the edge
    covered = np.zeros_like(strip, bool)
    for tile, (y0, y1, x0, x1) in tiles:
        assert tile.shape == (64, 60) and np.array_equal(tile, strip[y0:y1, x0:x1])
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_linescan_strip_and_block_folder_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    strip = rng.integers(0, 256, (64, 400), dtype=np.uint8)  # a make_strip-like strip: scan along x
    cv2.imwrite(str(tmp_path / "strip.png"), strip)
    a = list(open_source(f"linescan:{tmp_path / 'strip.png'}", tiles=TileConfig(overlap=16, block_lines=50)))
    assert all(f.image.shape == (64, 64) for f in a)
    for f in a:
        y0, y1, x0, x1 = f.strip
        assert (y0, y1) == (0, 64) and np.array_equal(f.image, strip[y0:y1, x0:x1])
    assert a[-1].strip[3] == 400 and [f.strip[2] for f in a[:3]] == [0, 48, 96]
    blocks = tmp_path / "blocks"
    blocks.mkdir()
    for i, x in enumerate(range(0, 400, 80)):  # the camera's line blocks: columns here
        cv2.imwrite(str(blocks / f"{i:04d}.png"), strip[:, x : x + 80])
    b = list(open_source(f"linescan:{blocks}", tiles=TileConfig(overlap=16, axis="x"), idle_timeout=0.3))
    assert [f.strip for f in b] == [f.strip for f in a]
    assert all(np.array_equal(fa.image, fb.image) for fa, fb in zip(a, b))


def _tile_frame(index: int, strip: tuple[int, int, int, int]) -> Frame:
    y0, y1, x0, x1 = strip
    return Frame(index=index, image=np.full((y1 - y0, x1 - x0), index, np.uint8), source="linescan:x", strip=strip)


def test_defect_across_a_tile_border_is_reported_once() -> None:
    merger = StripMerger(axis="x")
    # tiles 64 wide, stride 48 (overlap 16) along x; a defect at strip x 100..120 lies in tiles 1 (48..112) and 2 (96..160)
    out = []
    for i, x0 in enumerate([0, 48, 96, 144, 192, 240]):
        m = np.zeros((64, 64), np.float32)
        lo, hi = max(100 - x0, 0), min(120 - x0, 64)
        if lo < hi:
            m[20:30, lo:hi] = 0.9
        if i == 5:
            m[5:10, 40:50] = 0.8  # a second defect, alone in the last tile
        flagged = bool(m.max() >= 0.5)
        out += merger.feed(_tile_frame(i, (0, 64, x0, x0 + 64)), float(m.max()), m, flagged, "v1")
    out += merger.flush()
    assert len(out) == 2
    first, second = sorted(out, key=lambda d: d.strip[2])
    assert first.strip == (0, 64, 48, 160) and first.tiles == 2 and first.image.shape == (64, 112)
    assert (first.anomaly_map >= 0.5).sum() == 10 * 20  # the defect's pixels, once, in crop coordinates
    assert np.array_equal(np.argwhere(first.anomaly_map >= 0.5).min(0), [20, 100 - 48])
    assert second.strip == (0, 64, 240, 304) and second.tiles == 1 and second.frame_index == 5


def test_frame_reporter_reports_flagged_frames_only() -> None:
    r = FrameReporter()
    f = Frame(index=3, image=np.zeros((8, 8), np.uint8), source="v")
    assert r.feed(f, 0.2, np.zeros((4, 4)), False, "v1") == []
    (d,) = r.feed(f, 0.7, np.ones((4, 4)), True, "v1")
    assert d.frame_index == 3 and d.score == 0.7 and d.strip is None


# ----------------------------------------------------------------------------- frame preparation


def test_prepare_frame_matches_training_and_refuses_bad_frames() -> None:
    from pipeline.data.tensors import resize_image

    rgb = frames_rgb(1, (100, 120))[0]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(prepare_frame(rgb, 64, 1)[:, :, 0], resize_image(gray, 64))
    assert prepare_frame(gray, 64, 3).shape == (64, 64, 3)
    assert prepare_frame(np.dstack([rgb, np.zeros((100, 120), np.uint8)]), 32, 3).shape == (32, 32, 3)  # alpha dropped
    assert prepare_frame(np.zeros((10, 10), np.uint16) + 65535, 8, 1).max() == 255
    for bad, msg in [(None, "no image"), (np.zeros((0, 5), np.uint8), "zero size"), (np.zeros((8, 8, 2), np.uint8), "2 channels"),
                     (np.zeros((8, 8, 5), np.uint8), "5 channels"), (np.zeros((8, 8), np.float32), "pixel type"),
                     (np.zeros((2, 8, 8, 3), np.uint8), "4 dimensions")]:
        with pytest.raises(FrameError, match=msg):
            prepare_frame(bad, 16, 1)


# ----------------------------------------------------------------------------- GenICam


def test_genicam_simulated_producer() -> None:
    pytest.importorskip("harvesters", reason="optional extra loupe[genicam] (harvesters) not installed")
    from inference.sources.genicam import simulated_producer

    cti = simulated_producer()
    if cti is None:
        pytest.skip("the genicam package ships no simulated producer (viky.cti) here")
    src = open_source(f"genicam:{cti}#0")
    got = []
    for f in src:
        got.append(f)
        if len(got) == 3:
            src.close()
    assert [f.index for f in got] == [0, 1, 2]
    assert all(f.error is None and f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3 for f in got)


def test_strip_axis_is_known_at_open(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((32, 200), np.uint8))
    cv2.imwrite(str(tmp_path / "tall.png"), np.zeros((200, 32), np.uint8))
    assert open_source(f"linescan:{tmp_path / 'wide.png'}").axis == "x"  # the loop's merger needs it before reading
    assert open_source(f"linescan:{tmp_path / 'tall.png'}").axis == "y"
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(SourceError, match="not a decodable image"):
        open_source(f"linescan:{tmp_path / 'bad.png'}")
