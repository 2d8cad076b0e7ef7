"""Batch inspection flow: score a folder or manifest of images with a bundle or a product's champion.

    from flows.inspection import InspectionParams, batch_inspection_flow
    summary = batch_inspection_flow(InspectionParams(data="images/", model="registry:lineA", report="report.json"))

`model` is a bundle folder or `registry:PRODUCT` (that product's current champion,
`inference.registry.resolve_model`). Images are cut into chunks, each scored by a task
(`inference.batch.inspect_files`; on Dask workers when the flow runs with a DaskTaskRunner).
Flagged images go to the results store (`inference.store.ResultsStore`: one run, one record
per flagged image with its image, map and overlay) unless `store=False`; a JSON report with
every image's score is written when `report` is given (and always when the store is off or
not installed). A markdown summary artifact closes the run.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.training import _artifact_key, retry_on_io


class InspectionParams(BaseModel):
    """Parameters of `batch_inspection_flow`."""

    data: str = Field(..., description="An image folder, an MVTec AD root or a .json/.csv manifest.")
    model: str = Field(..., description="A bundle folder or registry:PRODUCT (its current champion).")
    split: str = Field("all", description="Rows of a manifest/MVTec root to inspect: all, train or test.")
    station: str = Field("batch", description="Station id recorded in the results store.")
    report: Optional[str] = Field(None, description="Write a JSON report (every image's score) here.")
    store: bool = Field(True, description="Write flagged images to the results store.")
    db: Optional[str] = Field(None, description="Results database URL (default: sqlite under HOME/results, HOME being `home` or $LOUPE_HOME).")
    image_root: Optional[str] = Field(None, description="Folder for the store's images (default: the store's default).")
    runtime: Optional[str] = Field(None, description="Bundle runtime: torch, ort-cpu, ort-cuda, ort-trt, trt (default: best available).")
    chunk_size: int = Field(256, ge=1, description="Images per task (the unit of work on Dask workers).")
    batch_size: int = Field(16, ge=1, description="Images per inference call.")
    home: Optional[str] = Field(None, description="Loupe home for registry:PRODUCT (default $LOUPE_HOME or ~/.loupe).")


@task(name="inspect-chunk", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def inspect_chunk(bundle: str, images: list[str], labels: list[Optional[int]], classes: list[Optional[str]],
                  runtime: Optional[str], batch_size: int) -> list[Any]:
    from inference.batch import inspect_files

    return inspect_files(bundle, images, labels=labels, classes=classes, runtime=runtime, batch_size=batch_size)


def _summary(results: list[Any], model_version: str, params: InspectionParams, bundle: Path) -> dict[str, Any]:
    scored = [r for r in results if r.score is not None]
    flagged = [r for r in scored if r.is_defect]
    summary: dict[str, Any] = {
        "data": params.data, "split": params.split, "model": params.model, "bundle": str(bundle), "model_version": model_version,
        "frames": len(results), "scored": len(scored), "flagged": len(flagged), "errors": len(results) - len(scored), "threshold": 0.5,
        "flag_rate": len(flagged) / len(scored) if scored else None,
    }
    labelled = [r for r in scored if r.label is not None]
    if labelled:
        tp = sum(1 for r in labelled if r.label == 1 and r.is_defect)
        fp = sum(1 for r in labelled if r.label == 0 and r.is_defect)
        n_def = sum(1 for r in labelled if r.label == 1)
        n_good = len(labelled) - n_def
        summary.update({"labelled": len(labelled), "true_positives": tp, "false_positives": fp,
                        "recall": tp / n_def if n_def else None, "false_alarm_rate": fp / n_good if n_good else None})
        if n_def and n_good:
            from pipeline.metrics import image_auroc

            import numpy as np

            summary["image_auroc"] = float(image_auroc(np.array([r.label for r in labelled]), np.array([r.score for r in labelled])))
    return summary


@flow(name="loupe-batch-inspection", log_prints=True)
def batch_inspection_flow(params: InspectionParams) -> dict[str, Any]:
    """Inspect every image of `params.data` with `params.model`; results store, JSON report, summary artifact."""
    from inference.registry import resolve_model
    from pipeline.atomic import write_json_atomic
    from pipeline.data import load_samples

    logger = get_run_logger()
    bundle, model_version = resolve_model(params.model, params.home)
    samples = load_samples(params.data, params.split)  # type: ignore[arg-type]
    images = [str(s.image) for s in samples]
    n_chunks = math.ceil(len(images) / params.chunk_size)
    futures = []
    for c in range(n_chunks):
        sl = slice(c * params.chunk_size, (c + 1) * params.chunk_size)
        futures.append(inspect_chunk.submit(str(bundle), images[sl], [s.label for s in samples[sl]],
                                            [s.defect_class for s in samples[sl]], params.runtime, params.batch_size))
    results = [r for f in futures for r in f.result()]
    summary = _summary(results, model_version, params, bundle)

    store_info = None
    if params.store:
        try:
            from inference.store import ResultsStore
        except ImportError:  # the results store is an optional part of an installation
            ResultsStore = None  # noqa: N806
            logger.warning("inference.store is not available: writing a JSON report instead")
        if ResultsStore is not None:
            db = params.db
            if db is None and params.home:  # the store of that Loupe home (the store's own default follows $LOUPE_HOME)
                db = f"sqlite:///{(Path(params.home).expanduser() / 'results' / 'results.db').resolve()}"
            store = ResultsStore(db, Path(params.image_root) if params.image_root else None)
            try:
                run_id = store.start_run(params.station, params.data, model_version)
                for i, r in enumerate(results):
                    if r.is_defect:
                        r.record_id = store.add_flagged(run_id, frame=r.frame, anomaly_map=r.anomaly_map, score=r.score, threshold=0.5,
                                                        is_defect=True, model_version=model_version, station=params.station,
                                                        source=r.image, frame_index=i)
                store.end_run(run_id, {**summary, "dropped": 0})
                store.flush()
                store_info = {"run_id": run_id, "url": store.url, "image_root": str(store.image_root), "pending": store.pending}
            finally:
                store.close()
    summary["store"] = store_info
    report_path = params.report
    if report_path is None and store_info is None:  # results must land somewhere
        from datetime import datetime, timezone

        from inference.registry import loupe_home

        home = Path(params.home).expanduser() if params.home else loupe_home()
        report_path = str(home / "reports" / f"inspection-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}.json")
    if report_path:
        rows = [{"image": r.image, "score": r.score, "is_defect": r.is_defect, "label": r.label, "class": r.defect_class,
                 "error": r.error, "record_id": r.record_id} for r in results]
        write_json_atomic(report_path, {**summary, "results": rows})
        summary["report"] = str(Path(report_path).resolve())

    lines = [f"# Batch inspection of `{params.data}`", "", f"model `{params.model}` (version {model_version})", "",
             "| frames | scored | flagged | errors | flag rate |", "| --- | --- | --- | --- | --- |",
             f"| {summary['frames']} | {summary['scored']} | {summary['flagged']} | {summary['errors']} | "
             f"{'n/a' if summary['flag_rate'] is None else format(100 * summary['flag_rate'], '.1f') + '%'} |"]
    if "labelled" in summary:
        lines += ["", f"labelled images: {summary['labelled']}; recall {summary['recall']}, false-alarm rate {summary['false_alarm_rate']}, "
                      f"image AUROC {summary.get('image_auroc')}"]
    top = sorted((r for r in results if r.score is not None), key=lambda r: -r.score)[:10]
    lines += ["", "| top scores | score | flagged |", "| --- | --- | --- |"] + [f"| `{r.image}` | {r.score:.3f} | {r.is_defect} |" for r in top]
    errs = [r for r in results if r.error]
    if errs:
        lines += ["", "## Unreadable images", ""] + [f"- {r.error}" for r in errs[:50]]
    create_markdown_artifact("\n".join(lines), key=_artifact_key("inspection", params.station), description="batch inspection summary")
    logger.info(f"inspected {summary['frames']} images with {model_version}: {summary['flagged']} flagged, {summary['errors']} unreadable")
    return summary
