"""`loupe demo` through the flows: synthetic data -> training flow (pretrain, fit, evaluate, export, register,
promote) -> batch inspection of the demo's test images into the results store.

`run_demo_training` returns a `DemoContext` that later demo steps (live inspection, review)
build on: the Loupe home with the registry (`registry:demo`), the results store URL and
image root, the data, the training result and the inspection summary.

Layout under OUT (default runs/demo):

    OUT/data/                  synthetic data set (split.json), strip.png
    OUT/home/                  the demo's Loupe home: registry/demo/, work/demo/, results/results.db + images/
    OUT/run -> home/work/demo/runs/<latest run>   (symlink)
    OUT/metrics.json, metrics_roc.png, metrics_heatmaps.png, scores.csv   (copied from the latest run)
    OUT/inspection.json        the batch inspection report
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_PRODUCT = "demo"


@dataclass
class DemoContext:
    """What the demo built, for the steps that follow."""

    out: Path
    home: Path  # Loupe home of the demo (pass as --home / LOUPE_HOME)
    product: str  # registry product: the champion is `registry:demo` under `home`
    data_dir: Path
    split: Path  # split.json of the synthetic data
    strip_png: Path
    db_url: str  # results store of the demo
    image_root: Path
    training: dict[str, Any] = field(default_factory=dict)  # training_flow result
    inspection: dict[str, Any] = field(default_factory=dict)  # batch_inspection_flow summary
    metrics_json: Path | None = None
    scores_csv: Path | None = None


def _link_latest(out: Path, run_dir: Path) -> None:
    """OUT/run -> the latest run folder (a symlink switched atomically); OUT/metrics* copied from it."""
    from pipeline.atomic import atomic_open

    link = out / "run"
    tmp = out / f".run.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    if link.exists() and not link.is_symlink():  # a run folder of the pre-flow demo: keep it aside
        os.replace(link, out / "run.old")
    os.symlink(os.path.relpath(run_dir, out), tmp)
    os.replace(tmp, link)
    for name in ("metrics.json", "metrics_roc.png", "metrics_heatmaps.png", "scores.csv"):
        src = run_dir / name
        if src.is_file():
            with atomic_open(out / name) as f, open(src, "rb") as s:
                shutil.copyfileobj(s, f)


def prepare_demo_data(out: Path, data_params: dict[str, Any]) -> tuple[Path, Path]:
    """The synthetic data set (cached by its parameters) and a line-scan strip preview -> (split.json, strip.png)."""
    import numpy as np

    from pipeline.data import write_image_atomic
    from pipeline.data.synthetic import make_strip, write_dataset

    data_dir = out / "data"
    try:
        split = write_dataset(data_dir, **data_params)
    except FileExistsError as exc:
        raise ValueError(f"{exc}; pass another --out folder") from None
    strip_png = data_dir / "strip.png"
    if not strip_png.is_file():
        strip, _ = make_strip(np.random.default_rng(data_params["seed"]), data_params["texture"])
        write_image_atomic(strip_png, strip)
    return split, strip_png


def run_demo_training(out: Path, data_params: dict[str, Any], *, config: str, epochs: int, progress: bool,
                      overrides: list[str] | None = None) -> DemoContext:
    """Data -> training flow (register, promote) -> batch inspection of the test images; returns the context."""
    from flows.inspection import InspectionParams, batch_inspection_flow
    from flows.training import TrainingParams, training_flow

    out = Path(out)
    split, strip_png = prepare_demo_data(out, data_params)
    home = out / "home"
    db_url, image_root = f"sqlite:///{(home / 'results' / 'results.db').resolve()}", home / "results" / "images"
    ctx = DemoContext(out=out, home=home, product=DEMO_PRODUCT, data_dir=split.parent, split=split, strip_png=strip_png,
                      db_url=db_url, image_root=image_root)
    ctx.training = training_flow(TrainingParams(data=[str(split)], product=DEMO_PRODUCT, config=config, overrides=overrides or [],
                                                epochs=epochs, home=str(home), progress=progress))
    _link_latest(out, Path(ctx.training["run_dir"]))
    ctx.metrics_json, ctx.scores_csv = out / "metrics.json", out / "scores.csv"
    # The champion (this run if the gate promoted it); without any champion yet, the run's own bundle.
    model = f"registry:{DEMO_PRODUCT}" if ctx.training["champion"] else ctx.training["bundle"]
    ctx.inspection = batch_inspection_flow(InspectionParams(data=str(split), model=model, split="test",
                                                            station="demo", db=db_url, image_root=str(image_root),
                                                            report=str(out / "inspection.json"), home=str(home)))
    return ctx
