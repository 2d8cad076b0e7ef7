"""The `loupe` command line: a thin layer over `pipeline.steps`.

    loupe pretrain DATA --out RUN_DIR     contrastive pretraining on good images
    loupe fit RUN_DIR DATA                patch memory bank + threshold
    loupe evaluate RUN_DIR DATA --out M   metrics JSON, ROC and heatmap PNGs
    loupe evaluate BUNDLE DATA --out M    the same through a bundle runtime (--runtime torch|ort-cpu|...)
    loupe export RUN_DIR --out BUNDLE     model bundle: ONNX graph(s), TensorRT engine, bundle.json
    loupe demo                            all of the above on synthetic line-camera data
    loupe bench quality --manifest ...    pretrain -> fit -> evaluate, one JSON of quality and cost
    loupe bench latency BUNDLE --out F    batch-1 p50/p99 and batch-32 throughput of every runtime

DATA is an image folder, an MVTec AD category root or a .json/.csv manifest.
Bad input (DataError, FileNotFoundError, ValueError from the pipeline) is reported as
one `Error: ...` message on stderr with exit code 2, without a traceback.

Heavy modules (torch, pipeline.steps) are imported inside the commands so that
`loupe --help` stays fast.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from flows.format import fmt

#: Pretraining epochs of `loupe demo` unless --epochs is given.
DEMO_EPOCHS = 96
#: The synthetic line-camera data of `loupe demo` (arguments of write_dataset).
DEMO_DATA: dict[str, Any] = dict(texture="brushed_metal", n_train=200, n_test_good=40, n_test_defect=60, size=256, seed=0)
#: Config overrides of `loupe demo` by config name. The scoring resolution is a per-product setting: the
#: demo's thin scratches and missing print need the scorer at its images' own 256 px, where the `default`
#: config (chosen on Magnetic Tile Defects, coarser defects) reads 160 px (README, demo benchmark).
DEMO_OVERRIDES: dict[str, list[str]] = {"default": [f"scorer.image_size={DEMO_DATA['size']}"]}
#: Exit code for bad input (the same as click's usage errors).
EXIT_BAD_INPUT = 2

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Loupe: industrial visual inspection. Contrastive pretraining on good images, "
    "patch nearest-neighbour anomaly scoring, evaluation.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: `quality` (pretrain -> fit -> evaluate from nothing), `latency` (a bundle on every runtime).")
app.add_typer(bench_app, name="bench")

_DATA_HELP = "An image folder, an MVTec AD category root, or a .json/.csv manifest."
_CONFIG_HELP = "Shipped config name (default, robust, imagenet-lite0, smoke) or a YAML file."
_SKIP_BAD_HELP = "Skip unreadable images/masks with a warning instead of failing."
_QUIET_HELP = "No progress bars."


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    """Bad input -> `Error: ...` on stderr and exit 2; warnings -> `Warning: ...` on stderr."""

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        prefix = "Warning" if category is UserWarning else f"Warning ({category.__name__})"
        typer.echo(f"{prefix}: {message}", err=True)

    # catch_warnings also resets the "already shown" registries, so each run reports its warnings.
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        except (ValueError, FileNotFoundError) as exc:  # DataError, BundleError, FrameError, ExportError are ValueErrors
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except RuntimeError as exc:
            from inference.runtime import RuntimeUnavailable

            if not isinstance(exc, RuntimeUnavailable):
                raise
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _echo_metrics(metrics: dict[str, Any], out: Path | None = None, scores: Path | None = None) -> None:
    """Short human summary of an evaluate_step / bench_quality result."""
    rows = [
        ("image AUROC", fmt(metrics.get("image_auroc"))),
        ("pixel AUROC", fmt(metrics.get("pixel_auroc"))),
        ("AUPRO", fmt(metrics.get("aupro"))),
        ("F1-max", fmt(metrics.get("f1_max"))),
        ("false-alarm rate", fmt(metrics.get("false_alarm_rate"), percent=True) + " at the fitted threshold"),
        ("recall", fmt(metrics.get("recall_at_threshold"), percent=True) + " at the fitted threshold"),
    ]
    if "n_images" in metrics:
        rows.append(("test images", f"{metrics['n_images']} ({metrics.get('n_good')} good, {metrics.get('n_defect')} defective)"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"  {name:<{width}}  {value}")
    per_class = metrics.get("per_class") or {}
    pixel = metrics.get("per_class_pixel") or {}
    if per_class:
        typer.echo("  per-class image AUROC (vs good)" + (", pixel AUROC (its images and the good ones):" if pixel else ":"))
        cw = max(len(str(c)) for c in per_class)
        for cls, auroc in per_class.items():
            typer.echo(f"    {cls:<{cw}}  {fmt(auroc)}" + (f"  {fmt(pixel.get(cls))}" if pixel else ""))
    for label, path in (("metrics", out), ("ROC curve", metrics.get("roc_png")), ("heatmaps", metrics.get("heatmaps_png")), ("scores", scores)):
        if path is not None:
            typer.echo(f"  {label + ':':<11}{path}")


def _echo_pretrain(summary: dict[str, Any], run_dir: Path) -> None:
    losses = summary.get("losses") or []
    loss = f", final loss {losses[-1]:.4f}" if losses else ""
    typer.echo(
        f"pretrained {summary['config']} ({summary['method']}, {summary['epochs']} epochs) on {summary['n_images']} images "
        f"in {summary['seconds']:.1f} s ({summary['images_per_second']:.1f} img/s){loss}"
    )
    typer.echo(f"  encoder: {run_dir / 'encoder.pt'}")


def _echo_fit(summary: dict[str, Any], run_dir: Path) -> None:
    loo = summary.get("calibration") == "leave_one_out"
    typer.echo(
        f"fitted scorer on {summary['n_images']} images ({summary['n_bank_images']} bank, {summary['n_holdout_images']} "
        f"{'scored leave-one-out' if loo else 'holdout'}): "
        f"bank {summary['bank_size']} of {summary['n_patches']} patches, threshold {summary['threshold_raw']:.4g}, "
        f"{summary['seconds']:.1f} s"
    )
    # training images the fit judged defective-looking: worth a person's look (their paths are in fit.json)
    if summary.get("n_trimmed"):
        typer.echo(f"  {summary['n_trimmed']} bank images looked defective and were left out of the bank: fit.json trimmed_images")
    if summary.get("n_calibration_outliers"):
        typer.echo(f"  {summary['n_calibration_outliers']} {'leave-one-out scored' if loo else 'held-out'} images looked defective and did not set the threshold: "
                   "fit.json calibration_outliers")
    typer.echo(f"  inspector: {run_dir / 'inspector.pt'}")


@app.command()
def pretrain(
    data: Path = typer.Argument(..., help=_DATA_HELP + " Its good `train` images are used."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (config.yaml, encoder.pt, pretrain_state.pt)."),
    config: str = typer.Option("default", "--config", "-c", help=_CONFIG_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help="Override the config's pretraining epochs."),
    init_weights: Optional[str] = typer.Option(None, "--init-weights", help="Initial encoder weights: a file, 'imagenet-lite0' or 'none' (overrides the config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/pretrain_state.pt (same config and epochs)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=_SKIP_BAD_HELP),
    device: str = typer.Option("cpu", "--device", help="Torch device for training, e.g. cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
) -> None:
    """Contrastive pretraining of the encoder on unlabeled good images."""
    with _cli_errors():
        from pipeline.steps import pretrain_step

        summary = pretrain_step(data, out, config, epochs=epochs, init_weights=init_weights, resume=resume,
                                skip_bad=skip_bad, progress=not quiet, device=device)
    _echo_pretrain(summary, out)


@app.command()
def fit(
    run_dir: Path = typer.Argument(..., help="Run folder written by `loupe pretrain`."),
    data: Path = typer.Argument(..., help=_DATA_HELP + " Its good `train` images are used."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=_SKIP_BAD_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
) -> None:
    """Fit the patch nearest-neighbour scorer (memory bank + threshold) on good images."""
    with _cli_errors():
        from pipeline.steps import fit_step

        summary = fit_step(run_dir, data, skip_bad=skip_bad, progress=not quiet)
    _echo_fit(summary, run_dir)


_RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder with inspector.pt (`loupe fit`), or a bundle folder with bundle.json (`loupe export`)."),
    data: Path = typer.Argument(..., help="Labelled data: an MVTec AD category root or a .json/.csv manifest. Its `test` images are used."),
    out: Path = typer.Option(..., "--out", "-o", help="Metrics JSON to write; the ROC and heatmap PNGs go next to it."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Also write one CSV row per image: image,label,score,is_defect."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help=f"Bundles only: {'|'.join(_RUNTIMES)} (default: the best available; "
                                          "torch runs the bundle's inspector in PyTorch)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=_SKIP_BAD_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
) -> None:
    """Score the labelled test images: metrics JSON, ROC curve and heatmap grid."""
    with _cli_errors():
        from inference.bundle import is_bundle

        if runtime is not None and runtime not in _RUNTIMES:
            raise ValueError(f"--runtime must be one of {', '.join(_RUNTIMES)}, got {runtime!r}")
        if is_bundle(run_dir):
            from inference.evaluate import evaluate_bundle

            metrics = evaluate_bundle(run_dir, data, out, runtime=runtime, scores_csv=scores, skip_bad=skip_bad, progress=not quiet)
        else:
            if runtime is not None:
                raise ValueError(f"--runtime applies to bundles; {run_dir} has no bundle.json (export one with `loupe export {run_dir} --out BUNDLE_DIR`)")
            from pipeline.steps import evaluate_step

            metrics = evaluate_step(run_dir, data, out, scores_csv=scores, skip_bad=skip_bad, progress=not quiet)
    where = f" ({metrics['runtime']}, model {metrics['model_version']})" if "runtime" in metrics else ""
    typer.echo(f"evaluated {run_dir}{where} on {data}:")
    _echo_metrics(metrics, out, scores)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Fitted run folder (inspector.pt, fit.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (replaced if it is a bundle or empty)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx | tensorrt (adds fp16 graph + engine for this GPU) | all."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Largest batch per call (TensorRT profile; runtimes split larger batches)."),
    precision: list[str] = typer.Option(["fp32"], "--precision", help="fp32 | fp16 | int8 (repeatable). fp32 is always written; "
                                        "int8 needs --data."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Metrics JSON (`loupe evaluate`) to record in bundle.json "
                                           "(default: RUN_DIR/metrics.json if present)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The run's data: train images calibrate INT8; a labelled test split "
                                        "measures INT8's AUROC cost. " + _DATA_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Export a fitted run to a model bundle: one ONNX graph (uint8 frames in; score, map, decision out) and more."""
    with _cli_errors():
        from inference.export import export_bundle

        manifest = export_bundle(run_dir, out, formats=fmt, precisions=precision, max_batch=max_batch, metrics=metrics,
                                 data=data, progress=None if quiet else (lambda m: typer.echo(f"  {m}", err=True)))
    spec = manifest["input"]
    typer.echo(f"exported {run_dir} -> {out} (model {manifest['model_version']}, bank {manifest['bank_size']} rows)")
    typer.echo(f"  input: {spec['name']} uint8 [N, {spec['size']}, {spec['size']}, {spec['channels']}] NHWC; "
               f"threshold raw {manifest['threshold']['raw']:.4g} -> 0.5")
    for name, rec in manifest["files"].items():
        typer.echo(f"  {name:<22} {rec['bytes'] / 1e6:8.2f} MB  sha256 {rec['sha256'][:12]}")
    for name in manifest.get("engines", {}):
        typer.echo(f"  {name}")
    int8 = manifest.get("int8") or {}
    if "auroc_cost_points" in int8:
        typer.echo(f"  int8: image AUROC {int8['image_auroc_int8']:.4f} vs fp32 {int8['image_auroc_fp32']:.4f} "
                   f"(cost {int8['auroc_cost_points']:.2f} points), decisions agree on {100 * int8['decision_agreement']:.1f}% "
                   f"of {int8['test_images']} test images")
    elif int8.get("auroc_note"):
        typer.echo(f"  int8: {int8['auroc_note']}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the data, the Loupe home (registry, results) and the results."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help=f"Pretraining epochs (default {DEMO_EPOCHS})."),
    config: str = typer.Option("default", "--config", "-c", help=_CONFIG_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
    serve: Optional[bool] = typer.Option(None, "--serve/--no-serve", help="Serve the review app at the end until Ctrl-C "
                                         "(default: when run from a terminal; otherwise print how to start it)."),
    port: int = typer.Option(8000, "--port", help="Port of the review app."),
) -> None:
    """Synthetic line-camera data -> training flow (pretrain, fit, evaluate, export, register, promote) -> batch
    inspection -> live inspection of a line-scan strip and a video -> review app on the flagged parts.

    Rerunning reuses the generated data and a finished (or interrupted: resumed) pretraining
    with the same data, config and code version. Everything lands under --out: the registry
    and results store in OUT/home (use `--home OUT/home` with `loupe registry ...`).
    """
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with _cli_errors():
        from flows.cli_train import echo_inspection, prefect_run_settings
        from flows.demo import run_demo_training

        with prefect_run_settings():
            ctx = run_demo_training(out, DEMO_DATA, config=config, epochs=DEMO_EPOCHS if epochs is None else epochs,
                                    overrides=DEMO_OVERRIDES.get(config, []), progress=not quiet)
    r = ctx.training
    typer.echo(f"data: {ctx.data_dir} ({DEMO_DATA['n_train']} train, {DEMO_DATA['n_test_good']} good + "
               f"{DEMO_DATA['n_test_defect']} defective test images; line-scan strip preview {ctx.strip_png})")
    pre = r["pretrain"]
    if pre.get("cached"):
        typer.echo(f"pretraining reused from {pre['dir']} ({pre['epochs']} epochs, same data, config and code)")
    else:
        losses = pre.get("losses") or []
        resumed = f", resumed from epoch {pre['resumed_from_epoch']}" if pre.get("resumed_from_epoch") else ""
        typer.echo(f"pretrained {r['fit']['config']} ({pre['epochs']} epochs{resumed}) in {pre['seconds']:.1f} s"
                   + (f", final loss {losses[-1]:.4f}" if losses else ""))
    _echo_fit(r["fit"], Path(r["run_dir"]))
    typer.echo("demo results:")
    _echo_metrics(r["metrics"], ctx.metrics_json, ctx.scores_csv)
    typer.echo(f"  {'strip:':<11}{ctx.strip_png}")
    gate = r["gate"]
    typer.echo(f"registry: {ctx.product} {r['version']} (model {r['model_version']}) "
               + ("promoted to champion" if r["promoted"] else "not promoted" + (f": {'; '.join(gate['reasons'])}" if gate["reasons"] else ""))
               + f"; champion {r['champion'] or 'none'} (loupe registry list --home {ctx.home})")
    echo_inspection(ctx.inspection)
    with _cli_errors():
        import sys

        from inference.demo_live import run_demo_live
        from inference.review.demo import prepare_demo_review

        # the line runs the champion; with none (this model failed the gate) the new bundle is shown instead
        model = f"registry:{ctx.product}" if r["champion"] else r["bundle"]
        live = run_demo_live(model, ctx.out / "live", db_url=ctx.db_url, home=ctx.home, image_root=ctx.image_root)
        for name in ("strip", "video"):
            sm = live[name]
            typer.echo(f"live inspection with {model} ({name}: {live[name + '_png' if name == 'strip' else 'video_path']}): "
                       f"{sm['frames']} frames, {sm['flagged']} flagged, {sm['errors']} errors, {_num(sm.get('fps'))} fps, "
                       f"p50 {_num(sm.get('p50_ms'))} ms")
        typer.echo(f"flagged records: {ctx.db_url} (images under {live['image_root']})")
        review = prepare_demo_review(ctx.db_url, ctx.image_root, port=port)
        typer.echo(review["text"])
    if serve if serve is not None else sys.stdin.isatty() and sys.stdout.isatty():
        from inference.review.serve import serve as serve_review

        typer.echo("serving the review app; Ctrl-C stops it")
        serve_review(ctx.db_url, ctx.image_root, port=port, log_level="warning")


