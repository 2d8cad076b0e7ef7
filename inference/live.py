"""Live inspection loop: source -> reader thread -> bounded queue -> micro-batcher -> runtime -> store.

    from inference.live import LiveConfig, LiveInspector
    from inference.sources import open_source
    from inference.store import ResultsStore

    loop = LiveInspector(open_source("line1.avi"), "bundle/", ResultsStore(), LiveConfig(station="line-1"))
    summary = loop.run()          # blocks until the source ends, max_frames, or loop.stop()

Threads:
* reader: iterates the source (`inference.sources`), stamps each frame with its read time
  and queues it. Policy `every-frame`: the queue (`queue_size`) blocks the reader when full
  (back-pressure on the source; nothing is dropped). Policy `latest`: the queue holds
  `max_batch` frames and the oldest queued frame is dropped (and counted) to make room, so
  inference always works on the newest frames.
* main (this thread): takes up to `max_batch` frames, waiting at most `max_wait_ms` after
  the first one (micro-batching), fits them to the bundle's input
  (`inference.live_prepare.prepare_frame`: the bundle never resizes), runs the bundle
  (`inference.runtime.BundleInspector`), feeds scores to drift watch and results to the
  reporter (`inference.live_strip`: one detection per flagged frame, or line-scan defects
  merged across tile borders). Between batches it swaps in a hot-reloaded model
  (`inference.live_model.ModelSlot`).
* sink: writes detections and run counters to the results store in order
  (`inference.store.ResultsStore`, which spools while the database is away and replays
  during quiet moments); its queue is bounded too (back-pressure, never a drop).

Every frame, once handled (inspected and, if flagged, stored; or counted as error or dropped),
is acknowledged to its source (`Source.ack`, through the sink so it follows the frame's
record): a folder source with a state file then continues after a restart where it stopped,
and folder files get deterministic record ids (`record_id`), so a file inspected again after
a crash never gets a second record.

Bad frames (unreadable, zero-size, wrong channel count or dtype) are counted as errors and
logged (the first 20, then every 100th); a batch the runtime fails on counts its frames as
errors (10 failing batches in a row stop the loop: the model, not the frames, is broken).

Counters: `read` frames taken from the source = `frames` (inspected) + `errors` + `dropped`;
`flagged_frames` frames the model flagged; `flagged` records stored (equal for frame
sources; merged line-scan defects count once).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from inference.drift import DriftConfig, DriftWatch
from inference.live_model import ModelSlot
from inference.live_prepare import prepare_frame
from inference.live_strip import Detection, FrameReporter, StripMerger
from inference.metrics_server import StationMetrics
from inference.runtime import FrameError
from inference.sources.base import Frame, Source
from inference.store.models import utcnow
from inference.store.store import ResultsStore

log = logging.getLogger("loupe.live")

POLICIES = ("every-frame", "latest")
_END = object()


@dataclass
class LiveConfig:
    """Settings of one live-inspection loop."""

    station: str = "station"
    policy: str = "every-frame"
    max_batch: int = 8
    max_wait_ms: float = 20.0
    queue_size: int = 64  # every-frame queue; latest keeps max_batch frames
    max_frames: Optional[int] = None  # stop after reading this many frames
    runtime: Optional[str] = None  # BundleInspector runtime (None: best available)
    reload_interval: float = 2.0  # registry polling (registry:PRODUCT models)
    counts_interval: float = 2.0  # run counters written to the store this often
    status_interval: float = 0.5  # status callback this often
    stall_after_s: float = 30.0  # /health says "stalled" when a stream/camera delivered nothing for this long
    drift: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {POLICIES}, got {self.policy!r}")
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.queue_size < 1:
            raise ValueError("--max-batch and the queue size must be >= 1 and --max-wait-ms >= 0")
        if self.max_frames is not None and self.max_frames < 0:
            raise ValueError("--max-frames must be >= 0")


#: Namespace of deterministic record ids (uuid5) for frames with a stable identity.
RECORD_NAMESPACE = uuid.UUID("6d1f3c2e-8a4b-4f0e-9b7a-2c5d8e1f4a30")


def record_id(station: str, det: Detection) -> Optional[str]:
    """uuid5 of (station, source, frame key) for frames with a stable identity (folder files), else None (uuid4)."""
    if det.key is None:
        return None
    return uuid.uuid5(RECORD_NAMESPACE, f"{station}\n{det.source}\n{det.key}").hex


def _percentile_ms(values: Any, q: float) -> Optional[float]:
    return float(np.percentile(np.fromiter(values, float), q) * 1000.0) if len(values) else None


class LiveInspector:
    """One station's loop over one source with one model (hot-reloadable)."""

    def __init__(self, source: Source, model: str | ModelSlot, store: Optional[ResultsStore], cfg: Optional[LiveConfig] = None,
                 *, metrics: Optional[StationMetrics] = None, status: Optional[Callable[[dict[str, Any]], None]] = None) -> None:
        cfg = cfg or LiveConfig()
        self.source, self.store, self.cfg, self.status_cb = source, store, cfg, status
        self.model = model if isinstance(model, ModelSlot) else ModelSlot(model, runtime=cfg.runtime, interval=cfg.reload_interval)
        self.metrics = metrics or StationMetrics(cfg.station)
        self.metrics.set_model(self.model.model_version)
        self.drift = DriftWatch.from_manifest(self.model.inspector.bundle.manifest, cfg.drift)
        axis = getattr(source, "axis", None)
        self.reporter: FrameReporter | StripMerger = StripMerger(axis) if axis in ("x", "y") else FrameReporter()
        qsize = cfg.max_batch if cfg.policy == "latest" else cfg.queue_size
        self.q: queue.Queue[tuple[Frame, float]] = queue.Queue(maxsize=qsize)
        self.sink_q: queue.Queue[Any] = queue.Queue(maxsize=256)
        self.read = self.frames = self.flagged = self.flagged_frames = self.dropped = self.errors = 0
        self.latencies: deque[float] = deque(maxlen=100_000)
        self.records_written = 0  # add_flagged calls done by the sink
        self.last_record_id: Optional[str] = None
        self.run_id: Optional[str] = None
        self.started = self.ended = None
        self._t0 = self._t_end = 0.0
        self._reader_done = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._errors_logged = 0
        self._fail_streak = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=50)  # (time, frames) for the status fps
        self.reader_error: Optional[BaseException] = None
        self.sink_error: Optional[BaseException] = None
        self.last_frame_at: Optional[float] = None
        self.running = False
        self._hard_stop = False  # the main loop died: the reader must not wait for queue space
        self._reader_thread: Optional[threading.Thread] = None
        self._started_wall: Optional[float] = None

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Stop reading; frames already queued are still inspected and stored."""
        self._stopping.set()
        self.source.stop.set()

    # ------------------------------------------------------------------ threads

    def _reader(self) -> None:
        try:
            if self.cfg.max_frames == 0:
                return
            for frame in self.source:
                item = (frame, time.perf_counter())
                with self._lock:
                    self.read += 1
                if self.cfg.policy == "latest":
                    while True:
                        try:
                            self.q.put_nowait(item)
                            break
                        except queue.Full:
                            try:
                                stale, _ = self.q.get_nowait()
                                with self._lock:
                                    self.dropped += 1
                                self.metrics.dropped.inc()
                                self._ack(stale)
                            except queue.Empty:
                                pass
                else:
                    while True:
                        try:
                            self.q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            if self._hard_stop:  # the main loop died: nobody will take this frame
                                return
                if self.cfg.max_frames is not None and self.read >= self.cfg.max_frames:
                    break
                if self._stopping.is_set():
                    break
        except BaseException as err:  # noqa: BLE001 - reported by run()
            self.reader_error = err
        finally:
            self.source.stop.set()
            self._reader_done.set()

    def _sink(self) -> None:
        assert self.store is not None and self.run_id is not None
        while True:
            try:
                item = self.sink_q.get(timeout=1.0)
            except queue.Empty:
                try:
                    self.store.flush()  # replay spooled operations during quiet moments
                except Exception as err:  # noqa: BLE001
                    log.error("results store replay failed: %s", err)
                self.metrics.spooled.set(self.store.pending)
                continue
            if item is _END:
                return
            if self.sink_error is not None:
                continue  # drain without writing: the loop is stopping
            kind, payload = item
            try:
                if kind == "ack":
                    self.source.ack(payload)
                elif kind == "record":
                    d: Detection = payload
                    rid = self.store.add_flagged(
                        self.run_id, record_id=record_id(self.cfg.station, d), frame=d.image, anomaly_map=d.anomaly_map, score=d.score, threshold=0.5,
                        is_defect=d.is_defect, model_version=d.model_version, station=self.cfg.station, source=d.source,
                        frame_index=d.frame_index, strip=d.strip, captured_at=d.captured_at)
                    self.records_written += 1
                    self.last_record_id = rid
                else:
                    self.store.update_run(self.run_id, **payload)
                self.metrics.spooled.set(self.store.pending)
            except BaseException as err:  # noqa: BLE001 - e.g. disk full: stop the loop, report it
                log.error("results store write failed: %s", err)
                self.sink_error = err
                self.stop()

    def _ack(self, frame: Frame) -> None:
        """Tell the source the frame is handled: after its record (if any) is written, so through the sink queue."""
        if self.store is not None and threading.current_thread() is not self._reader_thread:
            self.sink_q.put(("ack", frame))
        else:
            self.source.ack(frame)

    def _put_sink(self, item: Any) -> None:
        if self.store is not None:
            self.sink_q.put(item)  # blocks while the sink is behind: back-pressure, no drop

    # ------------------------------------------------------------------ main loop

    def _collect(self) -> Optional[list[tuple[Frame, float]]]:
        """Up to max_batch frames (waiting max_wait_ms after the first); [] on a quiet tick; None at the end."""
        try:
            first = self.q.get(timeout=0.1)
        except queue.Empty:
            return None if self._reader_done.is_set() and self.q.empty() else []
        items = [first]
        deadline = time.perf_counter() + self.cfg.max_wait_ms / 1000.0
        while len(items) < self.cfg.max_batch:
            try:
                items.append(self.q.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self._reader_done.is_set():
                break
            try:
                items.append(self.q.get(timeout=remaining))
            except queue.Empty:
                break
        return items

    def _bad(self, frame: Frame, why: str) -> None:
        self._ack(frame)  # a bad file stays bad: not read again after a restart
        self.errors += 1
        self.metrics.errors.inc()
        self._errors_logged += 1
        if self._errors_logged <= 20 or self._errors_logged % 100 == 0:
            log.warning("bad frame %d from %s (%s)%s: %s", frame.index, frame.source, frame.name or "-",
                        "" if self._errors_logged <= 20 else f" [{self._errors_logged} so far]", why)

    def _process(self, items: list[tuple[Frame, float]]) -> None:
        insp = self.model.inspector
        size, channels = insp.spec.size, insp.spec.channels
        good: list[tuple[Frame, float]] = []
        arrays = []
        for frame, t in items:
            if frame.image is None or frame.error:
                self._bad(frame, frame.error or "no image")
                continue
            try:
                arrays.append(prepare_frame(frame.image, size, channels))
                good.append((frame, t))
            except FrameError as err:
                self._bad(frame, str(err))
        if not good:
            return
        try:
            res = insp.run(np.stack(arrays))
        except Exception as err:  # noqa: BLE001 - count, log, go on (unless it keeps failing)
            self._fail_streak += 1
            for frame, _ in good:
                self._bad(frame, f"inference failed: {err}")
            if self._fail_streak >= 10:
                raise RuntimeError(f"inference failed on 10 batches in a row (last: {err}); stopping") from err
            return
        self._fail_streak = 0
        now = time.perf_counter()
        self.metrics.batch.observe(len(good))
        for (frame, t), score, amap, flag in zip(good, res.score, res.anomaly_map, res.is_defect):
            lat = now - t
            self.latencies.append(lat)
            self.metrics.latency.observe(lat)
            self.frames += 1
            self.metrics.frames.inc()
            if flag:
                self.flagged_frames += 1
            for det in self.reporter.feed(frame, float(score), amap, bool(flag), insp.model_version):
                self._emit(det)
            self._ack(frame)
        self.last_frame_at = time.time()
        self._recent.append((now, self.frames))
        self.drift.update(res.score.tolist())
        self.metrics.set_drift(self.drift.state())

    def _emit(self, det: Detection) -> None:
        self.flagged += 1
        self.metrics.flagged.inc()
        self._put_sink(("record", det))

    def _counts(self) -> dict[str, int]:
        return {"frames": self.frames, "flagged": self.flagged, "dropped": self.dropped, "errors": self.errors}

    def status(self) -> dict[str, Any]:
        """Live numbers: fps over the last few seconds, latency p50/p99 (last 1000 frames), counters."""
        fps = 0.0
        if len(self._recent) >= 2 and self._recent[-1][0] > self._recent[0][0]:
            fps = (self._recent[-1][1] - self._recent[0][1]) / (self._recent[-1][0] - self._recent[0][0])
        recent = list(self.latencies)[-1000:]
        return {"fps": fps, "p50_ms": _percentile_ms(recent, 50), "p99_ms": _percentile_ms(recent, 99), **self._counts(),
                "read": self.read, "queue": self.q.qsize(), "model_version": self.model.model_version,
                "spooled": self.store.pending if self.store is not None else 0, "drift": self.drift.alarm}

    def health(self) -> dict[str, Any]:
        """For /health: ok; degraded (database away, drift alarm); stalled (a stream or camera delivered nothing
        for `stall_after_s`: disconnected, reopening); stopped."""
        store_ok = self.store is None or self.store.available
        since = self.last_frame_at or self._started_wall
        stalled = (self.running and self.source.live and getattr(self.source, "stalls", True) and since is not None
                   and time.time() - since > self.cfg.stall_after_s)
        if not self.running:
            state = "stopped"
        elif stalled:
            state = "stalled"
        else:
            state = "ok" if store_ok and not self.drift.alarm else "degraded"
        return {"status": state, "reopens": getattr(self.source, "reopens", 0), "station": self.cfg.station, "source": self.source.spec, "model_version": self.model.model_version,
                "frames": self.frames, "errors": self.errors, "store_available": store_ok,
                "spooled": self.store.pending if self.store is not None else 0, "drift_alarm": self.drift.alarm,
                "last_frame_age_s": None if self.last_frame_at is None else round(time.time() - self.last_frame_at, 3)}

    def run(self) -> dict[str, Any]:
        """Run until the source ends, max_frames frames were read, or stop(); returns the summary."""
        self.started = utcnow()
        if self.store is not None:
            self.run_id = self.store.start_run(self.cfg.station, self.source.spec, self.model.model_version)
        reader = self._reader_thread = threading.Thread(target=self._reader, name="loupe-reader", daemon=True)
        sink = threading.Thread(target=self._sink, name="loupe-sink", daemon=True) if self.store is not None else None
        self.running = True
        self._started_wall = time.time()
        self._t0 = time.perf_counter()
        last_counts = last_status = self._t0
        error: Optional[BaseException] = None
        if sink is not None:
            sink.start()
        reader.start()
        try:
            while True:
                if self.model.swap_if_ready():
                    self.metrics.reloads.inc()
                    self.metrics.set_model(self.model.model_version)
                    self.drift = DriftWatch.from_manifest(self.model.inspector.bundle.manifest, self.cfg.drift)
                items = self._collect()
                if items is None:
                    break
                if items:
                    self._process(items)
                now = time.perf_counter()
                self.metrics.queue_depth.set(self.q.qsize())
                if now - last_counts >= self.cfg.counts_interval:
                    self._put_sink(("counts", self._counts()))
                    last_counts = now
                if self.status_cb is not None and now - last_status >= self.cfg.status_interval:
                    self.status_cb(self.status())
                    last_status = now
        except BaseException as err:
            error = err
            self._hard_stop = True
            self.stop()
        finally:
            reader.join(timeout=10)
            try:
                for det in self.reporter.flush():
                    self._emit(det)
            except Exception as err:  # noqa: BLE001
                error = error or err
            self._t_end = time.perf_counter()
            self.ended = utcnow()
            if self.store is not None and sink is not None:
                self._put_sink(("counts", self._counts()))
                self.sink_q.put(_END)
                sink.join()
            try:
                self.source.release()
            except Exception as err:  # noqa: BLE001
                log.error("could not release the source %s: %s", self.source.spec, err)
            summary = self.summary()
            if self.store is not None:
                self.store.end_run(self.run_id, summary)  # type: ignore[arg-type]
            self.model.close()
            self.running = False
        if self.status_cb is not None:
            self.status_cb(self.status())
        for err in (error, self.reader_error, self.sink_error):
            if err is not None:
                raise err
        return summary

    def summary(self) -> dict[str, Any]:
        secs = max((self._t_end or time.perf_counter()) - self._t0, 1e-9)
        lat = list(self.latencies)
        reopens = getattr(self.source, "reopens", 0)
        out: dict[str, Any] = {
            **self._counts(), "read": self.read, "flagged_frames": self.flagged_frames,
            "fps": self.frames / secs, "seconds": secs,
            "p50_ms": _percentile_ms(lat, 50), "p99_ms": _percentile_ms(lat, 99),
            "mean_ms": float(np.mean(lat) * 1000.0) if lat else None,
            "model_version": self.model.model_version, "model_versions": list(dict.fromkeys(self.model.history)),
            "reloads": self.model.reloads, "runtime": self.model.inspector.runtime,
            "station": self.cfg.station, "source": self.source.spec, "policy": self.cfg.policy,
            "max_batch": self.cfg.max_batch, "max_wait_ms": self.cfg.max_wait_ms, "reopens": reopens,
            "run_id": self.run_id, "records": self.records_written,
            "started_at": self.started.isoformat() if self.started else None,
            "ended_at": self.ended.isoformat() if self.ended else None, "drift": self.drift.state(),
        }
        if isinstance(self.reporter, StripMerger):
            out["merged_tiles"] = self.reporter.merged_tiles
        if self.store is not None:
            out["store"] = {"url": repr(self.store), "image_root": str(self.store.image_root), "spooled": self.store.spooled_total,
                            "replayed": self.store.replayed_total, "pending": self.store.pending}
        return out
