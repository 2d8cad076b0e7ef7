"""Export a fitted run (RUN_DIR/inspector.pt) to a model bundle.

The graph is the inspector's own forward (`pipeline.scoring.inspector.Inspector`),
traced once: uint8 frames in, pre-processing, encoder, chunked-matmul nearest-neighbour
search over the memory bank, map upsampling and smoothing, normalization and the
threshold decision inside. What is written (see `inference.bundle` for the layout):

* `model.onnx` (always): fp32, opset 17, `onnx.checker` (full) passes.
    input  `frames`       uint8 [N, S, S, C] NHWC raw pixels (S = image size, C = encoder channels;
                          N dynamic). Other sizes/channels are refused by the runtime with a clear error.
    output `score`        float32 [N]        normalized so the threshold sits at 0.5
    output `anomaly_map`  float32 [N, S, S]  same normalization
    output `is_defect`    bool [N]           raw score >= calibrated threshold
  The memory bank is split into `knn_chunk` row blocks, each one MatMul, Add and ReduceMin, so
  a run's working memory is [N*h*w, chunk] floats whatever the bank size.
* `model.fp16.onnx` (`--precision fp16`, and always for `--format tensorrt|all`): the same
  graph with pre-processing, encoder, patch features and the search's cross term
  (the MatMul with the bank) in fp16; squared norms, distances, map
  post-processing, normalization and threshold in fp32. uint8 in, fp32/bool out.
* `model.int8.onnx` (`--precision int8`, needs `--data`): ONNX Runtime static
  quantization (QDQ) of the encoder's convolutions, calibrated on the run's training
  images; the stem and the convs that produce the taps, the search and everything after
  it stay fp32. The memory bank and threshold are then re-fitted through the INT8
  encoder (queries and bank must come from the same encoder). When the data has a
  labelled test split, its image AUROC against fp32 (the cost) is measured and recorded.
* TensorRT engine (`--format tensorrt|all`): built on this machine's GPU from
  `model.fp16.onnx` as a strongly typed network (`inference.runtime.TensorRTRunner`).

Graph rewrites applied after tracing (each exact): the uint8 input is cast before its
NHWC->NCHW transpose (TensorRT allows uint8 only at casts), and a Resize whose input is
already S x S (the pre-processing resize at the exported size) becomes an Identity.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from inference.bundle import (
    BUNDLE_FILE, BUNDLE_FORMAT, FORMAT_VERSION, INSPECTOR_COPY, MODEL_FILES, file_record, is_bundle, read_bundle,
)
from pipeline.atomic import atomic_open, write_json_atomic

EXPORT_OPSET = 17
INPUT_NAME = "frames"
OUTPUT_NAMES = ("score", "anomaly_map", "is_defect")
FORMATS = ("onnx", "tensorrt", "all")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 32
#: Training images used to calibrate INT8 activation ranges (an even subsample).
INT8_CALIBRATION_IMAGES = 64


class ExportError(ValueError):
    """A run that cannot be exported, or an export option that cannot be honoured."""


# ----------------------------------------------------------------------------- tracing


class _BankAsInputs(torch.nn.Module):
    """Runs `inspector.forward` unchanged, with its memory bank (and squared norms) supplied as tracing inputs.

    Tracing cost then does not grow with the bank: the exporter's per-node shape
    inference would otherwise copy a 200k-row bank for every chunk's Slice. The
    inputs become initializers again right after tracing (`_bank_inputs_to_initializers`).
    """

    def __init__(self, inspector: torch.nn.Module) -> None:
        super().__init__()
        self.inspector = inspector

    def forward(self, frames: torch.Tensor, memory_bank: torch.Tensor, bank_sq: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ins = self.inspector
        ins.memory_bank, ins.bank_sq = memory_bank, bank_sq  # registered buffers: plain reassignment
        return tuple(ins(frames))


_BANK_INPUTS = ("memory_bank", "bank_sq")


def torch_to_onnx(inspector: torch.nn.Module, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """Trace `inspector.forward` (uint8 [N, S, S, C] -> score, anomaly_map, is_defect) to an ONNX graph.

    The batch axis is dynamic; S and C are fixed to the inspector's image size and
    encoder channels. Returns the simplified, checked model (not yet saved).
    """
    s, c = inspector.cfg.image_size, inspector.encoder.cfg.in_channels
    example = torch.randint(0, 256, (2, s, s, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bank, bank_sq = inspector.memory_bank, inspector.bank_sq
    buf = io.BytesIO()
    dyn = {INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in OUTPUT_NAMES}}
    inspector = inspector.eval()
    inspector.memory_bank, inspector.bank_sq = bank[:1].clone(), bank_sq[:1].clone()  # keep the big buffers out of the exporter's params
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches (static S by design)
            torch.onnx.export(_BankAsInputs(inspector).eval(), (example, bank, bank_sq), buf, dynamo=False,
                              input_names=[INPUT_NAME, *_BANK_INPUTS], output_names=list(OUTPUT_NAMES),
                              dynamic_axes=dyn, opset_version=opset, do_constant_folding=True)
    finally:
        inspector.memory_bank, inspector.bank_sq = bank, bank_sq
        inspector.eval()  # the exporter restores the wrapper's mode onto the whole tree
    model = onnx.load_from_string(buf.getvalue())
    _bank_inputs_to_initializers(model, {"memory_bank": bank.numpy(), "bank_sq": bank_sq.numpy()})
    _strip_prefix(model, "inspector")
    model = simplify(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _strip_prefix(model: onnx.ModelProto, prefix: str) -> None:
    """Drop the wrapper's scope from names: `inspector.norm_scale` -> `norm_scale`, `/inspector/Mul` -> `/Mul`."""
    def fix(name: str) -> str:
        if name.startswith(f"{prefix}."):
            return name[len(prefix) + 1 :]
        return name.replace(f"/{prefix}/", "/", 1) if name.startswith(f"/{prefix}/") else name

    g = model.graph
    for t in g.initializer:
        t.name = fix(t.name)
    for node in g.node:
        node.name = fix(node.name)
        node.input[:] = [fix(i) for i in node.input]
        node.output[:] = [fix(o) for o in node.output]
    for v in list(g.value_info) + list(g.output):
        v.name = fix(v.name)


