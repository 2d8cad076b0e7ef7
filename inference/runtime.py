"""Run a model bundle: ONNX Runtime (CPU, CUDA, TensorRT EP), PyTorch, or native TensorRT.

    from inference.runtime import BundleInspector
    inspector = BundleInspector.load("bundle/")          # verifies every sha256, picks TensorRT EP > CUDA > CPU
    results = inspector(frames)                           # uint8 [N, S, S, C] / [S, S, C] / [N, S, S] (C == 1)
    results[0].score, results[0].anomaly_map, results[0].is_defect, results[0].model_version
    batch = inspector.run(frames)                         # arrays: score [N], anomaly_map [N, S, S], is_defect [N]

Every runner takes uint8 frames [n, S, S, C] (n <= the bundle's max_batch) and returns
a `BatchResult`; `BundleInspector` validates frames (other sizes or channel counts are
refused with a `FrameError` naming the expected shape: the bundle never resizes) and
splits large batches.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from inference.bundle import INSPECTOR_COPY, Bundle, BundleError, read_bundle, record_engine, sha256_file, verify_file

#: Runtime names of `BundleInspector.load(runtime=...)` and `loupe evaluate --runtime`.
RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")
#: ONNX Runtime execution providers in order of preference.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class FrameError(ValueError):
    """Frames a bundle cannot take (dtype, size, channels)."""


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for cannot run on this machine (package, GPU or execution provider missing)."""


@dataclass(frozen=True)
class InspectionResult:
    """One frame's result."""

    score: float  # normalized image score; the threshold sits at 0.5
    anomaly_map: np.ndarray  # float32 [S, S], same normalization
    is_defect: bool
    model_version: str  # the bundle's model version (+precision when not fp32)


class BatchResult(NamedTuple):
    """A batch's results as arrays."""

    score: np.ndarray  # float32 [N]
    anomaly_map: np.ndarray  # float32 [N, S, S]
    is_defect: np.ndarray  # bool [N]


def as_frames(frames: np.ndarray | Sequence[np.ndarray], size: int, channels: int) -> np.ndarray:
    """Validate frames -> C-contiguous uint8 [N, size, size, channels].

    Accepts [N, S, S, C], one frame [S, S, C], and for gray bundles (C == 1) also
    [N, S, S] and [S, S]. Anything else (another dtype, size or channel count) raises
    FrameError: frames are never resized or colour-converted silently.
    """
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise FrameError("no frames given")
        frames = np.stack([np.asarray(f) for f in frames])
    if not isinstance(frames, np.ndarray):
        raise FrameError(f"frames must be a numpy uint8 array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise FrameError(f"frames must be uint8 raw pixels (0..255), got dtype {frames.dtype}; "
                         "convert on the station (e.g. np.clip(x, 0, 255).astype(np.uint8) for 8-bit data)")
    s, c = size, channels
    x = frames
    if x.ndim == 2 and c == 1:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        if x.shape == (s, s, c):
            x = x[None]
        elif c == 1 and x.shape[1:] == (s, s):
            x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (s, s, c):
        gray = f", [N, {s}, {s}] or [{s}, {s}]" if c == 1 else ""
        raise FrameError(
            f"frames of shape {tuple(frames.shape)} do not fit this bundle: it takes uint8 [N, {s}, {s}, {c}] (NHWC) "
            f"or one frame [{s}, {s}, {c}]{gray}. Frames of another size or channel count are refused, not resized: "
            f"resize/convert on the station to {s}x{s} with {c} channel(s) as in training"
        )
    return np.ascontiguousarray(x)


class Runner:
    """Base class: runs uint8 frames [n, S, S, C] (n <= max_batch) -> BatchResult."""

    name: str = "runner"
    precision: str = "fp32"

    def run(self, frames: np.ndarray) -> BatchResult:  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------- ONNX Runtime


