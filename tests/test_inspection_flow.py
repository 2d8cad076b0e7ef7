"""Batch inspection flow: registry:PRODUCT or a bundle folder, results store records for flagged images, JSON
report, unreadable files reported (not dropped), and the same results on a local Dask cluster."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("single_thread", "prefect_harness")


@pytest.fixture(scope="module")
def home(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    """A Loupe home whose product `p` has a champion (smoke config, no pretraining epochs)."""
    import torch

    from inference.export import export_bundle
    from inference.registry import Registry
    from pipeline.steps import fit_step, pretrain_step

    root = tmp_path_factory.mktemp("inspection")
    torch.manual_seed(0)
    pretrain_step(tiny_data / "split.json", root / "run", "smoke", epochs=0, progress=False)
    fit_step(root / "run", tiny_data / "split.json", progress=False)
    export_bundle(root / "run", root / "bundle")
    reg = Registry(root / "home")
    reg.promote("p", reg.register("p", root / "bundle").version)
    return root / "home"


def _reference_scores(bundle: Path, data: Path) -> np.ndarray:
    from inference.evaluate import score_bundle
    from inference.runtime import BundleInspector
    from pipeline.data import load_samples

    return score_bundle(BundleInspector.load(bundle), load_samples(data, "test"), progress=False)[0]


def test_registry_model_into_store_and_report(home: Path, tiny_data: Path, tmp_path: Path) -> None:
    from flows.inspection import InspectionParams, batch_inspection_flow
    from inference.registry import Registry
    from inference.store import ResultsStore

    db = f"sqlite:///{tmp_path / 'results.db'}"
    params = InspectionParams(data=str(tiny_data / "split.json"), model="registry:p", split="test", station="st-1", db=db,
                              image_root=str(tmp_path / "images"), report=str(tmp_path / "report.json"), home=str(home))
    summary = batch_inspection_flow(params)
    champion = Registry(home).current("p")
    assert summary["model_version"] == champion.model_version and summary["bundle"] == str(champion.path)
    assert summary["frames"] == summary["scored"] == 18 and summary["errors"] == 0 and summary["labelled"] == 18

    report = json.loads((tmp_path / "report.json").read_text())
    scores = np.array([r["score"] for r in report["results"]])
    np.testing.assert_allclose(scores, _reference_scores(champion.path, tiny_data / "split.json"), rtol=1e-5, atol=1e-6)
    assert [r["is_defect"] for r in report["results"]] == list(scores >= 0.5)

    store = ResultsStore(db, tmp_path / "images")
    try:
        records = store.records(summary["store"]["run_id"])
        assert len(records) == summary["flagged"] == int((scores >= 0.5).sum())
        flagged_ids = {r["record_id"] for r in report["results"] if r["is_defect"]}
        assert {rec.id for rec in records} == flagged_ids
        for rec in records:
            assert rec.station == "st-1" and rec.model_version == champion.model_version and rec.threshold == 0.5
            assert store.image_path(rec.image_path).is_file() and store.image_path(rec.overlay_path).is_file()
        run = store.get_run(summary["store"]["run_id"])
        assert run.flagged == len(records) and run.frames == 18 and run.ended_at is not None
    finally:
        store.close()


def test_bundle_folder_without_store_reports_bad_files(home: Path, tiny_data: Path, tmp_path: Path) -> None:
    from flows.inspection import InspectionParams, batch_inspection_flow
    from inference.registry import Registry

    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data / "test" / "good", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    bundle = Registry(home).current("p").path
    summary = batch_inspection_flow(InspectionParams(data=str(folder), model=str(bundle), store=False,
                                                     report=str(tmp_path / "r.json")))
    assert summary["frames"] == 7 and summary["scored"] == 6 and summary["errors"] == 1 and summary["store"] is None
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["image"].endswith("broken.png") and "broken.png" in bad[0]["error"] and bad[0]["score"] is None


def test_dask_local_cluster_gives_the_same_results(home: Path, tiny_data: Path, tmp_path: Path) -> None:
    from flows.cli_train import dask_runner
    from flows.inspection import InspectionParams, batch_inspection_flow

    params = InspectionParams(data=str(tiny_data / "split.json"), model="registry:p", split="test", store=False, chunk_size=5,
                              report=str(tmp_path / "dask.json"), home=str(home))
    summary = batch_inspection_flow.with_options(task_runner=dask_runner("local", workers=2))(params)
    assert summary["frames"] == 18
    rows: list[dict[str, Any]] = json.loads((tmp_path / "dask.json").read_text())["results"]
    from inference.registry import Registry

    expected = _reference_scores(Registry(home).current("p").path, tiny_data / "split.json")
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-5, atol=1e-6)