def _bank_inputs_to_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    g = model.graph
    keep = [i for i in g.input if i.name not in values]
    if len(keep) != 1:
        raise ExportError(f"expected the traced graph to take only {INPUT_NAME!r} besides the bank, got {[i.name for i in keep]}")
    del g.input[:]
    g.input.extend(keep)
    g.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), name) for name, v in values.items())


def _name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in graph.node for o in node.output if o}


def _static_hw(vi: onnx.ValueInfoProto | None) -> tuple[int, int] | None:
    if vi is None:
        return None
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[2:]):
        return None
    return dims[2].dim_value, dims[3].dim_value


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Exact rewrites, in place: fold constants; cast the uint8 input before its transpose; identity Resizes -> Identity."""
    g = model.graph
    cons = _consumers(g)
    # 1. Transpose(uint8 frames) -> Cast(float)  ==>  Cast(frames) -> Transpose
    for t in [n for n in cons.get(INPUT_NAME, []) if n.op_type == "Transpose"]:
        users = cons.get(t.output[0], [])
        if len(users) == 1 and users[0].op_type == "Cast":
            c = users[0]
            mid = t.output[0] + "_cast_first"
            c_out = c.output[0]
            c.input[0], c.output[0] = INPUT_NAME, mid
            t.input[0], t.output[0] = mid, c_out
    # 2. Resize to the size it already has -> Identity (needs static H, W from shape inference)
    del g.value_info[:]  # the exporter's, stale after step 1
    _toposort(model)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    for node in g.node:
        if node.op_type == "Resize":
            hw_in, hw_out = _static_hw(vi.get(node.input[0])), _static_hw(vi.get(node.output[0]))
            if hw_in is not None and hw_in == hw_out:
                x = node.input[0]
                node.op_type = "Identity"
                del node.input[:]
                node.input.append(x)
                del node.attribute[:]
    _fold_constants(model)
    _drop_dead_nodes(model)
    del g.value_info[:]
    _toposort(model)
    _name_nodes(model)
    return model


#: Constant sub-expressions larger than this many elements are left to the runtime.
_FOLD_MAX_ELEMENTS = 1 << 16


def _fold_fast(node: onnx.NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """numpy evaluation of cheap (mostly view) ops, whatever their size; None when not handled here."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Identity":
        return [args[0]]
    if op == "Transpose":
        return [np.ascontiguousarray(np.transpose(args[0], attrs.get("perm")))]
    if op == "Slice":
        data, starts, ends = args[0], args[1], args[2]
        axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
        steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * data.ndim
        for st, en, ax, sp in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
            index[ax] = slice(st, en, sp)
        return [np.ascontiguousarray(data[tuple(index)])]
    if op == "Unsqueeze" and len(args) == 2:
        out = args[0]
        for ax in sorted(int(a) % (out.ndim + len(args[1])) for a in args[1].tolist()):
            out = np.expand_dims(out, ax)
        return [out]
    return None


