"""The training flow: data -> pretrain (cached) -> fit -> evaluate -> export -> register -> gate -> promote.

    from flows.training import TrainingParams, training_flow
    result = training_flow(TrainingParams(data=["data/split.json"], product="lineA", config="smoke"))

Every task is a thin wrapper over a `pipeline/` or `inference/` function and passes paths:

1. `prepare-data`: validate every source and feedback manifest, merge them into one manifest
   with absolute paths (`pipeline.data.combine`), fingerprint the training images.
2. `pretrain`: cached in `$LOUPE_HOME/work/<product>/pretrain/<key>/`, where the key hashes the
   training-data fingerprint, the resolved config and the code version (Loupe version + git
   commit). A finished folder (pretrain.json) is reused, so rerunning with the same inputs skips
   pretraining; a folder with only `pretrain_state.pt` (a killed run) is resumed from its last
   epoch (`pretrain_step(resume=True)`). A file lock lets two concurrent runs share the work.
   `nproc > 1` runs it under torchrun DDP (`flows.ddp`).
3. `fit`: copy the encoder into the run folder `work/<product>/runs/<run_id>/`, fit the scorer.
4. `evaluate`: labelled test rows (both classes) -> image/pixel AUROC etc. (`pipeline.shards`, in
   shards: on Dask workers with `dask`); otherwise the false-alarm rate at the threshold on the
   held-out good images that calibrated it. Written to RUN/metrics.json.
5. `export`: `inference.export.export_bundle` -> RUN/bundle (fp32 ONNX; more with `precisions`).
6. `register`: the bundle becomes a challenger version in the registry (`inference.registry`).
7. `gate`: the champion bundle is scored on the same labelled data, `inference.gate.gate` decides,
   the decision is recorded on the version, and it is promoted only if the gate passes.

Retries: only on transient I/O errors (OSError other than missing/forbidden files), twice.
Artifacts: pretraining progress, a metrics table, a markdown report with ROC and heatmap pictures.
A killed run leaves at most a `.bundle.tmp-*` folder in its run folder (cleaned by the next run
of the product) and a registry staging folder (cleaned by the registry's next operation); the
champion keeps serving either way.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator

#: Test hook: the point of the flow where it sleeps, so a reliability test can kill it there ("export").
PAUSE_ENV = "LOUPE_FLOW_PAUSE_AT"
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class TrainingParams(BaseModel):
    """Parameters of `training_flow` (also the deployment's parameter schema)."""

    data: list[str] = Field(..., min_length=1, description="Data sources: image folders, MVTec AD roots, .json/.csv manifests.")
    product: str = Field("default", description="Product or station id: the registry and work folder it trains for.")
    config: str = Field("default", description="Shipped config name (default, robust, imagenet-lite0, smoke) or a YAML file.")
    overrides: list[str] = Field(default_factory=list, description="Config overrides as dotted key=value, e.g. scorer.coreset_ratio=0.02 (YAML values).")
    epochs: Optional[int] = Field(None, ge=0, description="Override the config's pretraining epochs.")
    feedback: list[str] = Field(default_factory=list, description="Feedback manifests from the review app.")
    max_batch: int = Field(32, ge=1, description="Largest batch per call in the bundle.")
    precisions: list[str] = Field(default_factory=lambda: ["fp32"], description="Bundle graphs: fp32 (always), fp16, int8.")
    skip_bad: bool = Field(False, description="Skip unreadable images with a warning instead of failing.")
    promote: bool = Field(True, description="Run the gate and promote when it passes (False: register as challenger only).")
    max_auroc_drop: float = Field(0.005, description="Gate: largest allowed image-AUROC drop vs the champion (0.005 = 0.5 points).")
    gate_alpha: Optional[float] = Field(0.05, description="Gate: binomial test level of the false-alarm check; null for strict.")
    nproc: int = Field(1, ge=1, description="Pretraining processes: > 1 runs torchrun DDP (gloo on CPU, nccl on GPU).")
    device: str = Field("cpu", description="Torch device for pretraining (cuda for GPUs).")
    eval_shards: Optional[int] = Field(None, ge=1, description="Evaluation shards (default: 1, or the Dask workers' count with dask).")
    home: Optional[str] = Field(None, description="Loupe home (default $LOUPE_HOME or ~/.loupe): registry and work folders.")
    actor: Optional[str] = Field(None, description="Who promotes (default: the OS user).")
    progress: bool = Field(False, description="Progress bars on stderr.")

    @field_validator("product")
    @classmethod
    def _product(cls, v: str) -> str:
        from inference.registry import check_product

        return check_product(v)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        from pipeline.config import parse_overrides

        parse_overrides(v)  # raises on an item that is not dotted.key=value
        return v

    def home_path(self) -> Path:
        from inference.registry import loupe_home

        return Path(self.home).expanduser() if self.home else loupe_home()


def resolve_config(params: TrainingParams) -> dict[str, Any]:
    """The run's config as a plain dict: the named config, then overrides, then --epochs."""
    from pipeline.config import load_config, parse_overrides, to_dict

    cfg = load_config(params.config, parse_overrides(params.overrides))
    if params.epochs is not None:
        cfg.pretrain.epochs = params.epochs
    return to_dict(cfg)


#: Pins the code-version part of the pretraining cache key (e.g. to reuse pretraining across commits that leave training alone).
CODE_VERSION_ENV = "LOUPE_CODE_VERSION"


def code_version() -> str:
    """Loupe's version and git commit (or $LOUPE_CODE_VERSION): part of the pretraining cache key."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    from inference.export import loupe_version
    from pipeline.steps import git_commit

    return f"{loupe_version()}+{git_commit()}"


def pretrain_key(train_fingerprint: str, config: dict[str, Any], code: str, nproc: int) -> str:
    """Cache key of a pretraining: data, code, process count and what decides the encoder
    (pipeline.config.pretraining_settings), not the scorer: a scorer-only change re-fits, it
    does not re-pretrain."""
    from pipeline.config import config_from_dict, pretraining_settings

    settings = pretraining_settings(config_from_dict(config))
    blob = json.dumps({"data": train_fingerprint, "pretraining": settings, "code": code, "nproc": nproc if nproc > 1 else 1},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry transient I/O errors only (not bad input, not missing files)."""
    try:
        state.result()
    except _NOT_TRANSIENT:
        return False
    except OSError:
        return True
    except BaseException:
        return False
    return False


def _pause(point: str) -> None:
    from inference.registry import pause_at

    pause_at(point, PAUSE_ENV)


def _artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:120]


