"""What TensorRT's ONNX parser takes, as data, and the checks of an exported graph against it.

One table for the export (bundle_export refuses a graph that fails these checks) and for the tests.

Source: onnx-tensorrt's operator support matrix, docs/operators.md, at release/10.1-GA (commit 96e7811,
"TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"), the oldest 10.x
matrix at hand; every op listed here is also supported, with at least these types, in the 10.6 matrix
(commit 0137504e, opsets 9 to 22). The project claims TensorRT 10.x from 10.3 on (JetPack 6 ships
10.3) and TensorRT 11, so restrictions that 10.3 lifted are left out (tensor `axes` of Slice) and
those lifted later are kept (tensor `axes` of Pad: 10.4; of Squeeze/Unsqueeze: 10.7).

The matrix's "Supported Types" are the types of an op's data tensors; this module checks the first
input (DATA_INPUTS otherwise), which ONNX's type constraints tie to the others (Add's two inputs share
one type). Index, shape and axes inputs (int64) and boolean outputs of comparisons are not data.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from .onnx_fixes import infer_shapes, value_types

FLOATS = ("FP32", "FP16", "BF16")
NUMBERS = FLOATS + ("INT32", "INT64")
ANY = NUMBERS + ("BOOL",)
TYPE_NAMES = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16, "BF16": TensorProto.BFLOAT16,
              "INT32": TensorProto.INT32, "INT64": TensorProto.INT64, "INT8": TensorProto.INT8,
              "UINT8": TensorProto.UINT8, "BOOL": TensorProto.BOOL}

# op type (default ONNX domain) -> the types the parser takes for its data tensors
SUPPORTED: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil", "Celu",
         "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu", "Erf", "Exp",
         "Floor", "GRU", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization",
         "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf", "LRN", "LSTM",
         "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "LpPool", "MatMul", "MaxPool",
         "MeanVarianceNormalization", "PRelu", "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN",
         "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "Round",
         "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan",
         "Tanh", "ThresholdedRelu", "Upsample"], FLOATS),
    **dict.fromkeys(
        ["Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual", "IsNaN",
         "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Range", "ReduceL1", "ReduceL2",
         "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
         "ReduceSumSquare", "Relu", "Scatter", "ScatterElements", "ScatterND", "Shrink", "Sign", "SpaceToDepth",
         "Sub", "Sum", "TopK"], NUMBERS),
    **dict.fromkeys(
        ["Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements",
         "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice",
         "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where"], ANY),
    **dict.fromkeys(["Cast", "CastLike"], ANY + ("UINT8",)),
    **dict.fromkeys(["DeformConv", "GridSample", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign"],
                    ("FP32", "FP16")),
    **dict.fromkeys(["And", "Not", "Or", "Xor"], ("BOOL",)),
    "Gelu": NUMBERS + ("INT8",), "Mean": NUMBERS, "DequantizeLinear": ("INT8",),
}
DATA_INPUTS = {"Where": (1, 2), "ConstantOfShape": ()}  # default (0,); ConstantOfShape reads a shape only

# Supported by the matrix, refused here: the reason, and what the export does instead
REFUSED = {
    "LayerNormalization": "onnx-tensorrt 10.1's importer calls setComputePrecision on it, which a strongly typed "
                          "network refuses (the 10.6-era importer skips it); onnx_fixes.decompose_layer_norms writes it "
                          "as primitive ops",
}

# op -> input indices that must be initializers or Constant outputs (weights to the parser) in 10.3
CONSTANT_INPUTS = {**dict.fromkeys(["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                    "Squeeze", "Unsqueeze", "CumSum", "OneHot"], (1,)),
                   "Pad": (3,)}

# op -> attribute -> the values the parser takes (absent attribute: the ONNX default, which is taken)
ATTRIBUTE_VALUES = {
    "Resize": {"mode": {"nearest", "linear"},
               "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                                  "asymmetric", "align_corners"},
               "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
               "keep_aspect_ratio_policy": {"stretch"}, "antialias": {0}},
    "ScatterND": {"reduction": {"none"}},
}
ONES_ATTRIBUTES = {"AveragePool": "dilations", "MaxPool": "dilations", "LpPool": "dilations"}

# ops whose inputs must share one type: mixed-precision BatchNormalization is parsed in strongly typed
# mode only from TensorRT 10.7 (TensorRT OSS changelog, 10.7.0)
SAME_TYPE_INPUTS = ("BatchNormalization",)

# Tensor types anywhere in a graph (the matrix's header; DOUBLE only "limited", cast down: refused;
# FP8 and INT4 only through Q/DQ, which these graphs do not use); UINT8 only as graph input or output
TENSOR_TYPES = {TYPE_NAMES[t] for t in ("FP32", "FP16", "BF16", "INT32", "INT64", "INT8", "BOOL")}
IO_ONLY_TYPES = {TensorProto.UINT8}


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else str(elem_type)


def _nodes(graph: onnx.GraphProto):
    """Every node, those in If/Loop/Scan bodies included."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _nodes(g)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """'domain::op' of every node TensorRT's parser cannot take (another domain, an op outside SUPPORTED)
    or that this project refuses (REFUSED, with the reason)."""
    bad = set()
    for n in _nodes(model.graph):
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED:
            bad.add(f"{n.domain or 'ai.onnx'}::{n.op_type}")
        elif n.op_type in REFUSED:
            bad.add(f"ai.onnx::{n.op_type} ({REFUSED[n.op_type]})")
    return sorted(bad)


def bare_outputs(model: onnx.ModelProto) -> list[str]:
    """Graph outputs that no node computes (an initializer, a graph input passed through) or that a
    Constant node holds: weights to TensorRT's parser, not a layer's output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [o.name for o in model.graph.output
            if o.name not in producer or producer[o.name].op_type == "Constant"]


