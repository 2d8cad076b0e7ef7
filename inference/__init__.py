"""Deployment: export a fitted run to a model bundle and run it on ONNX Runtime, PyTorch or TensorRT.

    loupe export RUN_DIR --out BUNDLE_DIR [--format onnx|tensorrt|all] [--precision fp16 --precision int8 --data DATA]
    loupe evaluate BUNDLE_DIR DATA --out metrics.json --runtime ort-cpu
    loupe bench latency BUNDLE_DIR --out latency.json

    from inference import BundleInspector
    inspector = BundleInspector.load("bundle/")   # verified; TensorRT EP > CUDA EP > CPU unless told
    results = inspector(frames)                    # uint8 [N, S, S, C] -> [InspectionResult(score, anomaly_map, is_defect, model_version)]

Modules: `export` (tracing, fp16/int8 graphs, bundle writing), `bundle` (layout and
verification), `runtime` (runners and `BundleInspector`), `evaluate` (`loupe evaluate`
on bundles), `latency` (`loupe bench latency`). Heavy dependencies are imported lazily.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BundleInspector", "InspectionResult", "BatchResult", "BundleError", "FrameError", "export_bundle", "read_bundle"]


def __getattr__(name: str) -> Any:  # lazy: `import inference` stays cheap
    if name in ("BundleInspector", "InspectionResult", "BatchResult", "FrameError"):
        from inference import runtime

        return getattr(runtime, name)
    if name in ("BundleError", "read_bundle"):
        from inference import bundle

        return getattr(bundle, name)
    if name == "export_bundle":
        from inference.export import export_bundle

        return export_bundle
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