_IO = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)


# ----------------------------------------------------------------------------- tasks


@task(name="clean-leftovers", **_IO)
def clean_leftovers(work: str) -> list[str]:
    """Remove half-written bundles (`.bundle.tmp-*`, `.bundle.old-*`) of killed runs; skips runs still alive (locked)."""
    removed = []
    for run in sorted((Path(work) / "runs").glob("*")):
        if not run.is_dir():
            continue
        lock = FileLock(str(run / ".lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # another run is working there
        try:
            for p in [*run.glob(".bundle.tmp-*"), *run.glob(".bundle.old-*")]:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))
        finally:
            lock.release()
    return removed


@task(name="prepare-data", **_IO)
def prepare_data(data: list[str], feedback: list[str], out_dir: str, channels: int, skip_bad: bool) -> dict[str, Any]:
    from pipeline.data.combine import combine_sources

    return combine_sources(data, out_dir, feedback=feedback, channels=channels, skip_bad=skip_bad).to_dict()


@task(name="pretrain", **_IO)
def pretrain_task(manifest: str, config: dict[str, Any], cache_dir: str, *, nproc: int, device: str, progress: bool,
                  product: str) -> dict[str, Any]:
    """Pretrain into the cache folder unless it is complete; resume a killed run from its last epoch."""
    from pipeline.config import config_from_dict
    from pipeline.steps import pretrain_step

    logger = get_run_logger()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict(config)
    epochs = cfg.pretrain.epochs
    with FileLock(str(cache / ".lock")):  # a concurrent run with the same key waits, then finds it done
        done = cache / "pretrain.json"
        if done.is_file() and (cache / "encoder.pt").is_file():
            logger.info(f"pretraining cache hit: {cache}")
            return {"dir": str(cache), "cached": True, "resumed_from_epoch": None, **json.loads(done.read_text())}
        state = cache / "pretrain_state.pt"
        start = _state_epoch(state) if state.is_file() else 0
        if start:
            logger.info(f"resuming pretraining in {cache} from epoch {start}/{epochs}")
        art = create_progress_artifact(100.0 * start / max(1, epochs), key=_artifact_key("pretrain", product),
                                       description=f"pretraining {cfg.name} ({cfg.pretrain.method}, {epochs} epochs)")

        def on_epoch(epoch: int, loss: float) -> None:
            update_progress_artifact(art, 100.0 * epoch / max(1, epochs), description=f"epoch {epoch}/{epochs}, loss {loss:.4f}")
            logger.info(f"pretraining epoch {epoch}/{epochs}: loss {loss:.4f}")

        if nproc > 1:
            from flows.ddp import launch_ddp_pretrain

            summary = launch_ddp_pretrain(manifest, cache, cfg, nproc=nproc, resume=bool(start), device=device, on_epoch=on_epoch)
        else:
            summary = pretrain_step(manifest, cache, cfg, resume=bool(start), progress=progress, device=device, on_epoch=on_epoch)
        update_progress_artifact(art, 100.0)
        return {"dir": str(cache), "cached": False, "resumed_from_epoch": start, **summary}