def _fold_constants(model: onnx.ModelProto) -> None:
    """Evaluate nodes whose inputs are all constants (Constant nodes, initializers) into initializers.

    Leaves only data-dependent nodes (e.g. the blur's reflect-pad amounts become plain
    initializers), which keeps every runtime's parser on its simplest path. Exact: the
    ONNX reference evaluator computes the same values the exporter traced.
    """
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    keep: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in g.node:
        if node.op_type == "Constant" or (node.input and all(i == "" or i in consts for i in node.input)):
            try:
                if node.op_type == "Constant":
                    vals = [numpy_helper.to_array(node.attribute[0].t)] if node.attribute[0].name == "value" else None
                    if vals is None:
                        raise ValueError(node.attribute[0].name)
                elif (fast := _fold_fast(node, [consts[i] if i else None for i in node.input])) is not None:
                    vals = fast
                else:
                    if any(consts[i].size > _FOLD_MAX_ELEMENTS for i in node.input if i):
                        raise ValueError("too large")
                    sub = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output],
                                            initializer=[numpy_helper.from_array(consts[i], i) for i in dict.fromkeys(i for i in node.input if i)])
                    vals = ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})
                for name, val in zip(node.output, vals):
                    val = np.asarray(val)
                    consts[name] = val
                    new_inits.append(numpy_helper.from_array(val, name))
                continue
            except Exception:  # not foldable here (unknown attribute, unsupported op): leave it to the runtime
                pass
        keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes (and initializers) nothing reaches from the graph outputs."""
    g = model.graph
    prod = _producers(g)
    live: set[str] = set()
    stack = [o.name for o in g.output]
    keep_nodes: set[int] = set()
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        node = prod.get(name)
        if node is not None and id(node) not in keep_nodes:
            keep_nodes.add(id(node))
            stack.extend(i for i in node.input if i)
    if len(keep_nodes) < len(g.node):
        nodes = [n for n in g.node if id(n) in keep_nodes]
        del g.node[:]
        g.node.extend(nodes)
    dead = [i for i, t in enumerate(g.initializer) if t.name not in live]
    for i in reversed(dead):  # in place: rebuilding the list would copy the memory bank
        del g.initializer[i]


def _toposort(model: onnx.ModelProto) -> None:
    g = model.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or undefined inputs at {[n.name for n in rest[:3]]}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


# ----------------------------------------------------------------------------- graph layout


@dataclass
class GraphLayout:
    """Where the parts of the exported inspector are in its ONNX graph.

    encoder_nodes: names of the nodes that compute the search queries (pre-processing,
        encoder, patch features, the query reshape and the `-2 *` scaling);
    encoder_convs: the Conv nodes among them (what INT8 quantizes);
    knn_matmuls: the MatMul of each bank chunk (queries [M, D] @ bank chunk^T [D, chunk]);
    queries: the tensor feeding the first knn MatMul ([M, D], M = N * h * w);
    distance: the nearest-neighbour distance tensor [M] (after Sqrt), or None if not found.
    """

    encoder_nodes: set[str]
    encoder_convs: list[str]
    knn_matmuls: list[str]
    queries: str
    distance: str | None


def graph_layout(model: onnx.ModelProto) -> GraphLayout:
    """Locate encoder, search and post-processing in an exported inspector graph."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    prod = _producers(g)
    const_out = {o for n in g.node if n.op_type == "Constant" for o in n.output}
    knn = [n for n in g.node if n.op_type == "MatMul" and (n.input[1] in inits or n.input[1] in const_out) and n.input[0] not in inits]
    if not knn:
        raise ExportError("exported graph has no memory-bank MatMul; is this an Inspector graph with a chunked nearest-neighbour search?")
    region: set[str] = set()
    stack = [n.input[0] for n in knn]
    while stack:
        name = stack.pop()
        node = prod.get(name)
        if node is None or node.name in region:
            continue
        region.add(node.name)
        stack.extend(i for i in node.input if i)
    convs = [n.name for n in g.node if n.op_type == "Conv" and n.name in region]
    # distance: first Sqrt downstream of the knn MatMuls
    cons = _consumers(g)
    seen: set[str] = set()
    frontier = [o for n in knn for o in n.output]
    distance = None
    while frontier and distance is None:
        nxt = []
        for t in frontier:
            for c in cons.get(t, []):
                if c.name in seen:
                    continue
                seen.add(c.name)
                if c.op_type == "Sqrt":
                    distance = c.output[0]
                    break
                nxt.extend(c.output)
            if distance:
                break
        frontier = nxt
    return GraphLayout(region, convs, [n.name for n in knn], knn[0].input[0], distance)


def sensitive_convs(model: onnx.ModelProto, layout: GraphLayout) -> list[str]:
    """Convs whose outputs reach the patch features without another Conv in between, plus the stem conv.

    These set the features' fine detail directly; INT8 export keeps them fp32 (on MTD
    with EfficientNet-Lite0 this halves the AUROC cost). Walks back from the queries
    through float tensors; at a residual Add it takes the Conv-produced inputs.
    """
    g = model.graph
    prod = _producers(g)
    inits = {t.name for t in g.initializer}
    types = _elem_types(model)
    found: list[str] = []
    seen: set[str] = set()
    stack = [layout.queries]
    while stack:
        name = stack.pop()
        node = prod.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
            continue
        inputs = [i for i in node.input if i and i not in inits and types.get(i) == TensorProto.FLOAT]
        if node.op_type == "Add":
            convs = [i for i in inputs if prod.get(i) is not None and prod[i].op_type == "Conv"]
            if convs:
                stack.extend(convs)
                continue
        stack.extend(inputs)
    stem = next((n.name for n in g.node if n.op_type == "Conv" and n.name in layout.encoder_nodes), None)
    return sorted(set(found) | ({stem} if stem else set()))


# ----------------------------------------------------------------------------- fp16


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


#: Inputs of an op that carry data (converted to fp16); other float inputs (e.g. Resize's scales) stay as they are.
_DATA_INPUTS = {"Resize": (0,), "Upsample": (0,)}


