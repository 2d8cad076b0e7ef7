"""`loupe` commands for training flows, model registry, Prefect server and schedules (issue 5).

    loupe train DATA... [--product P] [--config C] [--epochs N] [--set key=value] [--feedback FILE] [--nproc N] [--dask ADDR]
    loupe registry list|show VERSION|promote VERSION|rollback [--product P]
    loupe server [--host H] [--port N]          Prefect server (SQLite; PostgreSQL via PREFECT_API_DATABASE_CONNECTION_URL)
    loupe schedule DATA... --cron "0 2 * * *" [--product P] ...   serve the training flow on a cron schedule
    loupe inspect-batch DATA --model M [--report FILE] [--dask ADDR]  batch inspection into the results store

`loupe train` runs the flow once; without PREFECT_API_URL Prefect runs it in ephemeral
mode (a temporary local server for the run). Registered on the main app by `flows.cli`;
heavy imports stay inside the commands so that `loupe --help` stays fast.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from flows.format import fmt

_DASK_HELP = ("Run shard tasks (evaluation, batch inspection) on Dask: a scheduler address (tcp://host:8786) "
              "or 'local' for a local cluster.")


def _quiet_prefect(quiet: bool) -> None:
    """Prefect reads its logging level at import: set it before the first import."""
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


#: Seconds to wait for Prefect's ephemeral server (Prefect's default, 20 s, is short on a busy machine).
EPHEMERAL_STARTUP_TIMEOUT = 180


@contextlib.contextmanager
def prefect_run_settings() -> Iterator[None]:
    """Settings for running flows from the command line: a patient ephemeral-server start-up."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT))  # before the first import
    # Inspection lines are usually air-gapped: telemetry cannot leave and would only log errors (set it to opt in).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import prefect.settings as ps

    current = ps.get_current_settings().server.ephemeral.startup_timeout_seconds
    with ps.temporary_settings(updates={ps.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: max(current, EPHEMERAL_STARTUP_TIMEOUT)}):
        yield


def dask_runner(address: str, workers: int | None = None) -> Any:
    """A DaskTaskRunner on an existing cluster (address) or a local one ("local": processes, one thread each)."""
    from prefect_dask import DaskTaskRunner

    if address == "local":
        n = workers or max(1, min(4, (os.cpu_count() or 2)))
        return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True})
    return DaskTaskRunner(address=address)


def _fmt(v: Any, pct: bool = False) -> str:
    return fmt(v, pct, missing="-")


