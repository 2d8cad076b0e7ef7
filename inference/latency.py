"""Latency and throughput of a bundle on every runtime available on this machine.

`measure_latency(BUNDLE_DIR)` is what `loupe bench latency` and `benchmarks/latency.py`
run. For each runtime (`torch_cpu`, `ort_cpu`, `ort_cpu_int8`; with CUDA also
`torch_cuda`, `ort_cuda`, `ort_trt`, `trt`) it times batch-1 calls end to end (numpy
uint8 frames in, numpy results out: host<->device copies included) and reports p50 and
p99 in ms, then batch-`batch` calls and reports images per second. It also reports
`image_size`, `bank_size`, `flops_per_image` (PyTorch FlopCounterMode on the
inspector's forward, batch 1; encoder and search separately), the split of batch-1
time between encoder (pre-processing + encoder + patch features), nearest-neighbour
search and post-processing (upsampling, blur, reduction) for torch_cpu and ort_cpu,
and `commit`.

JSON shape::

    {"runtimes": {"ort_cpu": {"p50_ms": .., "p99_ms": .., "throughput_ips": .., ...}, ...},
     "skipped": {"trt": "why"}, "split": {"torch_cpu": {"encoder_ms": .., "search_ms": .., "post_ms": ..}, ...},
     "image_size": .., "bank_size": .., "flops_per_image": .., "commit": .., ...}
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inference.bundle import Bundle, read_bundle
from inference.runtime import OrtRunner, Runner, TensorRTRunner, TorchBundleRunner, tensorrt_available

ALL_RUNTIMES = ("torch_cpu", "ort_cpu", "ort_cpu_int8", "torch_cuda", "ort_cuda", "ort_trt", "trt")


def _timed(fn: Callable[[], Any], min_iters: int, seconds: float, max_iters: int = 5000) -> np.ndarray:
    """Per-call wall times in ms: at least `min_iters` calls and until `seconds` have passed."""
    times = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < seconds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return np.array(times)


def _interleaved(fns: list[Callable[[], Any]], min_iters: int, seconds: float) -> list[float]:
    """Median ms of each function, timed in alternation (so load changes on a shared machine hit all alike)."""
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_iters or time.perf_counter() - start < seconds:
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        if len(times[0]) >= 5000:
            break
    return [float(np.median(ts)) for ts in times]


def _make_runner(bundle: Bundle, name: str) -> Runner:
    """Construct runtime `name`; raises RuntimeError/LookupError with the reason it is not available."""
    import onnxruntime as ort
    import torch

    eps = ort.get_available_providers()
    if name == "torch_cpu":
        return TorchBundleRunner(bundle, "cpu")
    if name == "ort_cpu":
        return OrtRunner(bundle, "fp32", ["CPUExecutionProvider"])
    if name == "ort_cpu_int8":
        if not bundle.has("int8"):
            raise LookupError("bundle has no model.int8.onnx (export with --precision int8 --data DATA)")
        return OrtRunner(bundle, "int8", ["CPUExecutionProvider"])
    if not torch.cuda.is_available() and name != "ort_cuda" and name != "ort_trt":
        raise LookupError("no CUDA GPU")
    if name == "torch_cuda":
        return TorchBundleRunner(bundle, "cuda")
    if name == "ort_cuda":
        if "CUDAExecutionProvider" not in eps:
            raise LookupError("ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        return OrtRunner(bundle, "fp32", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if name == "ort_trt":
        if "TensorrtExecutionProvider" not in eps:
            raise LookupError("ONNX Runtime has no TensorrtExecutionProvider (install onnxruntime-gpu and TensorRT)")
        return OrtRunner(bundle, "fp16" if bundle.has("fp16") else "fp32",
                         ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    if name == "trt":
        ok, why = tensorrt_available()
        if not ok:
            raise LookupError(why)
        if not bundle.has("fp16"):
            raise LookupError("bundle has no model.fp16.onnx (export with --precision fp16 or --format tensorrt)")
        return TensorRTRunner(bundle)
    raise ValueError(f"unknown runtime {name!r}; choose from {ALL_RUNTIMES}")


def time_runner(runner: Runner, frames1: np.ndarray, frames_b: np.ndarray, *, warmup: int = 3, min_iters: int = 20, seconds: float = 3.0) -> dict[str, Any]:
    """Batch-1 p50/p99 (ms) and batch-B throughput (images/s) of one runner."""
    for _ in range(warmup):
        runner.run(frames1)
    t1 = _timed(lambda: runner.run(frames1), min_iters, seconds)
    runner.run(frames_b)
    tb = _timed(lambda: runner.run(frames_b), max(3, min_iters // 4), seconds)
    return {"p50_ms": float(np.percentile(t1, 50)), "p99_ms": float(np.percentile(t1, 99)), "mean_ms": float(t1.mean()),
            "throughput_ips": float(frames_b.shape[0] * len(tb) / (tb.sum() / 1e3)), "batch1_calls": int(len(t1)),
            "batch_calls": int(len(tb)), "precision": runner.precision}


def flop_counts(bundle: Bundle) -> dict[str, int]:
    """FLOPs per image (batch 1) of the whole forward and of its encoder part (FlopCounterMode: matmuls and convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.scoring.fit import load_inspector

    inspector, _ = load_inspector(bundle.path / "inspector.pt")
    s, c = bundle.spec.size, bundle.spec.channels
    x = torch.zeros(1, s, s, c, dtype=torch.uint8)
    with torch.no_grad():
        with FlopCounterMode(display=False) as total:
            inspector(x)
        with FlopCounterMode(display=False) as enc:
            inspector.features(inspector.preprocess(x))
    t, e = int(total.get_total_flops()), int(enc.get_total_flops())
    return {"flops_per_image": t, "flops_encoder": e, "flops_search_and_post": t - e}


def split_torch(bundle: Bundle, min_iters: int, seconds: float) -> dict[str, float]:
    """Batch-1 ms of encoder / nearest-neighbour search / post-processing in PyTorch eager (CPU)."""
    import torch

    from pipeline.scoring.fit import load_inspector
    from pipeline.scoring.knn import nearest_distance

    m, _ = load_inspector(bundle.path / "inspector.pt")
    s, c = bundle.spec.size, bundle.spec.channels
    x = torch.randint(0, 256, (1, s, s, c), dtype=torch.uint8)

    def enc() -> torch.Tensor:
        return m.features(m.preprocess(x))

    def search() -> torch.Tensor:
        f = enc()
        n, d, h, w = f.shape
        return nearest_distance(f.permute(0, 2, 3, 1).reshape(n * h * w, d), m.memory_bank, m.bank_sq, m.cfg.knn_chunk)

    with torch.inference_mode():
        fns = [enc, search, lambda: m(x)]
        for fn in fns:
            fn()
        return _split(*_interleaved(fns, min_iters, seconds))


def _split(t_enc: float, t_enc_search: float, t_full: float) -> dict[str, float | None]:
    search, post = max(t_enc_search - t_enc, 0.0), max(t_full - t_enc_search, 0.0)
    return {"encoder_ms": t_enc, "search_ms": search, "post_ms": post, "total_ms": t_full,
            "search_over_encoder": search / t_enc if t_enc > 0 else None}


def split_ort(bundle: Bundle, min_iters: int, seconds: float) -> dict[str, float]:
    """The same split for ONNX Runtime CPU, timing sub-graphs of model.onnx cut at the queries and at the distances."""
    import onnx
    import onnxruntime as ort

    from inference.export import graph_layout

    model = onnx.load(str(bundle.model_path("fp32")))
    layout = graph_layout(model)
    if layout.distance is None:
        return {}
    s, c = bundle.spec.size, bundle.spec.channels
    x = {bundle.spec.name: np.random.default_rng(0).integers(0, 256, (1, s, s, c), dtype=np.uint8)}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # The three sessions are timed in alternation; a session's idle pool threads would otherwise
    # spin on the cores the next one needs (on 2 cores this doubled every sub-graph's time).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fns = []
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # the extractor needs value_info of the cut points
    for out in (layout.queries, layout.distance, None):
        sub = model if out is None else onnx.utils.Extractor(inferred).extract_model([bundle.spec.name], [out])
        sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
        sess.run(None, x)
        fns.append(lambda sess=sess: sess.run(None, x))
    return _split(*_interleaved(fns, min_iters, seconds))


def measure_latency(
    bundle_dir: str | Path,
    *,
    runtimes: tuple[str, ...] | list[str] | None = None,
    batch: int = 32,
    warmup: int = 3,
    min_iters: int = 20,
    seconds: float = 3.0,
    split: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every available runtime (or those named) on a bundle; see the module docstring for the result."""
    import torch

    from pipeline.steps import git_commit, machine_info, now

    say = progress or (lambda msg: None)
    bundle = read_bundle(bundle_dir)
    s, c = bundle.spec.size, bundle.spec.channels
    rng = np.random.default_rng(0)
    frames_b = rng.integers(0, 256, (batch, s, s, c), dtype=np.uint8)
    frames1 = frames_b[:1].copy()
    result: dict[str, Any] = {"runtimes": {}, "skipped": {}}
    for name in runtimes or ALL_RUNTIMES:
        try:
            runner = _make_runner(bundle, name)
        except (LookupError, RuntimeError, ImportError) as err:
            result["skipped"][name] = str(err)
            continue
        say(f"timing {name}")
        try:
            result["runtimes"][name] = time_runner(runner, frames1, frames_b, warmup=warmup, min_iters=min_iters, seconds=seconds)
        except Exception as err:  # a runtime that loads but fails to run is reported, not fatal
            result["skipped"][name] = f"failed: {type(err).__name__}: {err}"
        del runner
    if split:
        say("timing encoder vs search")
        result["split"] = {"torch_cpu": split_torch(bundle, min_iters, seconds), "ort_cpu": split_ort(bundle, min_iters, seconds)}
    result.update(flop_counts(bundle))
    m = bundle.manifest
    result.update({
        "image_size": s, "channels": c, "bank_size": m["bank_size"], "knn_chunk": m.get("knn_chunk"), "batch": batch,
        "model_version": bundle.model_version, "encoder": m.get("encoder"), "commit": git_commit(), "created": now(),
        "machine": {**machine_info(), "processor": platform.processor() or platform.machine(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "note": "batch-1 times are end to end (numpy uint8 in, numpy out); throughput at batch `batch`",
    })
    ref = result["runtimes"].get("torch_cpu", {}).get("p50_ms")
    if ref:
        result["ratios_vs_torch_cpu_p50"] = {k: v["p50_ms"] / ref for k, v in result["runtimes"].items()}
    return result