@bench_app.command("quality")
def bench_quality(
    manifest: Path = typer.Option(..., "--manifest", help="Labelled data with train and test splits (.json/.csv manifest or MVTec root)."),
    out: Path = typer.Option(..., "--out", "-o", help="Result JSON to write."),
    config: str = typer.Option("default", "--config", "-c", help=_CONFIG_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help="Override the config's pretraining epochs."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Run folder for the benchmark (default: a new temporary folder)."),
    reuse_pretrain: Optional[Path] = typer.Option(
        None, "--reuse-pretrain",
        help="A finished pretraining of the same config on the same training images (e.g. an earlier benchmark's run): "
        "fit and evaluate with it instead of pretraining again (seeded, so the same encoder); its cost is reported."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_QUIET_HELP),
) -> None:
    """Pretrain -> fit -> evaluate from nothing with one config; one JSON of quality and cost."""
    with _cli_errors():
        from pipeline.steps import bench_quality as run_bench

        result = run_bench(manifest, out, config, epochs=epochs, work_dir=work_dir, reuse_pretrain=reuse_pretrain, progress=not quiet)
    typer.echo(f"bench quality: {result['config_name']} ({result['epochs']} epochs) on {manifest}, commit {result['commit']}")
    _echo_metrics(result)
    typer.echo(
        f"  cost: pretrain {result['pretrain_seconds']:.1f} s ({result['images_per_second_pretrain']:.1f} img/s), "
        f"fit {result['fit_seconds']:.1f} s, eval {result['eval_seconds']:.1f} s, total {result['total_seconds']:.1f} s"
    )
    typer.echo(f"  {'result:':<11}{out}")
    typer.echo(f"  {'run:':<11}{result['work_dir']}")


@bench_app.command("latency")
def bench_latency(
    bundle: Path = typer.Argument(..., help="Bundle folder (`loupe export`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Result JSON to write."),
    runtime: Optional[list[str]] = typer.Option(None, "--runtime", help="Only these runtimes (repeatable): torch_cpu, ort_cpu, "
                                                "ort_cpu_int8, torch_cuda, ort_cuda, ort_trt, trt. Default: every available one."),
    batch: int = typer.Option(32, "--batch", min=1, help="Batch size of the throughput measurement."),
    seconds: float = typer.Option(3.0, "--seconds", min=0.0, help="Time budget per measurement."),
    min_iters: int = typer.Option(20, "--min-iters", min=1, help="At least this many batch-1 calls per runtime."),
    no_split: bool = typer.Option(False, "--no-split", help="Skip the encoder / search / post-processing time split."),
) -> None:
    """Batch-1 p50/p99 latency and batch throughput of a bundle on every runtime available here."""
    with _cli_errors():
        from inference.latency import measure_latency
        from pipeline.atomic import write_json_atomic

        result = measure_latency(bundle, runtimes=runtime, batch=batch, seconds=seconds, min_iters=min_iters, split=not no_split,
                                 progress=lambda m: typer.echo(f"  {m}", err=True))
        write_json_atomic(out, result)
    typer.echo(f"bench latency: {bundle} ({result['image_size']} px, bank {result['bank_size']}, "
               f"{result['flops_per_image'] / 1e9:.2f} GFLOP/image), commit {result['commit']}")
    for name, r in result["runtimes"].items():
        typer.echo(f"  {name:<13} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  {r['throughput_ips']:9.1f} img/s (batch {batch})")
    for name, why in result["skipped"].items():
        typer.echo(f"  {name:<13} skipped: {why}")
    for name, sp in (result.get("split") or {}).items():
        if sp:
            typer.echo(f"  {name} split: encoder {sp['encoder_ms']:.2f} ms, search {sp['search_ms']:.2f} ms, post {sp['post_ms']:.2f} ms")
    typer.echo(f"  {'result:':<11}{out}")


@app.command()
def version() -> None:
    """Print the installed Loupe version."""
    from importlib.metadata import version as v

    typer.echo(v("loupe"))


# Orchestration, live inspection and review commands live in their own modules.
from flows import cli_inspect, cli_review, cli_train  # noqa: E402

for _module in (cli_train, cli_inspect, cli_review):
    _module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