def to_fp16(model: onnx.ModelProto, layout: GraphLayout, knn_fp16: bool = True) -> onnx.ModelProto:
    """fp32 inspector graph -> mixed graph: encoder (and the search's cross-term MatMul) in fp16.

    uint8 input and fp32/bool outputs are kept; Casts are inserted where fp16 and fp32
    parts meet. Norms, distances, min, sqrt, upsampling, blur, normalization and the
    threshold stay fp32 (the expanded distance ||q||^2 - 2 q.b + ||b||^2 cancels
    catastrophically if summed in fp16).
    """
    model = copy.deepcopy(model)
    g = model.graph
    types = _elem_types(model)
    region = set(layout.encoder_nodes) | (set(layout.knn_matmuls) if knn_fp16 else set())
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    inits = {t.name: t for t in g.initializer}
    produced_half: set[str] = set()  # float tensors produced inside the region (now fp16)
    new_nodes: list[onnx.NodeProto] = []
    half_inits: dict[str, str] = {}
    to_half: dict[str, str] = {}
    to_float: dict[str, str] = {}

    def cast(name: str, to: int, cache: dict[str, str], suffix: str) -> str:
        if name not in cache:
            out = f"{name}__{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}__cast", to=to))
            cache[name] = out
        return cache[name]

    for node in g.node:
        if node.name not in region:
            continue
        if node.op_type == "Cast" and helper.get_attribute_value(next(a for a in node.attribute if a.name == "to")) == FLOAT:
            for a in node.attribute:
                if a.name == "to":
                    a.i = HALF
        if node.op_type in ("Constant", "ConstantOfShape"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        for o in node.output:
            if types.get(o) == FLOAT:
                produced_half.add(o)
    for node in g.node:
        in_region = node.name in region
        for idx, name in enumerate(node.input):
            if not name:
                continue
            if in_region:
                data = _DATA_INPUTS.get(node.op_type)
                if (data is not None and idx not in data) or name in produced_half or types.get(name) != FLOAT:
                    continue
                if name in inits:  # fp16 copy of the weight (the fp32 one may be used elsewhere too)
                    if name not in half_inits:
                        h = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), f"{name}__fp16")
                        g.initializer.append(h)
                        half_inits[name] = h.name
                    node.input[idx] = half_inits[name]
                else:
                    node.input[idx] = cast(name, HALF, to_half, "fp16")
            elif name in produced_half:
                node.input[idx] = cast(name, FLOAT, to_float, "fp32")
    for out in g.output:
        if out.name in produced_half:
            raise ExportError(f"graph output {out.name} would be fp16; the fp16 region must end before the outputs")
    g.node.extend(new_nodes)
    _drop_dead_nodes(model)
    del g.value_info[:]
    _toposort(model)
    _name_nodes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


# ----------------------------------------------------------------------------- int8


#: Activation-range calibration of INT8 export: "minmax" or "percentile" (99.99th, robust to outliers, slower).
INT8_CALIBRATION = "percentile"


def quantize_int8(fp32_path: Path, out_path: Path, calibration_frames: np.ndarray, layout: GraphLayout,
                  calibration: str = INT8_CALIBRATION, exclude: Iterable[str] = ()) -> None:
    """ONNX Runtime static quantization (QDQ) of the encoder's Conv nodes, calibrated on uint8 frames [K, S, S, C].

    Per-channel int8 weights, uint8 activations. The search (MatMul with the bank),
    distances and everything after stay fp32; so do the Conv nodes named in `exclude`.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self, frames: np.ndarray, batch: int = 8) -> None:
            self.batches = iter([frames[i : i + batch] for i in range(0, len(frames), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {INPUT_NAME: b}

    import logging

    convs = [n for n in layout.encoder_convs if n not in set(exclude)]
    methods = {"minmax": (CalibrationMethod.MinMax, {}), "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99})}
    if calibration not in methods:
        raise ExportError(f"unknown INT8 calibration {calibration!r}; choose from {sorted(methods)}")
    method, extra = methods[calibration]
    if not convs:
        raise ExportError("no encoder Conv nodes found to quantize")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice through the root logger
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        stack.callback(root.setLevel, level)
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))  # the calibrator prints progress
        warnings.simplefilter("ignore")
        quantize_static(str(fp32_path), str(out_path), Frames(calibration_frames), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], nodes_to_quantize=convs, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, calibration_providers=["CPUExecutionProvider"], extra_options=extra)
    onnx.checker.check_model(str(out_path), full_check=True)


def _ort_run(model: onnx.ModelProto | Path, frames: np.ndarray, outputs: list[str] | None = None, batch: int = 8) -> list[np.ndarray]:
    """Run a graph on CPU over frames in batches -> the outputs concatenated."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    parts = [sess.run(outputs, {INPUT_NAME: frames[i : i + batch]}) for i in range(0, len(frames), batch)]
    return [np.concatenate(p) for p in zip(*parts)]