def _state_epoch(path: Path) -> int:
    """Epochs finished in a pretraining state file (0 if unreadable: pretrain_step then starts over)."""
    from pipeline.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(path)["epoch"])
    except (ValueError, KeyError, FileNotFoundError):
        return 0


@task(name="fit", **_IO)
def fit_task(pretrain_dir: str, run_dir: str, manifest: str, progress: bool, config: dict[str, Any]) -> dict[str, Any]:
    """Fit this run's config (its scorer may differ from the cached pretraining's) on the cached encoder."""
    from pipeline.config import config_from_dict, save_config
    from pipeline.steps import CONFIG_FILE, fit_step

    run = Path(run_dir)
    for name in ("encoder.pt", "pretrain.json"):
        shutil.copyfile(Path(pretrain_dir) / name, run / f".{name}.part")
        os.replace(run / f".{name}.part", run / name)
    save_config(run / CONFIG_FILE, config_from_dict(config))
    return fit_step(run, manifest, progress=progress)


@task(name="score-test-shard", **_IO)
def score_shard_task(run_dir: str, manifest: str, start: int, stop: int, out_npz: str) -> str:
    from pipeline.shards import score_test_shard

    return str(score_test_shard(run_dir, manifest, start, stop, out_npz))


@task(name="evaluate", **_IO)
def evaluate_task(run_dir: str, manifest: str, shard_files: list[str]) -> dict[str, Any]:
    from pipeline.shards import report_from_shards

    run = Path(run_dir)
    return report_from_shards(run, manifest, shard_files, run / "metrics.json", scores_csv=run / "scores.csv")


@task(name="holdout-metrics", **_IO)
def holdout_metrics_task(run_dir: str, fit: dict[str, Any]) -> dict[str, Any]:
    """Without labelled data: the false-alarm rate at the threshold on the held-out good images (from fit.json)."""
    from pipeline.atomic import write_json_atomic

    metrics = {"evaluation": "holdout", "image_auroc": None, "pixel_auroc": None, "aupro": None,
               "false_alarm_rate": fit.get("holdout_false_alarm_rate"), "n_good": fit.get("n_holdout_images"),
               "n_defect": 0, "threshold_raw": fit.get("threshold_raw"),
               "note": "no labelled test data: threshold calibrated on held-out good training images; AUROC not measured"}
    write_json_atomic(Path(run_dir) / "metrics.json", metrics)
    return metrics


@task(name="export", **_IO)
def export_task(run_dir: str, max_batch: int, precisions: list[str], manifest: str) -> dict[str, Any]:
    from inference.export import export_bundle

    logger = get_run_logger()

    def say(msg: str) -> None:
        logger.info(f"export: {msg}")
        _pause("export")  # reliability tests kill the flow here, mid-export (the bundle's temp folder exists)

    run = Path(run_dir)
    data = manifest if "int8" in precisions else None
    manifest_out = export_bundle(run, run / "bundle", precisions=precisions, max_batch=max_batch, metrics=run / "metrics.json",
                                 data=data, progress=say)
    return {"bundle": str(run / "bundle"), "model_version": manifest_out["model_version"]}


@task(name="register", **_IO)
def register_task(home: str, product: str, bundle: str, metrics: dict[str, Any], source: dict[str, Any], actor: str | None) -> dict[str, Any]:
    from inference.registry import Registry

    return Registry(home).register(product, bundle, metrics=metrics, source=source, actor=actor).to_dict()


