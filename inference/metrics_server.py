"""Station metrics for Prometheus and a health endpoint (`loupe inspect --metrics-port P`).

    GET /metrics   Prometheus text format:
        loupe_frames_total{station}     frames inspected
        loupe_flagged_total{station}    records stored (flagged frames / merged line-scan defects)
        loupe_dropped_total{station}    frames dropped by the `latest` policy
        loupe_errors_total{station}     bad frames (unreadable, zero-size, wrong channels) and failed batches
        loupe_latency_seconds{station}  histogram: frame read -> result
        loupe_batch_size{station}       histogram of micro-batch sizes
        loupe_model_info{station, model_version}   1 for the model in use
        loupe_model_reloads_total{station}
        loupe_drift_alarm / loupe_drift_psi / loupe_drift_ks_pvalue {station}
        loupe_queue_depth{station}, loupe_store_spooled{station}
    GET /health    JSON {"status": "ok"|"degraded"|"stalled"|"stopped", ...}; HTTP 200 for ok and
                   degraded (database away: records spooled; drift alarm), 503 for stalled (a stream or
                   camera delivered nothing for 30 s) and stopped.

Each `StationMetrics` has its own `CollectorRegistry`, so several can live in one process.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class StationMetrics:
    """The counters and gauges of one station."""

    def __init__(self, station: str) -> None:
        self.station = station
        self.registry = CollectorRegistry()
        r, lab = self.registry, ["station"]
        self.frames = Counter("loupe_frames", "Frames inspected", lab, registry=r).labels(station)
        self.flagged = Counter("loupe_flagged", "Records stored (flagged frames, merged line-scan defects)", lab, registry=r).labels(station)
        self.dropped = Counter("loupe_dropped", "Frames dropped by the latest policy", lab, registry=r).labels(station)
        self.errors = Counter("loupe_errors", "Bad frames and failed batches", lab, registry=r).labels(station)
        self.reloads = Counter("loupe_model_reloads", "Hot reloads of the model", lab, registry=r).labels(station)
        self.latency = Histogram("loupe_latency_seconds", "Frame read to result", lab, buckets=LATENCY_BUCKETS, registry=r).labels(station)
        self.batch = Histogram("loupe_batch_size", "Micro-batch sizes", lab, buckets=(1, 2, 4, 8, 16, 32, 64), registry=r).labels(station)
        self._model = Gauge("loupe_model_info", "Model version in use (value 1)", ["station", "model_version"], registry=r)
        self.drift_alarm = Gauge("loupe_drift_alarm", "1 while the score distribution has shifted", lab, registry=r).labels(station)
        self.drift_psi = Gauge("loupe_drift_psi", "PSI of recent scores vs the reference", lab, registry=r).labels(station)
        self.drift_p = Gauge("loupe_drift_ks_pvalue", "KS p-value of recent scores vs the reference", lab, registry=r).labels(station)
        self.queue_depth = Gauge("loupe_queue_depth", "Frames waiting for inference", lab, registry=r).labels(station)
        self.spooled = Gauge("loupe_store_spooled", "Store operations waiting in the spool", lab, registry=r).labels(station)
        self.model_version: str | None = None

    def set_model(self, version: str) -> None:
        if self.model_version is not None:
            self._model.remove(self.station, self.model_version)
        self._model.labels(self.station, version).set(1)
        self.model_version = version

    def set_drift(self, state: dict[str, Any]) -> None:
        self.drift_alarm.set(1 if state.get("alarm") else 0)
        if state.get("psi") is not None:
            self.drift_psi.set(state["psi"])
        if state.get("p_value") is not None:
            self.drift_p.set(state["p_value"])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """HTTP server for /metrics and /health in a daemon thread; `port=0` picks a free port (see `.port`)."""

    def __init__(self, metrics: StationMetrics, health: Callable[[], dict[str, Any]], port: int, host: str = "0.0.0.0") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, ctype, code = metrics.exposition(), CONTENT_TYPE_LATEST, 200
                elif path in ("/health", "/healthz"):
                    state = health()
                    body = (json.dumps(state) + "\n").encode()
                    ctype, code = "application/json", 200 if state.get("status") in ("ok", "degraded") else 503
                else:
                    body, ctype, code = b"not found: try /metrics or /health\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: scrapes every few seconds
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.started = time.time()
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="loupe-metrics", daemon=True)
        self.thread.start()
        outer.metrics = metrics

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