def _ort_providers(requested: Sequence[Any] | None) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PROVIDER_PREFERENCE if p in available]
    names = [p[0] if isinstance(p, tuple) else p for p in requested]
    missing = [n for n in names if n not in available]
    if missing:
        raise RuntimeUnavailable(f"ONNX Runtime execution provider(s) {missing} are not available here (available: {available}); "
                           "install onnxruntime-gpu (pip install 'loupe[gpu]') for CUDA/TensorRT")
    return list(requested)


def _user_cache(*parts: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loupe"
    return base.joinpath(*parts)


class OrtRunner(Runner):
    """ONNX Runtime session on one of the bundle's graphs; IO binding when it runs on CUDA/TensorRT."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", providers: Sequence[Any] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.bundle, self.precision = bundle, precision
        path = bundle.model_path(precision)
        spec = bundle.spec
        chosen = []
        for p in _ort_providers(providers):
            if p == "TensorrtExecutionProvider":  # engine cache per model, profile batch 1..max_batch
                shape = lambda n: f"{spec.name}:{n}x{spec.size}x{spec.size}x{spec.channels}"  # noqa: E731
                cache = _user_cache("ort-trt", f"{bundle.model_version}-{precision}")
                cache.mkdir(parents=True, exist_ok=True)
                p = (p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                         "trt_timing_cache_path": str(cache), "trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(1),
                         "trt_profile_max_shapes": shape(bundle.max_batch)})
            chosen.append(p)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=chosen)
        self.providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]
        first = self.providers[0]
        self.on_gpu = first in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.name = {"TensorrtExecutionProvider": "ort_trt", "CUDAExecutionProvider": "ort_cuda"}.get(first, "ort_cpu")
        if precision != "fp32":
            self.name += f"_{precision}"
        self._bound: dict[int, tuple[Any, Any, list[Any]]] = {}

    def _binding(self, n: int) -> tuple[Any, Any, list[Any]]:
        """Device buffers for batch n, bound once: input OrtValue, IOBinding, output OrtValues."""
        import onnxruntime as ort

        if n not in self._bound:
            spec = self.bundle.spec
            x = ort.OrtValue.ortvalue_from_shape_and_type((n, spec.size, spec.size, spec.channels), np.uint8, "cuda", 0)
            shapes = {"score": ((n,), np.float32), "anomaly_map": ((n, spec.size, spec.size), np.float32), "is_defect": ((n,), np.bool_)}
            io = self.session.io_binding()
            io.bind_ortvalue_input(spec.name, x)
            outs = []
            for name in self.output_names:
                shape, dtype = shapes[name]
                ov = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)
                io.bind_ortvalue_output(name, ov)
                outs.append(ov)
            self._bound[n] = (x, io, outs)
        return self._bound[n]

    def run(self, frames: np.ndarray) -> BatchResult:
        if self.on_gpu:
            x, io, outs = self._binding(frames.shape[0])
            x.update_inplace(frames)  # host -> device copy into the bound buffer
            self.session.run_with_iobinding(io)
            res = dict(zip(self.output_names, (o.numpy() for o in outs)))
        else:
            res = dict(zip(self.output_names, self.session.run(None, {self.bundle.spec.name: frames})))
        return BatchResult(res["score"], res["anomaly_map"], res["is_defect"])


# ----------------------------------------------------------------------------- PyTorch


class TorchBundleRunner(Runner):
    """The bundle's inspector.pt (the module the graphs were traced from) in PyTorch eager."""

    def __init__(self, bundle: Bundle, device: str | None = None) -> None:
        import torch

        from pipeline.scoring.fit import load_inspector

        self.bundle = bundle
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        inspector, _ = load_inspector(bundle.path / INSPECTOR_COPY)
        self.module = inspector.to(self.device).eval()
        self.name = f"torch_{self.device.type}"

    def run(self, frames: np.ndarray) -> BatchResult:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(frames).to(self.device, non_blocking=True)
            out = self.module(x)
            return BatchResult(out.score.float().cpu().numpy(), out.anomaly_map.float().cpu().numpy(), out.is_defect.cpu().numpy())


# ----------------------------------------------------------------------------- TensorRT


def tensorrt_available() -> tuple[bool, str]:
    """(whether the native TensorRT path can run here, why not)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the `tensorrt` Python package is not installed (pip install 'loupe[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to PyTorch"
    return True, ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


class TensorRTRunner(Runner):
    """Native TensorRT: engine built from model.fp16.onnx as a strongly typed network, cached in the bundle.

    Engine file: `model.<gpu-slug>.trt<version>.engine` (recorded with its sha256 in
    bundle.json's `engines`); timing cache `timing.<gpu-slug>.trt<version>.cache`.
    Two optimization profiles: batch 1 (opt 1, for latency) and 1..max_batch (opt
    max_batch, for throughput); one execution context per profile. Inference is
    `execute_async_v3` on a CUDA stream with tensor addresses of preallocated device
    buffers (PyTorch CUDA tensors) and pinned host staging buffers.
    When the bundle folder is not writable, engines are cached under ~/.cache/loupe/trt.
    """

    WORKSPACE_BYTES = 4 << 30

    def __init__(self, bundle: Bundle, max_batch: int | None = None, device: int = 0, rebuild: bool = False) -> None:
        ok, why = tensorrt_available()
        if not ok:
            raise RuntimeUnavailable(f"the native TensorRT runtime needs TensorRT and a CUDA GPU, but {why}")
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.bundle = bundle
        self.precision = "fp16"
        self.name = "trt"
        self.max_batch = int(max_batch or bundle.max_batch)
        torch.cuda.set_device(device)
        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        gpu = _slug(torch.cuda.get_device_name(device))
        self.engine_name = f"model.{gpu}.trt{trt.__version__}.engine"
        self.cache_name = f"timing.{gpu}.trt{trt.__version__}.cache"
        self.onnx_path = bundle.model_path("fp16")
        self.engine = self._load_or_build(gpu, rebuild)
        self.stream = torch.cuda.Stream(device=self.device)
        self._setup_buffers()

    # -- engine ------------------------------------------------------------------

    def _engine_dir(self) -> tuple[Path, bool]:
        """(folder for engines, whether it is the bundle itself)."""
        if os.access(self.bundle.path, os.W_OK):
            return self.bundle.path, True
        d = _user_cache("trt", self.bundle.model_version)
        d.mkdir(parents=True, exist_ok=True)
        return d, False

    def _load_or_build(self, gpu: str, rebuild: bool) -> Any:
        trt = self.trt
        folder, in_bundle = self._engine_dir()
        path = folder / self.engine_name
        record = self.bundle.manifest.get("engines", {}).get(self.engine_name) if in_bundle else None
        src_sha = self.bundle.manifest["files"][self.onnx_path.name]["sha256"]
        usable = (path.is_file() and not rebuild and record is not None and record.get("source_sha256") == src_sha
                  and int(record.get("max_batch", 0)) >= self.max_batch)
        self.runtime = trt.Runtime(self.logger)  # outlives the engines it deserializes
        if usable:
            verify_file(folder, self.engine_name, record, what="TensorRT engine")  # tampered engine -> BundleError
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                self.max_batch = int(record["max_batch"])
                return engine
            warnings.warn(f"{path} could not be deserialized by TensorRT {trt.__version__}; rebuilding it")
        plan = self.build(self.onnx_path, self.max_batch, folder / self.cache_name, self.logger)
        tmp = Path(tempfile.mkstemp(prefix=f".{self.engine_name}.", dir=folder)[1])
        try:
            tmp.write_bytes(plan)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        info = {"gpu": gpu, "tensorrt": trt.__version__, "source": self.onnx_path.name, "source_sha256": src_sha,
                "max_batch": self.max_batch, "profiles": [[1, 1, 1], [1, self.max_batch, self.max_batch]]}
        if in_bundle:
            record_engine(folder, self.engine_name, info)
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine it just built ({path})")
        return engine

    @staticmethod
    def build(onnx_path: Path, max_batch: int, timing_cache: Path | None, logger: Any) -> bytes:
        """Build a serialized engine from an ONNX graph as a strongly typed network (types come from the graph)."""
        import tensorrt as trt

        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = [parser.get_error(i) for i in range(parser.num_errors)]
            errors = "; ".join(e.desc() if hasattr(e, "desc") else str(e) for e in errs)
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, TensorRTRunner.WORKSPACE_BYTES)
        inp = network.get_input(0)
        shape = tuple(inp.shape)  # (-1, S, S, C)
        for opt, top in ((1, 1), (max_batch, max_batch)) if max_batch > 1 else ((1, 1),):
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, (1, *shape[1:]), (opt, *shape[1:]), (top, *shape[1:]))
            config.add_optimization_profile(profile)
        cache_bytes = b""
        if timing_cache is not None and timing_cache.is_file():
            cache_bytes = timing_cache.read_bytes()
        cache = config.create_timing_cache(cache_bytes)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            cache = config.create_timing_cache(b"")  # a stale or foreign cache: start afresh
            config.set_timing_cache(cache, ignore_mismatch=True)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
        if timing_cache is not None:
            try:
                data = bytes(memoryview(config.get_timing_cache().serialize()))
                tmp = timing_cache.with_name(f".{timing_cache.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, timing_cache)
            except OSError:
                pass  # a read-only location: the cache only speeds up the next build
        return bytes(memoryview(plan))

    # -- buffers and execution ---------------------------------------------------

    def _setup_buffers(self) -> None:
        trt, torch = self.trt, self.torch
        dt = trt.DataType
        to_torch = {dt.FLOAT: torch.float32, dt.HALF: torch.float16, dt.UINT8: torch.uint8, dt.BOOL: torch.bool,
                    dt.INT32: torch.int32, dt.INT64: torch.int64}
        e = self.engine
        self.inputs, self.outputs = [], []
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            (self.inputs if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append((name, to_torch[e.get_tensor_dtype(name)]))
        if len(self.inputs) != 1:
            raise BundleError(f"{self.engine_name}: expected one input tensor, found {[n for n, _ in self.inputs]}")
        spec = self.bundle.spec
        per_frame = {self.inputs[0][0]: (spec.size, spec.size, spec.channels), "score": (), "anomaly_map": (spec.size, spec.size), "is_defect": ()}
        self.dev: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        for name, dtype in self.inputs + self.outputs:
            shape = (self.max_batch, *per_frame[name])
            self.dev[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.host[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
        n_profiles = e.num_optimization_profiles
        self.contexts = []
        for k in range(n_profiles):
            ctx = e.create_execution_context()
            ctx.set_optimization_profile_async(k, self.stream.cuda_stream)
            for name, _ in self.inputs + self.outputs:
                ctx.set_tensor_address(name, self.dev[name].data_ptr())
            self.contexts.append(ctx)
        self.stream.synchronize()

    def run(self, frames: np.ndarray) -> BatchResult:
        torch = self.torch
        n = frames.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds the engine's max batch {self.max_batch}")
        ctx = self.contexts[0] if (n == 1 or len(self.contexts) == 1) else self.contexts[1]
        name_in = self.inputs[0][0]
        with torch.cuda.stream(self.stream):
            self.host[name_in][:n].numpy()[...] = frames
            self.dev[name_in][:n].copy_(self.host[name_in][:n], non_blocking=True)
            if not ctx.set_input_shape(name_in, tuple(frames.shape)):
                raise RuntimeError(f"TensorRT refused input shape {tuple(frames.shape)}")
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            for name, _ in self.outputs:
                self.host[name][:n].copy_(self.dev[name][:n], non_blocking=True)
        self.stream.synchronize()
        res = {name: self.host[name][:n].numpy().copy() for name, _ in self.outputs}
        return BatchResult(res["score"].astype(np.float32, copy=False), res["anomaly_map"].astype(np.float32, copy=False), res["is_defect"].astype(bool, copy=False))


# ----------------------------------------------------------------------------- the inspector


def best_runtime() -> str:
    """The runtime `BundleInspector.load` uses when told none: ONNX Runtime with TensorRT EP > CUDA > CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" in available:
        return "ort-trt"
    if "CUDAExecutionProvider" in available:
        return "ort-cuda"
    return "ort-cpu"


def make_runner(bundle: Bundle, runtime: str | None = None, providers: Sequence[Any] | None = None, precision: str | None = None,
                max_batch: int | None = None) -> Runner:
    """A runner for a verified bundle. runtime: one of RUNTIMES (also torch-cpu / torch-cuda), or None."""
    if runtime is not None and providers is not None:
        raise ValueError("pass either runtime or providers, not both")
    if providers is not None:
        return OrtRunner(bundle, precision or "fp32", providers)
    runtime = runtime or best_runtime()
    if runtime in ("torch", "torch-cpu", "torch-cuda"):
        if runtime == "torch-cuda":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeUnavailable("runtime torch-cuda needs a CUDA GPU, and PyTorch sees none")
        if precision not in (None, "fp32"):
            raise ValueError(f"the torch runtime runs the fp32 inspector; precision {precision!r} is for ONNX Runtime/TensorRT")
        return TorchBundleRunner(bundle, None if runtime == "torch" else runtime.split("-")[1])
    if runtime == "trt":
        if precision not in (None, "fp16"):
            raise ValueError("the native TensorRT runtime builds from the fp16 graph; pass precision='fp16' or None")
        return TensorRTRunner(bundle, max_batch=max_batch)
    chains = {"ort-cpu": ["CPUExecutionProvider"], "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
    if runtime not in chains:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")
    if precision is None:
        precision = "fp16" if runtime == "ort-trt" and bundle.has("fp16") else "fp32"
    return OrtRunner(bundle, precision, chains[runtime])


class BundleInspector:
    """A loaded, verified bundle and the runtime that runs it."""

    def __init__(self, bundle: Bundle, runner: Runner, warmup: bool = True) -> None:
        self.bundle = bundle
        self.runner = runner
        self.spec = bundle.spec
        self.max_batch = bundle.max_batch if not isinstance(runner, TensorRTRunner) else runner.max_batch
        self.model_version = bundle.model_version + ("" if runner.precision == "fp32" else f"+{runner.precision}")
        if warmup:
            self.runner.run(np.zeros((1, *self.spec.frame_shape), np.uint8))

    @classmethod
    def load(cls, bundle_dir: str | Path, providers: Sequence[Any] | None = None, *, runtime: str | None = None,
             precision: str | None = None, max_batch: int | None = None, warmup: bool = True) -> "BundleInspector":
        """Verify the bundle (format version, every sha256: BundleError before anything is loaded), pick a runtime, warm up.

        providers: ONNX Runtime execution providers to use, in order (names or (name, options)).
        runtime: "torch", "ort-cpu", "ort-cuda", "ort-trt" or "trt" instead; default: ONNX
            Runtime with the TensorRT EP, else CUDA, else CPU (whichever is available).
        precision: fp32 (default), fp16 or int8 graph of the bundle (ONNX Runtime); trt is always fp16.
        """
        bundle = read_bundle(bundle_dir)
        return cls(bundle, make_runner(bundle, runtime, providers, precision, max_batch), warmup=warmup)

    @property
    def runtime(self) -> str:
        """Name of the runner, e.g. ort_cpu, ort_cpu_int8, ort_cuda, ort_trt_fp16, torch_cpu, trt."""
        return self.runner.name

    def run(self, frames: np.ndarray | Sequence[np.ndarray]) -> BatchResult:
        """Batched array API: frames (see `as_frames`) -> score [N], anomaly_map [N, S, S], is_defect [N]."""
        x = as_frames(frames, self.spec.size, self.spec.channels)
        if x.shape[0] == 0:
            s = self.spec.size
            return BatchResult(np.zeros(0, np.float32), np.zeros((0, s, s), np.float32), np.zeros(0, bool))
        parts = [self.runner.run(x[i : i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return BatchResult(*(np.concatenate(p) for p in zip(*parts)))

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[InspectionResult]:
        """frames -> one InspectionResult per frame."""
        r = self.run(frames)
        return [InspectionResult(float(s), m, bool(d), self.model_version) for s, m, d in zip(r.score, r.anomaly_map, r.is_defect)]
