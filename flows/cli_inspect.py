"""`loupe` commands for live inspection on camera feeds (issue 6): inspect.

Registered on the main app by `flows.cli`; heavy imports stay inside the commands so
that `loupe --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

_SOURCE_HELP = ("A video file, a stream URL (rtsp://, http://), a camera index, folder:PATH (new image files), "
                "linescan:PATH (a strip image or a folder of line blocks) or genicam:PRODUCER.cti (optionally #DEVICE: index or id).")


def _fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def status_line(s: dict[str, Any]) -> str:
    """One-line live status: fps, latency p50/p99, counters."""
    extra = ""
    if s.get("spooled"):
        extra += f" | spooled {s['spooled']}"
    if s.get("drift"):
        extra += " | DRIFT"
    return (f"{s['fps']:6.1f} fps | p50 {_fmt_ms(s['p50_ms'])} ms p99 {_fmt_ms(s['p99_ms'])} ms | frames {s['frames']} "
            f"flagged {s['flagged']} dropped {s['dropped']} errors {s['errors']} | model {s['model_version']}{extra}")


def default_state_file(station: str, source: str) -> Path:
    """$LOUPE_HOME/live/state/<station>-<sha256(resolved folder)[:12]>.done"""
    import hashlib
    import re

    from inference.store import loupe_home

    folder = Path(source[len("folder:"):]).expanduser().resolve()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", station)[:64] or "station"
    return loupe_home() / "live" / "state" / f"{safe}-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}.done"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `loupe` app."""

    @app.command()
    def inspect(
        source: str = typer.Option(..., "--source", "-s", help=_SOURCE_HELP),
        model: str = typer.Option(..., "--model", "-m", help="A bundle folder (loupe export) or registry:PRODUCT (hot-reloaded when its current version changes)."),
        station: str = typer.Option(..., "--station", help="Station id recorded with every run and record."),
        db: Optional[str] = typer.Option(None, "--db", help="Results database URL (default sqlite:///$LOUPE_HOME/results/results.db; postgresql+psycopg://... for PostgreSQL)."),
        image_root: Optional[Path] = typer.Option(None, "--image-root", help="Folder for record images (default: images/ next to a SQLite file, else $LOUPE_HOME/results/images)."),
        policy: str = typer.Option("every-frame", "--policy", help="every-frame (never drop; back-pressure) or latest (drop stale frames, counted)."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=0, help="Stop after reading this many frames."),
        summary: Optional[Path] = typer.Option(None, "--summary", help="Write the final summary JSON here."),
        metrics_port: Optional[int] = typer.Option(None, "--metrics-port", min=0, max=65535, help="Serve Prometheus /metrics and /health on this port."),
        max_batch: int = typer.Option(8, "--max-batch", min=1, help="Largest micro-batch."),
        max_wait_ms: float = typer.Option(20.0, "--max-wait-ms", min=0.0, help="Longest wait for a micro-batch to fill after its first frame."),
        runtime: Optional[str] = typer.Option(None, "--runtime", help="Runtime: torch, ort-cpu, ort-cuda, ort-trt, trt (default: best available)."),
        tile_height: Optional[int] = typer.Option(None, "--tile-height", min=1, help="Line-scan tile length along the scan (default: the tile width)."),
        tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", min=0, help="Line-scan tile overlap (default: a quarter tile)."),
        tile_width: Optional[int] = typer.Option(None, "--tile-width", min=1, help="Line-scan tile width across the sensor (default: the sensor width)."),
        scan_axis: str = typer.Option("auto", "--scan-axis", help="Line-scan direction: auto, y (lines are rows) or x (lines are columns)."),
        idle_exit: Optional[float] = typer.Option(None, "--idle-exit", min=0.0, help="folder:/linescan: folders: stop after this many seconds without a new file."),
        state: Optional[Path] = typer.Option(None, "--state", help="folder: sources: file remembering the files already handled, so a restart continues where it stopped (default $LOUPE_HOME/live/state/STATION-HASH.done)."),
        no_state: bool = typer.Option(False, "--no-state", help="folder: sources: no state file (every file present is read)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No live status line."),
    ) -> None:
        """Inspect a live source with a model bundle; flagged frames go to the results store."""
        import logging
        import signal

        from flows.cli import _cli_errors

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        with _cli_errors():
            from inference.live import LiveConfig, LiveInspector
            from inference.metrics_server import MetricsServer
            from inference.sources import TileConfig, open_source
            from inference.store import ResultsStore
            from pipeline.atomic import write_json_atomic

            cfg = LiveConfig(station=station, policy=policy, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             max_frames=max_frames, runtime=runtime)
            tiles = TileConfig(tile_height=tile_height, overlap=tile_overlap, width=tile_width, axis=scan_axis)
            state_file = None
            if source.startswith("folder:") and not no_state:
                state_file = state or default_state_file(station, source)
            src = open_source(source, tiles=tiles, idle_timeout=idle_exit, state=state_file)
            store = ResultsStore(db, image_root=image_root)
            tty = sys.stderr.isatty()
            last = [0.0]

            def show(s: dict[str, Any]) -> None:
                import time

                if quiet:
                    return
                if tty:
                    sys.stderr.write("\r" + status_line(s) + "\x1b[K")
                    sys.stderr.flush()
                elif time.monotonic() - last[0] >= 5.0:  # logs and pipes: a line every 5 s
                    last[0] = time.monotonic()
                    sys.stderr.write(status_line(s) + "\n")

            loop = LiveInspector(src, model, store, cfg, status=show)
            server = MetricsServer(loop.metrics, loop.health, metrics_port) if metrics_port is not None else None
            if server is not None:
                typer.echo(f"metrics: http://0.0.0.0:{server.port}/metrics  health: http://0.0.0.0:{server.port}/health", err=True)

            def on_signal(signum: int, _frame: Any) -> None:
                typer.echo(f"\nsignal {signum}: stopping after the queued frames (again to abort)", err=True)
                signal.signal(signum, signal.SIG_DFL)
                loop.stop()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            try:
                result = loop.run()
            finally:
                if server is not None:
                    server.close()
                store.close()
            if tty and not quiet:
                sys.stderr.write("\n")
            if summary is not None:
                write_json_atomic(summary, result)
        typer.echo(f"inspect: {result['frames']} frames, {result['flagged']} flagged, {result['dropped']} dropped, "
                   f"{result['errors']} errors; {result['fps']:.1f} fps, p50 {_fmt_ms(result['p50_ms'])} ms, "
                   f"p99 {_fmt_ms(result['p99_ms'])} ms; model {result['model_version']}")
        typer.echo(f"  run {result['run_id']} in {result['store']['url']}")
        if result["store"]["pending"]:
            typer.echo(f"  {result['store']['pending']} store operation(s) still spooled (database unreachable); "
                       "they are replayed the next time this database is opened", err=True)
        if summary is not None:
            typer.echo(f"  summary: {summary}")