def type_problems(model: onnx.ModelProto) -> list[str]:
    """Tensor types the parser does not take: anywhere in the graph (TENSOR_TYPES), as an op's data
    (SUPPORTED, DATA_INPUTS), as a Cast's target, and mixed types where SAME_TYPE_INPUTS requires one.
    model: with inferred value_info (onnx_fixes.infer_shapes); a value without a type is reported."""
    types = value_types(model)
    io = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    problems = [f"{name}: {_type_name(t)}" for name, t in sorted(types.items())
                if t not in TENSOR_TYPES and not (t in IO_ONLY_TYPES and name in io)]
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED:
            continue  # unsupported_ops reports it
        where = n.name or n.output[0]
        allowed = {TYPE_NAMES[t] for t in SUPPORTED[n.op_type] if t in TYPE_NAMES}
        for i in DATA_INPUTS.get(n.op_type, (0,)):
            if i < len(n.input) and n.input[i]:
                t = types.get(n.input[i])
                if t is None:
                    problems.append(f"{where} ({n.op_type}): input {n.input[i]!r} has no inferred type")
                elif t not in allowed:
                    problems.append(f"{where} ({n.op_type}): {_type_name(t)} input {n.input[i]!r}")
        if n.op_type == "Cast" and _attributes(n).get("to") not in allowed:
            problems.append(f"{where} (Cast): to {_type_name(_attributes(n).get('to', 0))}")
        if n.op_type in SAME_TYPE_INPUTS and len({types.get(i) for i in n.input if i}) > 1:
            problems.append(f"{where} ({n.op_type}): inputs of mixed types "
                            f"{sorted(_type_name(types.get(i, 0)) for i in n.input if i)}")
    return problems


def restriction_problems(model: onnx.ModelProto) -> list[str]:
    """The matrix's restrictions that apply to these graphs: inputs that must be constants
    (CONSTANT_INPUTS), attribute values (ATTRIBUTE_VALUES, ONES_ATTRIBUTES)."""
    constants = {t.name for t in model.graph.initializer} - {i.name for i in model.graph.input}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    problems = []
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        where, attrs = n.name or n.output[0], _attributes(n)
        for i in CONSTANT_INPUTS.get(n.op_type, ()):
            if i < len(n.input) and n.input[i] and n.input[i] not in constants:
                problems.append(f"{where} ({n.op_type}): input {i} ({n.input[i]!r}) is not an initializer")
        for attr, allowed in ATTRIBUTE_VALUES.get(n.op_type, {}).items():
            value = attrs.get(attr)
            value = value.decode() if isinstance(value, bytes) else value
            if value is not None and value not in allowed:
                problems.append(f"{where} ({n.op_type}): {attr} = {value!r}")
        ones = ONES_ATTRIBUTES.get(n.op_type)
        if ones and any(v != 1 for v in attrs.get(ones, [])):
            problems.append(f"{where} ({n.op_type}): {ones} = {list(attrs[ones])}")
    return problems


def model_problems(model: onnx.ModelProto, typed: bool = True) -> list[str]:
    """Everything above (typed: with type_problems, for a model whose value_info is inferred by
    onnx_fixes.infer_shapes)."""
    return ([f"unsupported op {op}" for op in unsupported_ops(model)]
            + [f"output {o!r} is not computed by a node" for o in bare_outputs(model)]
            + ([f"type: {p}" for p in type_problems(model)] if typed else [])
            + [f"restriction: {p}" for p in restriction_problems(model)])


def file_problems(path: str | Path) -> list[str]:
    """A graph file as TensorRT's parser will read it: onnx.checker's full check (which includes strict,
    type-checked shape inference; weights files beside the graph are found by path), strict shape
    inference once more to type every value, then model_problems (without the types where the strict
    inference failed). [] when ready."""
    problems = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        problems.append(f"onnx.checker (full check): {str(e).strip().splitlines()[0]}")
    model = onnx.load(str(path), load_external_data=False)  # the graph; its weights' types and shapes suffice
    try:
        infer_shapes(model, strict=True)
        typed = True
    except onnx.shape_inference.InferenceError as e:
        problems.append(f"strict shape inference: {str(e).strip().splitlines()[0]}")
        typed = False
    return problems + model_problems(model, typed)