@task(name="champion-on-same-data", **_IO)
def champion_metrics_task(champion_bundle: str, manifest: str, out: str) -> dict[str, Any] | None:
    """Score the current champion on the challenger's labelled test rows (a fair AUROC comparison)."""
    from inference.evaluate import evaluate_bundle

    try:
        return evaluate_bundle(champion_bundle, manifest, out, runtime="ort-cpu", progress=False)
    except (ValueError, RuntimeError) as err:  # e.g. a champion for another image size or channel count
        get_run_logger().warning(f"could not score the champion {champion_bundle} on {manifest}: {err}")
        return None


@task(name="gate", **_IO)
def gate_task(home: str, product: str, version: str, challenger: dict[str, Any], champion: dict[str, Any] | None,
              champion_version: str | None, target_far: float, max_auroc_drop: float, alpha: float | None, promote: bool,
              actor: str | None) -> dict[str, Any]:
    """Decide against `champion_version` (None: no champion), record the decision, promote if it passes and the champion is unchanged."""
    from inference.gate import GateConfig, gate
    from inference.registry import ChampionChanged, Registry

    has_champion = champion_version is not None and champion_version != version

    reg = Registry(home)
    decision = gate(challenger, champion if has_champion else None, target_false_alarm_rate=target_far,
                    cfg=GateConfig(max_auroc_drop=max_auroc_drop, alpha=alpha)).to_dict()
    if has_champion and champion is None:
        decision["checks"].setdefault("auroc", {})["note"] = "champion could not be scored on these data: AUROC not compared"
    entry = reg.record_gate(product, version, decision, actor=actor)
    promoted = False
    if entry.status == "champion":
        decision["reasons"].append("already the champion")
    elif decision["promote"] and promote:
        try:
            reg.promote(product, version, actor=actor, reason="gate passed", metrics={"challenger": challenger, "checks": decision["checks"]},
                        expected_current=champion_version)
            promoted = True
        except ChampionChanged as err:  # a concurrent run promoted first: this decision was against the old champion
            decision["reasons"].append(str(err))
    elif decision["promote"]:
        decision["reasons"].append("gate passed but promotion is off (promote=False)")
    return {**decision, "promoted": promoted, "version": version}


# ----------------------------------------------------------------------------- artifacts


def _metrics_artifacts(product: str, metrics: dict[str, Any], run_dir: Path) -> None:
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_alarm_rate", "recall_at_threshold", "n_images", "n_good", "n_defect")
    rows = [{"metric": k, "value": metrics.get(k)} for k in keys if k in metrics]
    rows += [{"metric": f"image_auroc[{c}]", "value": v} for c, v in (metrics.get("per_class") or {}).items()]
    create_table_artifact(rows, key=_artifact_key("metrics", product), description=f"evaluation of {run_dir}")
    lines = [f"# Loupe training run `{run_dir.name}` ({product})", ""]
    lines += [f"- **{r['metric']}**: {r['value']}" for r in rows]
    for label, key in (("ROC curve", "roc_png"), ("Heatmap grid", "heatmaps_png")):
        path = metrics.get(key)
        if path and Path(path).is_file():
            data = Path(path).read_bytes()
            lines += ["", f"## {label}", "", f"`{path}`", ""]
            if len(data) < 1_000_000:  # embedded so the UI shows it without file access (large grids: the path only)
                lines.append(f"![{label}](data:image/png;base64,{base64.b64encode(data).decode()})")
    if metrics.get("note"):
        lines += ["", metrics["note"]]
    create_markdown_artifact("\n".join(lines), key=_artifact_key("report", product), description=f"evaluation report of {run_dir}")


# ----------------------------------------------------------------------------- the flow