def refit_int8(int8_path: Path, inspector: torch.nn.Module, train_frames: np.ndarray) -> dict[str, Any]:
    """Re-fit the memory bank and threshold of an INT8 graph through its own (quantized) encoder, in place.

    Queries from an INT8 encoder carry quantization noise that bank rows extracted in fp32
    do not, which inflates every nearest-neighbour distance (on an MTD subset with
    EfficientNet-Lite0: AUROC cost 1.7 points without the re-fit, 0.5 with it). So this repeats `pipeline.scoring.fit.fit_inspector` with the INT8 encoder:
    the same seeded bank/holdout split of the same training frames [N, S, S, C] (all of
    them, in fit order), features of the bank images from the INT8 graph, the same greedy
    coreset, then the false-alarm threshold on the held-out images through the whole INT8
    graph (gross outliers set aside by `calibration_fence`, as the fit does). The bank must
    keep its size (same data): else ExportError.
    """
    from pipeline.metrics import robust_threshold
    from pipeline.scoring.coreset import coreset_size, greedy_coreset
    from pipeline.scoring.fit import split_holdout

    cfg = inspector.cfg
    if cfg.trim_fraction > 0 or cfg.denoise_fraction > 0 or cfg.min_support > 1:  # all change the bank with the features: no fixed chunks to swap
        raise ExportError(f"INT8 re-fit repeats the plain coreset only, and this run's scorer drops images, patches or rows "
                          f"(trim_fraction {cfg.trim_fraction}, denoise_fraction {cfg.denoise_fraction}, min_support {cfg.min_support})")
    model = onnx.load(str(int8_path))
    g = model.graph
    layout = graph_layout(model)
    inits = {t.name: t for t in g.initializer}
    prod = _producers(g)
    # the patch features q: the knn MatMuls take -2 * q (or q itself)
    q_name = layout.queries
    mul = prod.get(q_name)
    if mul is not None and mul.op_type == "Mul":
        consts = [i for i in mul.input if i in inits and numpy_helper.to_array(inits[i]).size == 1]
        if len(consts) == 1:
            q_name = next(i for i in mul.input if i != consts[0])
    gen = torch.Generator().manual_seed(cfg.seed)
    loo = cfg.calibration == "leave_one_out"
    if loo:  # every image feeds the bank; the threshold comes from a sample scored against the bank less its own rows
        bank_idx = torch.arange(len(train_frames))
    else:
        bank_idx, hold_idx = split_holdout(len(train_frames), cfg.holdout_fraction, gen)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    feat_model = onnx.utils.Extractor(inferred).extract_model([INPUT_NAME], [q_name])
    (feats,) = _ort_run(feat_model, train_frames[bank_idx.numpy()])
    feats_t = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    old_bank = inspector.memory_bank.numpy()
    n_select = coreset_size(feats_t.shape[0], cfg.coreset_ratio, cfg.max_bank)
    if n_select != old_bank.shape[0]:
        raise ExportError(f"INT8 re-fit: these training images give a bank of {n_select} rows, the run's has {old_bank.shape[0]}; "
                          "pass the run's own data as --data")
    sel = greedy_coreset(feats_t, n_select, generator=gen, proj_dim=cfg.coreset_proj_dim, chunk_size=cfg.coreset_chunk,
                         refine=cfg.coreset_refine)
    new_bank = feats_t[sel].numpy()
    new_sq = (new_bank.astype(np.float32) ** 2).sum(axis=1).astype(np.float32)
    # swap the bank chunks: each MatMul's B is bank[s:s+c].T for a chunk start s (a multiple of knn_chunk) ...
    cons = _consumers(g)
    chunk, rows = int(cfg.knn_chunk), old_bank.shape[0]
    for name in layout.knn_matmuls:
        node = next(n for n in g.node if n.name == name)
        t = inits[node.input[1]]
        b = numpy_helper.to_array(t)  # [D, c]
        start = next((st for st in range(0, rows, chunk) if min(chunk, rows - st) == b.shape[1]
                      and np.array_equal(old_bank[st : st + b.shape[1]].T, b)), None)
        if start is None:
            raise ExportError(f"INT8 re-fit: cannot place bank chunk {t.name} in the run's memory bank")
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new_bank[start : start + b.shape[1]].T), t.name))
        # ... and the chunk's squared norms: the 1-D constant [c] added within two steps after the MatMul
        frontier, sq = [node.output[0]], None
        for _ in range(2):
            nxt = []
            for out in frontier:
                for user in cons.get(out, []):
                    for i in user.input:
                        if i in inits and list(inits[i].dims) == [b.shape[1]] and inits[i].data_type == TensorProto.FLOAT:
                            sq = inits[i]
                    nxt.extend(user.output)
            if sq is not None:
                break
            frontier = nxt
        if sq is None or not np.array_equal(numpy_helper.to_array(sq), inspector.bank_sq.numpy()[start : start + b.shape[1]]):
            raise ExportError(f"INT8 re-fit: cannot find the squared norms of bank chunk {t.name}")
        sq.CopyFrom(numpy_helper.from_array(new_sq[start : start + b.shape[1]], sq.name))
    # threshold: raw maps of the held-out images through the whole INT8 graph (normalization set to identity)
    norm = {name: inits[name] for name in ("norm_offset", "norm_scale", "threshold_raw")}
    norm["norm_offset"].CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "norm_offset"))
    norm["norm_scale"].CopyFrom(numpy_helper.from_array(np.array(1.0, np.float32), "norm_scale"))
    if loo:  # the fit's sample, its INT8 patch features against the INT8 bank less their own rows; the map's tail in fp32
        from pipeline.scoring.leave_one_out import SAMPLE_SEED_OFFSET, calibration_sample, leave_one_out_maps

        n = len(train_frames)
        with torch.no_grad():  # queries are [N * h * w, D], image-major: the patch grid from the fp32 inspector
            h, w = inspector.patch_channels(inspector.preprocess(torch.from_numpy(train_frames[:1]))).shape[-2:]
        image_of = torch.arange(n).repeat_interleave(h * w)  # [N * h * w]
        hold_idx = calibration_sample(n, cfg.calibration_images, torch.Generator().manual_seed(cfg.seed + SAMPLE_SEED_OFFSET))
        q_calib = feats_t.view(n, h * w, -1)[hold_idx].reshape(-1, feats_t.shape[1])
        with torch.no_grad():
            maps_t = leave_one_out_maps(q_calib, hold_idx, feats_t[sel], image_of[sel], (h, w), inspector.distance_map,
                                        chunk=cfg.knn_chunk)
            scores, maps = inspector.reduce(maps_t).numpy(), maps_t.numpy()
    else:
        scores, maps = _ort_run(model, train_frames[hold_idx.numpy()], ["score", "anomaly_map"])
    thr, outlier = robust_threshold(scores, cfg.target_false_alarm_rate, cfg.calibration_fence)
    offset = float(maps[~outlier].mean())
    scale = 0.5 / max(thr - offset, 1e-12)
    for name, value in (("norm_offset", offset), ("norm_scale", scale), ("threshold_raw", thr)):
        norm[name].CopyFrom(numpy_helper.from_array(np.array(value, np.float32), name))
    data = model.SerializeToString()
    with atomic_open(int8_path) as f:
        f.write(data)
    return {"refit": True, "bank_rows": int(n_select), "bank_images": int(len(bank_idx)), "holdout_images": int(len(hold_idx)),
            "threshold_raw": thr, "calibration_outliers": int(outlier.sum()), "norm_offset": offset, "norm_scale": scale}