def echo_training(result: dict[str, Any]) -> None:
    """Human summary of a training_flow result."""
    from flows.cli import _echo_metrics

    pre = result["pretrain"]
    how = "cache hit" if pre.get("cached") else (f"resumed from epoch {pre['resumed_from_epoch']}" if pre.get("resumed_from_epoch") else "trained")
    typer.echo(f"pretraining: {how} ({pre.get('epochs')} epochs) in {pre['dir']}")
    typer.echo(f"run: {result['run_dir']}")
    _echo_metrics(result["metrics"])
    gate = result["gate"]
    typer.echo(f"registered {result['product']} {result['version']} (model {result['model_version']}): "
               + ("promoted to champion" if result["promoted"] else "not promoted" + (f" ({'; '.join(gate['reasons'])})" if gate["reasons"] else "")))
    typer.echo(f"  champion: {result['champion'] or 'none'}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `loupe` app."""
    registry_app = typer.Typer(no_args_is_help=True, help="Model registry: versions per product, champion, promotion, rollback.")
    app.add_typer(registry_app, name="registry")

    @app.command()
    def train(
        data: list[Path] = typer.Argument(..., help="Data sources: image folders, MVTec AD roots, .json/.csv manifests."),
        product: str = typer.Option("default", "--product", "-p", help="Product or station id (registry and work folder)."),
        config: str = typer.Option("default", "--config", "-c", help="Shipped config name (default, robust, imagenet-lite0, smoke) or a YAML file."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help="Override the config's pretraining epochs."),
        overrides: Optional[list[str]] = typer.Option(None, "--set", help="Config override dotted.key=value (repeatable), e.g. scorer.coreset_ratio=0.02."),
        feedback: Optional[list[Path]] = typer.Option(None, "--feedback", help="Feedback manifest from the review app (repeatable)."),
        max_batch: int = typer.Option(32, "--max-batch", min=1, help="Largest batch per call in the bundle."),
        precision: Optional[list[str]] = typer.Option(None, "--precision", help="Bundle graphs besides fp32: fp16, int8 (repeatable)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images with a warning instead of failing."),
        no_promote: bool = typer.Option(False, "--no-promote", help="Register as a challenger only; do not promote."),
        nproc: int = typer.Option(1, "--nproc", min=1, help="Pretraining processes: > 1 runs torchrun DDP (gloo on CPU, nccl on GPU)."),
        device: str = typer.Option("cpu", "--device", help="Torch device for pretraining (cpu, cuda)."),
        dask: Optional[str] = typer.Option(None, "--dask", help=_DASK_HELP),
        actor: Optional[str] = typer.Option(None, "--actor", help="Who promotes (default: the OS user)."),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home (default $LOUPE_HOME or ~/.loupe)."),
        as_json: bool = typer.Option(False, "--json", help="Print the flow's result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings from Prefect."),
    ) -> None:
        """Run the training flow once: pretrain (cached) -> fit -> evaluate -> export -> register -> promote if the gate passes."""
        from flows.cli import _cli_errors

        _quiet_prefect(quiet)
        with _cli_errors():
            from pydantic import ValidationError

            from flows.training import TrainingParams, training_flow

            try:
                params = TrainingParams(data=[str(d) for d in data], product=product, config=config, epochs=epochs,
                                        overrides=overrides or [], feedback=[str(f) for f in feedback or []], max_batch=max_batch,
                                        precisions=["fp32", *(precision or [])], skip_bad=skip_bad, promote=not no_promote,
                                        nproc=nproc, device=device, actor=actor, home=str(home) if home else None)
            except ValidationError as err:
                raise ValueError("; ".join(e["msg"] for e in err.errors())) from None
            runner = training_flow.with_options(task_runner=dask_runner(dask)) if dask else training_flow
            with prefect_run_settings():
                result = runner(params)
        if as_json:
            typer.echo(json.dumps(result, indent=2, default=str))
        else:
            echo_training(result)

    @registry_app.command("list")
    def registry_list(
        product: Optional[str] = typer.Option(None, "--product", "-p", help="Only this product (default: all)."),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home (default $LOUPE_HOME or ~/.loupe)."),
    ) -> None:
        """Versions per product: status, model version, metrics, gate decision."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.registry import Registry

            reg = Registry(home)
            products = [product] if product else reg.products()
            if not products:
                typer.echo(f"no products registered under {reg.root}")
                return
            for p in products:
                entries = reg.entries(p)
                typer.echo(f"{p} ({len(entries)} versions, registry {reg.product_dir(p)}):")
                for e in entries:
                    gate = e.gate or {}
                    note = "" if not gate else ("gate passed" if gate.get("promote") else "gate: " + "; ".join(gate.get("reasons", [])))
                    typer.echo(f"  {'*' if e.status == 'champion' else ' '} {e.version}  {e.status:<10}  model {e.model_version}  "
                               f"{e.registered_at}  AUROC {_fmt(e.metrics.get('image_auroc'))}  "
                               f"false alarms {_fmt(e.metrics.get('false_alarm_rate'), pct=True)}  {note}")

    @registry_app.command("show")
    def registry_show(
        version: str = typer.Argument(..., help="Registry version (v0003 or 3) or a model-version prefix."),
        product: str = typer.Option("default", "--product", "-p"),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home (default $LOUPE_HOME or ~/.loupe)."),
    ) -> None:
        """One version as JSON: path, status, metrics, source run, gate decision, and its events."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.registry import Registry

            reg = Registry(home)
            e = reg.entry(product, version)
            events = [ev for ev in reg.events(product) if ev.get("version") == e.version or ev.get("previous") == e.version]
        typer.echo(json.dumps({**e.to_dict(), "events": events}, indent=2, default=str))

    @registry_app.command("promote")
    def registry_promote(
        version: str = typer.Argument(..., help="Registry version (v0003 or 3) or a model-version prefix."),
        product: str = typer.Option("default", "--product", "-p"),
        actor: Optional[str] = typer.Option(None, "--actor", help="Who promotes (default: the OS user)."),
        reason: str = typer.Option("manual promotion", "--reason", help="Recorded in the log."),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home (default $LOUPE_HOME or ~/.loupe)."),
    ) -> None:
        """Make VERSION the champion (a manual decision: logged with actor and reason; the bundle is verified first)."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.registry import Registry

            reg = Registry(home)
            before = reg.current(product)
            e = reg.promote(product, version, actor=actor, reason=reason)
        typer.echo(f"{product}: {e.version} (model {e.model_version}) is the champion (was {before.version if before else 'none'})")

    @registry_app.command("rollback")
    def registry_rollback(
        product: str = typer.Option("default", "--product", "-p"),
        actor: Optional[str] = typer.Option(None, "--actor", help="Who rolls back (default: the OS user)."),
        reason: str = typer.Option("manual rollback", "--reason", help="Recorded in the log."),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home (default $LOUPE_HOME or ~/.loupe)."),
    ) -> None:
        """Switch the champion back to the previous one."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from inference.registry import Registry

            reg = Registry(home)
            before = reg.current(product)
            e = reg.rollback(product, actor=actor, reason=reason)
        typer.echo(f"{product}: rolled back from {before.version if before else 'none'} to {e.version} (model {e.model_version})")

    @app.command()
    def server(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(4200, "--port", min=1, max=65535, help="Port of the API and UI."),
    ) -> None:
        """Start a Prefect server (UI + API). SQLite under PREFECT_HOME by default; PostgreSQL when
        PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB is set.
        Point flows at it with PREFECT_API_URL=http://HOST:PORT/api."""
        import subprocess
        import sys

        from flows.cli import _cli_errors

        with _cli_errors():
            url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
            if url and url.startswith("postgresql") and not url.startswith("postgresql+asyncpg://"):
                raise ValueError(f"Prefect's server needs the asyncpg driver: write the database URL as postgresql+asyncpg://..., got {url.split('@')[-1]!r}")
            db = "PostgreSQL " + url.split("@")[-1] if url and url.startswith("postgresql") else (url or "SQLite (default, under PREFECT_HOME)")
            typer.echo(f"Prefect server on http://{host}:{port} (database: {db}); set PREFECT_API_URL=http://{host}:{port}/api for flows", err=True)
            cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
            env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ}  # air-gapped lines: no telemetry unless asked
            try:
                rc = subprocess.call(cmd, env=env)
            except KeyboardInterrupt:
                rc = 0
        raise typer.Exit(rc)

    @app.command()
    def schedule(
        data: list[Path] = typer.Argument(..., help="Data sources to retrain on (folders, MVTec roots, manifests; re-read at every run)."),
        cron: str = typer.Option(..., "--cron", help='Cron schedule, e.g. "0 2 * * *" (02:00 every day).'),
        product: str = typer.Option("default", "--product", "-p"),
        config: str = typer.Option("default", "--config", "-c", help="Config name or YAML file."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=0),
        overrides: Optional[list[str]] = typer.Option(None, "--set", help="Config override dotted.key=value (repeatable)."),
        feedback: Optional[list[Path]] = typer.Option(None, "--feedback", help="Feedback manifest (repeatable; re-read at every run)."),
        timezone_name: str = typer.Option("UTC", "--timezone", help="Time zone of the cron schedule."),
        name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default loupe-train-PRODUCT)."),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home (default $LOUPE_HOME or ~/.loupe)."),
    ) -> None:
        """Serve the training flow on a cron schedule against the Prefect server (PREFECT_API_URL); runs until stopped."""
        from flows.cli import _cli_errors

        with _cli_errors():
            from prefect.schedules import Cron

            try:
                Cron(cron, timezone=timezone_name)
            except ValueError as err:
                raise ValueError(f"--cron {cron!r}: {err} (e.g. \"0 2 * * *\" for 02:00 every day)") from None
            if not os.environ.get("PREFECT_API_URL"):
                typer.echo("Warning: PREFECT_API_URL is not set: start `loupe server` and set PREFECT_API_URL=http://127.0.0.1:4200/api, "
                           "else the schedule lives only as long as a temporary server", err=True)
            from flows.training import TrainingParams

            params = TrainingParams(data=[str(d.resolve()) for d in data], product=product, config=config, epochs=epochs,
                                    overrides=overrides or [], feedback=[str(f.resolve()) for f in feedback or []],
                                    home=str(home) if home else None)
            deployment = make_deployment(params, cron, timezone_name, name)
            typer.echo(f"serving {deployment.name} on cron {cron!r} ({timezone_name}); Ctrl-C stops", err=True)
            from prefect import serve

            serve(deployment)

    @app.command("inspect-batch")
    def inspect_batch(
        data: Path = typer.Argument(..., help="An image folder, an MVTec AD root or a .json/.csv manifest."),
        model: str = typer.Option(..., "--model", "-m", help="A bundle folder or registry:PRODUCT (its current champion)."),
        split: str = typer.Option("all", "--split", help="Rows of a manifest/MVTec root: all, train or test."),
        station: str = typer.Option("batch", "--station", help="Station id recorded in the results store."),
        report: Optional[Path] = typer.Option(None, "--report", help="Also write a JSON report with every image's score."),
        no_store: bool = typer.Option(False, "--no-store", help="Do not write to the results store (a JSON report is written)."),
        db: Optional[str] = typer.Option(None, "--db", help="Results database URL (default sqlite:///$LOUPE_HOME/results/results.db)."),
        image_root: Optional[Path] = typer.Option(None, "--image-root", help="Folder for the store's images."),
        runtime: Optional[str] = typer.Option(None, "--runtime", help="torch, ort-cpu, ort-cuda, ort-trt, trt (default: best available)."),
        chunk_size: int = typer.Option(256, "--chunk-size", min=1, help="Images per task."),
        dask: Optional[str] = typer.Option(None, "--dask", help=_DASK_HELP),
        home: Optional[Path] = typer.Option(None, "--home", help="Loupe home for registry:PRODUCT."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings from Prefect."),
    ) -> None:
        """Batch inspection flow: score every image, flagged ones into the results store, a summary (and --report JSON)."""
        from flows.cli import _cli_errors

        _quiet_prefect(quiet)
        with _cli_errors():
            from flows.inspection import InspectionParams, batch_inspection_flow

            params = InspectionParams(data=str(data), model=model, split=split, station=station, report=str(report) if report else None,
                                      store=not no_store, db=db, image_root=str(image_root) if image_root else None, runtime=runtime,
                                      chunk_size=chunk_size, home=str(home) if home else None)
            runner = batch_inspection_flow.with_options(task_runner=dask_runner(dask)) if dask else batch_inspection_flow
            with prefect_run_settings():
                summary = runner(params)
        echo_inspection(summary)


def echo_inspection(summary: dict[str, Any]) -> None:
    """Human summary of a batch_inspection_flow result."""
    typer.echo(f"batch inspection with model {summary['model_version']}: {summary['frames']} images, {summary['flagged']} flagged, "
               f"{summary['errors']} unreadable")
    if "labelled" in summary:
        typer.echo(f"  labelled: recall {_fmt(summary.get('recall'), pct=True)}, false alarms {_fmt(summary.get('false_alarm_rate'), pct=True)}, "
                   f"image AUROC {_fmt(summary.get('image_auroc'))}")
    if summary.get("store"):
        typer.echo(f"  results store: run {summary['store']['run_id']} ({summary['store']['url']})")
    if summary.get("report"):
        typer.echo(f"  report: {summary['report']}")


def make_deployment(params: Any, cron: str, timezone_name: str = "UTC", name: str | None = None) -> Any:
    """The training flow as a deployment with a cron schedule and these parameters (to `prefect.serve`)."""
    from prefect.schedules import Cron

    from flows.training import training_flow

    return training_flow.to_deployment(name=name or f"loupe-train-{params.product}", schedule=Cron(cron, timezone=timezone_name),
                                       parameters={"params": params.model_dump()}, tags=["loupe", f"product:{params.product}"])