def _n_shards(params: TrainingParams, n_test: int) -> int:
    if params.eval_shards:
        return params.eval_shards
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    if type(runner).__name__ == "DaskTaskRunner":  # one shard per worker (at least), shards of <= 256 images
        try:
            client = runner.client  # started on first use
            client.wait_for_workers(1, timeout=120)  # a local cluster may still be starting its workers
            workers = len(client.nthreads())
        except Exception:  # the worker count is only a sizing hint
            workers = 1
        return max(workers, -(-n_test // 256))
    return 1


@flow(name="loupe-training", log_prints=True)
def training_flow(params: TrainingParams) -> dict[str, Any]:
    """Train, evaluate, export and register a model for one product; promote it if it passes the gate."""
    from inference.registry import Registry, default_actor
    from pipeline.atomic import write_json_atomic
    from pipeline.shards import shard_ranges

    logger = get_run_logger()
    home = params.home_path()
    actor = params.actor or default_actor()
    config = resolve_config(params)
    work = home / "work" / params.product
    removed = clean_leftovers(str(work))
    if removed:
        logger.info(f"removed leftovers of killed runs: {removed}")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    run_dir = work / "runs" / run_id
    run_dir.mkdir(parents=True)
    run_lock = FileLock(str(run_dir / ".lock"))
    run_lock.acquire()
    try:
        data = prepare_data(params.data, params.feedback, str(work / "data"), config["encoder"]["in_channels"], params.skip_bad)
        manifest = data["manifest"]
        from pipeline.data.feedback import feedback_product

        for fb in params.feedback:
            if feedback_product(fb) not in (None, params.product):
                logger.warning(f"feedback manifest {fb} was written for product {feedback_product(fb)!r}, not {params.product!r}; using it anyway")
        logger.info(f"data: {data['n_train']} training images, {data['n_test_good']} good + {data['n_test_defect']} defective test images "
                    f"({manifest}, fingerprint {data['train_fingerprint'][:12]})")
        key = pretrain_key(data["train_fingerprint"], config, code_version(), params.nproc)
        pre = pretrain_task(manifest, config, str(work / "pretrain" / key), nproc=params.nproc, device=params.device,
                            progress=params.progress, product=params.product)
        fit = fit_task(pre["dir"], str(run_dir), manifest, params.progress, config)
        if data["labelled"]:
            n_test = data["n_test_good"] + data["n_test_defect"]
            ranges = shard_ranges(n_test, _n_shards(params, n_test))
            (run_dir / "shards").mkdir(exist_ok=True)
            futures = [score_shard_task.submit(str(run_dir), manifest, a, b, str(run_dir / "shards" / f"{a:06d}-{b:06d}.npz")) for a, b in ranges]
            metrics = evaluate_task(str(run_dir), manifest, [f.result() for f in futures])
        else:
            metrics = holdout_metrics_task(str(run_dir), fit)
        _metrics_artifacts(params.product, metrics, run_dir)
        exported = export_task(str(run_dir), params.max_batch, params.precisions, manifest)
        source = {"run_dir": str(run_dir), "data": params.data, "feedback": params.feedback, "manifest": manifest,
                  "provenance": data["provenance"], "data_fingerprint": data["train_fingerprint"], "config": params.config,
                  "overrides": params.overrides, "pretrain_key": key, "code": code_version()}
        gate_metrics = {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_alarm_rate",
                                                    "recall_at_threshold", "n_good", "n_defect")}
        gate_metrics["evaluation"] = "labelled" if data["labelled"] else "holdout"
        entry = register_task(str(home), params.product, exported["bundle"], gate_metrics, source, actor)
        reg = Registry(home)
        champion = reg.current(params.product)
        champ_metrics = None
        if champion is not None and champion.version != entry["version"] and data["labelled"]:
            champ_metrics = champion_metrics_task(str(champion.path), manifest, str(run_dir / "champion" / "metrics.json"))
        target = config["scorer"]["target_false_alarm_rate"]
        decision = gate_task(str(home), params.product, entry["version"], gate_metrics,
                             {"image_auroc": champ_metrics.get("image_auroc")} if champ_metrics else None,
                             champion.version if champion else None, target, params.max_auroc_drop,
                             params.gate_alpha, params.promote, actor)
        current = reg.current(params.product)
        result = {
            "product": params.product, "run_dir": str(run_dir), "run_id": run_id, "manifest": manifest, "data": data,
            "pretrain": {k: pre.get(k) for k in ("dir", "cached", "resumed_from_epoch", "epochs", "losses", "seconds")},
            "fit": fit, "metrics": metrics, "bundle": exported["bundle"], "model_version": exported["model_version"],
            "version": entry["version"], "gate": decision, "promoted": decision["promoted"],
            "champion": current.version if current else None,
            "champion_model_version": current.model_version if current else None,
        }
        write_json_atomic(run_dir / "summary.json", result)
        logger.info(f"{params.product}: registered {entry['version']} ({exported['model_version']}); "
                    + ("promoted to champion" if decision["promoted"] else f"not promoted: {'; '.join(decision['reasons']) or 'see gate'}"))
        return result
    finally:
        run_lock.release()