# ----------------------------------------------------------------------------- bundle


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Atomic write of a model (< 2 GB: the memory bank is stored inline)."""
    data = model.SerializeToString()
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def loupe_version() -> str:
    try:
        from importlib.metadata import version

        return version("loupe")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} is not readable JSON ({err})") from err
    return data if isinstance(data, dict) else None


def training_frames(data: str | Path, size: int, channels: int, limit: int | None = None) -> tuple[np.ndarray, str]:
    """Good `train` images of `data` as uint8 frames [K, S, S, C] (an even subsample of `limit`) and the data fingerprint."""
    from pipeline.data.tensors import load_images
    from pipeline.steps import read_samples

    samples, fp = read_samples(data, "train", False, channels)
    if limit is not None and len(samples) > limit:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]
    return load_images(samples, size, channels).permute(0, 2, 3, 1).contiguous().numpy(), fp


def calibration_scores(inspector: torch.nn.Module, data: str | Path, size: int, channels: int,
                       fit_fingerprint: str | None = None, fit_scores: list[float] | None = None) -> dict[str, Any]:
    """Normalized scores (threshold 0.5) of the held-out good training images the threshold was calibrated on.

    Repeats the fit's seeded bank/holdout split (`pipeline.scoring.fit.split_holdout`) on
    `data`'s train images and scores the held-out ones with the fp32 inspector. Stored as
    bundle.json `calibration` {"scores", "images", "fingerprint", "same_data"}: the
    reference distribution that live drift watch (`inference.drift`) compares with. Held-out
    images the fit set aside as likely defective (`calibration_fence`) are left out of it too
    (`set_aside` counts them): the reference is the good parts' distribution. A run calibrated
    leave-one-out (every image in the bank) has no held-out images to re-score: its fit's raw
    leave-one-out scores (`fit_scores`, fit.json `holdout_scores`) are normalized instead.
    """
    from pipeline.metrics import calibration_outliers
    from pipeline.scoring.fit import split_holdout
    from pipeline.steps import read_samples

    cfg = inspector.cfg
    if cfg.calibration == "leave_one_out":  # every image is in the bank: the fit's own scores, on the fit's data
        if fit_scores is None:
            raise ExportError("this run calibrated leave-one-out; its fit.json holds no holdout_scores (re-run `loupe fit`)")
        raw = torch.tensor([float(x) for x in fit_scores], dtype=torch.float32)
        fp = fit_fingerprint or read_samples(data, "train", False, channels)[1]  # nothing to decode and resize
        same_data = True
    else:
        frames, fp = training_frames(data, size, channels)
        same_data = fit_fingerprint is None or fp == fit_fingerprint
        _, hold = split_holdout(len(frames), cfg.holdout_fraction, torch.Generator().manual_seed(cfg.seed))
        held = frames[hold.numpy()]
        with torch.no_grad():  # raw scores: the scale the fit applied the fence on
            raw = torch.cat([inspector.reduce(inspector.raw_map(inspector.preprocess(torch.from_numpy(held[i : i + 16]))))
                             for i in range(0, len(held), 16)])
    with torch.no_grad():
        scores = inspector.normalize(raw).float().numpy()
    drop = calibration_outliers(raw.numpy().astype(np.float32), inspector.cfg.calibration_fence)
    return {"scores": [round(float(x), 6) for x in scores[~drop]], "images": int((~drop).sum()), "set_aside": int(drop.sum()),
            "fingerprint": fp, "same_data": same_data}


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    *,
    formats: str = "onnx",
    precisions: Iterable[str] = ("fp32",),
    max_batch: int = DEFAULT_MAX_BATCH,
    metrics: str | Path | None = None,
    data: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export RUN_DIR (inspector.pt, fit.json, pretrain.json) to a bundle folder `out`; returns bundle.json's content.

    formats: "onnx" (model.onnx + the ONNX graphs of `precisions`), "tensorrt" (adds
        model.fp16.onnx and a TensorRT engine for this GPU), or "all" (both).
    precisions: any of fp32 (always written), fp16, int8 (needs `data`).
    metrics: a metrics JSON (from `loupe evaluate`) to record; default RUN_DIR/metrics.json if present.
    data: the run's data (folder or manifest); its train images calibrate INT8 and its
        labelled test split, if any, measures INT8's AUROC cost.

    The bundle is assembled in a temporary sibling folder and renamed into place, so
    `out` is either the complete new bundle or untouched. An existing `out` is replaced
    only if it is a bundle or empty.

    bundle.json keys: format, format_version, loupe_version, model_version (sha256 prefix
    of inspector.pt), created, commit, source_run, input (name, dtype uint8, layout NHWC,
    shape, size, channels, value_range, other_sizes), outputs, threshold (normalized 0.5,
    raw, norm_offset, norm_scale), data_fingerprint, pretrain_fingerprint, metrics,
    metrics_source, models {precision: file}, int8 (calibration and AUROC cost, or
    None), calibration (normalized scores of the held-out good images, with `data`; else
    None; see `calibration_scores`), max_batch, opset, image_size, bank_size, knn_chunk, encoder, scorer, files
    {name: {sha256, bytes}}, engines {name: {sha256, bytes, gpu, tensorrt, ...}}.
    """
    from pipeline.scoring.fit import INSPECTOR_FILE, load_inspector
    from pipeline.steps import git_commit, now

    say = progress or (lambda msg: None)
    run_dir, out = Path(run_dir), Path(out)
    if formats not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {formats!r}")
    precisions = set(precisions) | {"fp32"}
    bad = precisions - set(PRECISIONS)
    if bad:
        raise ExportError(f"--precision must be among {PRECISIONS}, got {sorted(bad)}")
    if formats in ("tensorrt", "all"):
        precisions.add("fp16")  # TensorRT engines are built from the fp16 graph
    if max_batch < 1:
        raise ExportError(f"--max-batch must be >= 1, got {max_batch}")
    if "int8" in precisions and data is None:
        raise ExportError("--precision int8 needs --data DATA: the run's training images calibrate the INT8 activation ranges")
    ckpt = run_dir / INSPECTOR_FILE
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} not found: {run_dir} is not a fitted run; run `loupe fit {run_dir} DATA` first")
    if out.exists() and not is_bundle(out) and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not a Loupe bundle; not replacing it (choose another --out)")
    if out.resolve() == run_dir.resolve():
        raise ExportError("--out must not be the run folder itself")
    if formats in ("tensorrt", "all"):
        from inference.runtime import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise ExportError(f"--format {formats} builds a TensorRT engine on this machine's GPU, but {why}; use --format onnx "
                              "here and build the engine on the station (BundleInspector/TensorRTRunner builds and caches it on first load)")
    metrics_path = Path(metrics) if metrics is not None else (run_dir / "metrics.json")
    if metrics is not None and not metrics_path.is_file():
        raise FileNotFoundError(f"--metrics {metrics_path} does not exist")
    metrics_data = _read_json(metrics_path)
    fit_info = _read_json(run_dir / "fit.json") or {}
    pre_info = _read_json(run_dir / "pretrain.json") or {}

    inspector, meta = load_inspector(ckpt)
    s, c = inspector.cfg.image_size, inspector.encoder.cfg.in_channels
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copyfile(ckpt, tmp / INSPECTOR_COPY)
        say("tracing the inspector to ONNX")
        model = torch_to_onnx(inspector)
        layout = graph_layout(model)
        save_onnx(model, tmp / MODEL_FILES["fp32"])
        models = {"fp32": MODEL_FILES["fp32"]}
        if "fp16" in precisions:
            say("converting to fp16")
            save_onnx(to_fp16(model, layout), tmp / MODEL_FILES["fp16"])
            models["fp16"] = MODEL_FILES["fp16"]
        int8_info = None
        if "int8" in precisions:
            assert data is not None
            frames, fp = training_frames(data, s, c)
            if fit_info.get("data_fingerprint") and fp != fit_info["data_fingerprint"]:
                warnings.warn(f"--data {data}: its train images are not the ones {run_dir} was fitted on (fingerprint differs); "
                              "INT8 is calibrated and re-fitted on them anyway")
            calib = frames[np.linspace(0, len(frames) - 1, min(len(frames), INT8_CALIBRATION_IMAGES)).round().astype(int)]
            say(f"quantizing to int8 (calibrating on {len(calib)} training images)")
            keep_fp32 = sensitive_convs(model, layout)
            quantize_int8(tmp / MODEL_FILES["fp32"], tmp / MODEL_FILES["int8"], calib, layout, exclude=keep_fp32)
            say(f"re-fitting the int8 memory bank and threshold on {len(frames)} training images")
            try:
                refit = refit_int8(tmp / MODEL_FILES["int8"], inspector, frames)
            except ExportError as err:  # e.g. other data than the run's: keep the fp32-fitted bank
                warnings.warn(f"{err}; the int8 graph keeps the fp32 memory bank and threshold (expect a larger AUROC cost)")
                refit = {"refit": False, "refit_note": str(err)}
            models["int8"] = MODEL_FILES["int8"]
            int8_info = {"calibration_images": int(len(calib)), "calibration_fingerprint": fp, "method": f"QDQ static, {INT8_CALIBRATION} calibration, "
                         "per-channel int8 weights, uint8 activations; encoder Conv only, except the stem and the convs that "
                         "produce the taps; memory bank and threshold re-fitted through the int8 encoder",
                         "quantized_convs": len(layout.encoder_convs) - len(keep_fp32), "fp32_convs": keep_fp32, **refit}
            say("measuring the INT8 AUROC cost on the test split")
            int8_info.update(int8_cost(tmp, models, data, s, c))
        calibration = None
        if data is not None:  # held-out good scores: the reference distribution of drift watch (inference.drift)
            say("scoring the held-out good images (calibration distribution)")
            calibration = calibration_scores(inspector, data, s, c, fit_info.get("data_fingerprint"),
                                             [h["score"] for h in fit_info.get("holdout_scores", [])] or None)
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "loupe_version": loupe_version(),
            "model_version": file_record(tmp / INSPECTOR_COPY)["sha256"][:12],
            "created": now(),
            "commit": git_commit(),
            "source_run": str(run_dir.resolve()),
            "input": {
                "name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "shape": ["N", s, s, c], "size": s, "channels": c,
                "value_range": "raw pixels 0..255; normalization is inside the graph",
                "other_sizes": f"refused: frames must be exactly {s}x{s} with {c} channel(s); resize/convert on the station "
                               "(the runtime raises a ValueError naming the expected shape)",
            },
            "outputs": {
                "score": {"dtype": "float32", "shape": ["N"], "meaning": "image anomaly score, normalized: the threshold is 0.5"},
                "anomaly_map": {"dtype": "float32", "shape": ["N", s, s], "meaning": "per-pixel anomaly, same normalization"},
                "is_defect": {"dtype": "bool", "shape": ["N"], "meaning": "raw score >= calibrated threshold"},
            },
            "threshold": {"normalized": 0.5, "raw": float(inspector.threshold_raw), "norm_offset": float(inspector.norm_offset),
                          "norm_scale": float(inspector.norm_scale),
                          "target_false_alarm_rate": inspector.cfg.target_false_alarm_rate},
            "data_fingerprint": fit_info.get("data_fingerprint", meta.get("data_fingerprint")),
            "pretrain_fingerprint": pre_info.get("data_fingerprint", fit_info.get("pretrain_fingerprint")),
            "metrics": metrics_data,
            "metrics_source": str(metrics_path.resolve()) if metrics_data is not None else None,
            "models": models,
            "int8": int8_info,
            "calibration": calibration,
            "max_batch": int(max_batch),
            "opset": EXPORT_OPSET,
            "image_size": s,
            "bank_size": int(inspector.memory_bank.shape[0]),
            "knn_chunk": inspector.cfg.knn_chunk,
            "encoder": {"arch": inspector.encoder.cfg.arch, "in_channels": c, "taps": list(inspector.encoder.cfg.taps)},
            "scorer": {k: getattr(inspector.cfg, k) for k in ("image_size", "agg_kernel", "agg_zero_pad", "feature_dim", "grid_tap", "blur_sigma", "score_reduce", "topk_fraction")},
            "files": {},
            "engines": {},
        }
        manifest["files"] = {p.name: file_record(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != BUNDLE_FILE}
        write_json_atomic(tmp / BUNDLE_FILE, manifest)
        if formats in ("tensorrt", "all"):
            from inference.runtime import TensorRTRunner

            say("building the TensorRT engine")
            TensorRTRunner(read_bundle(tmp), max_batch=max_batch)  # builds, caches and records the engine in tmp
            manifest = json.loads((tmp / BUNDLE_FILE).read_text())
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename `tmp` onto `out`; an existing `out` is moved aside first and removed after."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def int8_cost(bundle_dir: Path, models: dict[str, str], data: str | Path, size: int, channels: int) -> dict[str, Any]:
    """Image AUROC of fp32 vs int8 graphs (ONNX Runtime CPU) on the labelled test split of `data`, and decision agreement.

    Returns {} (with a note) when `data` has no test split with both labels.
    """
    from pipeline.data.tensors import load_images
    from pipeline.metrics import image_auroc
    from pipeline.steps import read_samples

    try:
        samples, fp = read_samples(data, "test", False, channels)
    except (ValueError, FileNotFoundError) as err:
        return {"auroc_note": f"no usable test split in {data} ({err}); AUROC cost not measured"}
    labels = np.array([smp.label for smp in samples])
    if labels.size == 0 or labels.min() == labels.max():
        return {"auroc_note": f"test split of {data} lacks good or defective images; AUROC cost not measured"}
    import onnxruntime as ort

    res = {}
    for prec in ("fp32", "int8"):
        sess = ort.InferenceSession(str(bundle_dir / models[prec]), providers=["CPUExecutionProvider"])
        scores, flags = [], []
        for i in range(0, len(samples), 16):
            frames = load_images(samples[i : i + 16], size, channels).permute(0, 2, 3, 1).contiguous().numpy()
            sc, _, fl = sess.run(None, {INPUT_NAME: frames})
            scores.append(sc)
            flags.append(fl)
        res[prec] = (np.concatenate(scores), np.concatenate(flags))
    a32, a8 = image_auroc(labels, res["fp32"][0]), image_auroc(labels, res["int8"][0])
    return {"test_images": int(labels.size), "test_fingerprint": fp, "image_auroc_fp32": float(a32), "image_auroc_int8": float(a8),
            "auroc_cost_points": float(100 * (a32 - a8)), "decision_agreement": float((res["fp32"][1] == res["int8"][1]).mean())}
