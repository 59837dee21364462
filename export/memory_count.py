"""Activation memory of an exported graph, counted from the ONNX file alone, as a function of its
dynamic axes batch (b) and copies (a), so that a planner can bound the peak at any (b, a) without onnx.

Sizes: every tensor's byte size is numel x element size, and in these graphs numel is bilinear in
(b, a): size(b, a) = c0 + c1 b + c2 a + c3 b a (bytes). activation_rows infers shapes with the graph
inputs made concrete at (1, 1), (2, 1), (1, 2), (2, 2), solves the four coefficients of every tensor,
and checks them at (3, 5): a tensor whose size is not bilinear there (b * b, a ceil(a / 2)) is an
error that names it, never a silently wrong fit. Other dynamic axes (components) are fixed numbers.

Shape data: onnx's shape inference does not read the values that Shape ops compute (torch's exporter
writes view(b, K * D) as Reshape(x, Concat(Shape(x)[0], K * D))), so such outputs come back without
dims. With the inputs concrete those values are constants: _concrete_shapes folds every small integer
tensor whose inputs are known (Shape of a tensor of known shape, small initializers, Constant nodes,
and ops on those, run by onnx's reference evaluator) into the skeleton as an initializer and infers
again, until every dim is known. A tensor still left without a dim is an error that names it: a
planner must not undercount.

Liveness model (a model of an executor, not of ONNX Runtime's or TensorRT's allocators):
- nodes run one at a time in the file's order (ONNX requires a topological order);
- a node's outputs are allocated when it runs and freed right after their last reader runs (an output
  nobody reads, and that is not a graph output, right after its own node);
- graph inputs (the caller's buffers) are live for the whole run, graph outputs from their node to the
  end; a graph input that is also an initializer is a weight;
- initializers and Constant-node outputs are weights, not activations: not counted;
- every other tensor counts, those of shape-only ops too (a few bytes each);
- while a node runs, the live bytes are those of every tensor live then: its inputs, its outputs and
  everything produced earlier and read later. The peak is the maximum over nodes.
Not modelled: in-place reuse, buffer aliasing of views (Reshape, Squeeze: a copy here), kernel
workspaces, fusion and reordering by the runtime's own optimizer, allocator rounding and arenas.

Since each tensor's size is bilinear, the live bytes at each node are a row (c0, c1, c2, c3) too, and
the peak at (b, a) is the largest row value. activation_rows returns the upper envelope of the rows:
duplicates and rows dominated coefficient-wise (all four <= another's: b, a >= 1) dropped. peak_bytes
evaluates them; live_peak is the direct count at one concrete point (the tests check the fit with it).
Graphs without a copies axis get c2 = c3 = 0; graphs without dynamic axes, constant rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tr0n_rt.memory import peak_of as peak_bytes  # noqa: F401 - the evaluation of the rows, written once

from .onnx_fixes import infer_shapes

BATCH, COPIES = "batch", "copies"  # tr0n_rt/graphs.py's axis names
FIT_POINTS = ((1, 1), (2, 1), (1, 2), (2, 2))  # (b, a) where sizes are inferred to solve c0..c3
CHECK_POINT = (3, 5)  # where every tensor's fit is checked against its inferred size
INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                 onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16,
                 onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}
FOLD_MAX_NUMEL = 64  # integer tensors folded to constants: shape vectors (infer_shapes keeps those <= 1 KB)
NONDETERMINISTIC = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                    "Multinomial")


def _load(model_or_path) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return onnx.load(str(Path(model_or_path)), load_external_data=False)  # weights stay in their .data file


def _check_graph(model: onnx.ModelProto) -> None:
    for n in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise NotImplementedError(f"node {n.name or n.output[0]!r} ({n.op_type}) has a subgraph: "
                                      "If/Loop/Scan bodies are not counted")


def _input_values(model: onnx.ModelProto, values: dict[str, int]) -> None:
    """Raises ValueError unless every dim_param of the graph inputs has a value in `values`."""
    weights = {t.name for t in model.graph.initializer}
    missing = sorted({d.dim_param or "(unnamed)" for i in model.graph.input if i.name not in weights
                      for d in i.type.tensor_type.shape.dim
                      if not d.HasField("dim_value") and d.dim_param not in values})
    if missing:
        raise ValueError(f"graph input dims {missing} have no value: pass them in `fixed` (e.g. "
                         f"{{'components': 10}}); only {BATCH!r} and {COPIES!r} are counted symbolically")


def _skeleton(model: onnx.ModelProto, values: dict[str, int]) -> onnx.ModelProto:
    """The graph without its weights (initializers over 1 KB keep only name, type and dims) nor
    value_info nor outputs (so inference lists every node output in value_info), inputs made concrete."""
    s = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions)
    g = s.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    for t in model.graph.initializer:
        g.initializer.append(t if t.ByteSize() <= 1024 and t.data_location != onnx.TensorProto.EXTERNAL else
                             onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims))
    for i in model.graph.input:
        concrete = g.input.add()
        concrete.CopyFrom(i)
        for d in concrete.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") and d.dim_param in values:  # (_input_values checked the others)
                d.dim_value = values[d.dim_param]  # clears dim_param (a oneof)
    return s


def _dims(v: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The dims of a tensor value if all are known numbers, else None."""
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or not t.HasField("shape") or not t.elem_type:
        return None
    if any(not d.HasField("dim_value") for d in t.shape.dim):
        return None
    return tuple(d.dim_value for d in t.shape.dim)


def _known_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """name -> array of the initializers small enough for inference to read (those with their data)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.ByteSize() <= 1024 and t.data_location != onnx.TensorProto.EXTERNAL}


def _fold_round(skeleton: onnx.ModelProto, shapes: dict, known: dict) -> int:
    """Folds, in node order, each Shape/Size of a tensor of known dims and each node whose inputs are
    all known and whose outputs are small integer tensors (or a Constant): their values go into
    `known`; the nodes leave the skeleton and their outputs become its initializers. Returns how many."""
    folded, evaluate, extra = set(), [], {}
    for k, n in enumerate(skeleton.graph.node):
        ins = [i for i in n.input if i]
        if n.op_type in ("Shape", "Size") and n.domain in ("", "ai.onnx") and shapes.get(ins[0]) is not None:
            dims = shapes[ins[0]][0]
            if n.op_type == "Size":
                extra[n.output[0]] = np.array(int(np.prod(dims)), np.int64)
            else:
                a = {x.name: x.i for x in n.attribute}
                extra[n.output[0]] = np.array(dims[a.get("start", 0):a.get("end", len(dims))], np.int64)
            folded.add(k)
            continue
        outs = [shapes.get(o) for o in n.output if o]
        if (n.domain in ("", "ai.onnx") and n.op_type not in NONDETERMINISTIC
                and all(i in known or i in extra for i in ins) and all(o is not None for o in outs)
                and (n.op_type == "Constant" or all(t in INTEGER_TYPES and np.prod(d) <= FOLD_MAX_NUMEL
                                                    for d, t in outs))):
            evaluate.append(n)
            extra.update({o: None for o in n.output if o})  # computed below; known to later nodes
            folded.add(k)
    if evaluate:
        from onnx.reference import ReferenceEvaluator

        ins = sorted({i for n in evaluate for i in n.input if i} - {o for n in evaluate for o in n.output})
        outs = [o for n in evaluate for o in n.output if o]
        values = {**known, **{k: v for k, v in extra.items() if v is not None}}
        graph = onnx.helper.make_graph(evaluate, "fold", [], [onnx.helper.make_tensor_value_info(
            o, onnx.TensorProto.UNDEFINED, None) for o in outs], [numpy_helper.from_array(values[i], i) for i in ins])
        sub = onnx.helper.make_model(graph, opset_imports=skeleton.opset_import, ir_version=skeleton.ir_version)
        extra.update(zip(outs, ReferenceEvaluator(sub).run(None, {})))
    for name, value in extra.items():
        known[name] = value = np.asarray(value)
        skeleton.graph.initializer.append(numpy_helper.from_array(value, name))
    keep = [n for k, n in enumerate(skeleton.graph.node) if k not in folded]
    del skeleton.graph.node[:]
    skeleton.graph.node.extend(keep)
    return len(folded)


def _concrete_shapes(model: onnx.ModelProto, values: dict[str, int]) -> dict[str, tuple]:
    """name -> (dims, elem_type) of every graph input and node output with the input dims `values`
    (inferred, shape values folded: module docstring). Raises ValueError naming the tensors whose dims
    stay unknown."""
    skeleton, known = _skeleton(model, values), _known_values(model)
    shapes = {i.name: (_dims(i), i.type.tensor_type.elem_type) for i in skeleton.graph.input}
    produced = [o for n in model.graph.node for o in n.output if o]
    while True:
        infer_shapes(skeleton)
        shapes.update({v.name: (_dims(v), v.type.tensor_type.elem_type) for v in skeleton.graph.value_info})
        unknown = [o for o in produced if shapes.get(o, (None,))[0] is None]
        if not unknown or not _fold_round(skeleton, {k: v for k, v in shapes.items() if v[0] is not None}, known):
            break
    if unknown:
        op = {o: n.op_type for n in model.graph.node for o in n.output}
        listed = ", ".join(f"{o} ({op[o]})" for o in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise ValueError(f"shape inference leaves {len(unknown)} tensor(s) without known dims at {values}: "
                         f"{listed}; their memory cannot be counted")
    return shapes


def _activations(model: onnx.ModelProto) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """The counted tensors (module docstring) and the node positions where each is live, inclusive:
    (names, first, last, positions). Graph inputs span every position, graph outputs run to the end."""
    g, weights = model.graph, {t.name for t in model.graph.initializer}
    weights |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    positions = max(len(g.node), 1)
    first, last = {}, {}
    for i in g.input:
        if i.name not in weights:
            first[i.name], last[i.name] = 0, positions - 1
    for k, n in enumerate(g.node):
        for i in n.input:
            if i in first:
                last[i] = max(last[i], k)
        for o in n.output:
            if o and o not in weights:
                first[o] = last[o] = k
    for o in g.output:
        if o.name in first:
            last[o.name] = positions - 1
    names = list(first)
    return names, np.array([first[t] for t in names]), np.array([last[t] for t in names]), positions


def _bytes(shapes: dict, names: list[str]) -> np.ndarray:
    """Byte size of each named tensor: numel x element size (int64: python ints, no overflow at GBs)."""
    out = []
    for t in names:
        dims, elem = shapes[t]
        out.append(int(np.prod(dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize)
    return np.array(out, np.int64)


def _live_sums(sizes: np.ndarray, first: np.ndarray, last: np.ndarray, positions: int) -> np.ndarray:
    """sizes [T, ...] -> live totals [positions, ...]: the sum of the tensors live at each node."""
    delta = np.zeros((positions + 1,) + sizes.shape[1:], sizes.dtype)
    np.add.at(delta, first, sizes)
    np.add.at(delta, last + 1, -sizes)
    return np.cumsum(delta[:-1], axis=0)


def activation_rows(model_or_path, fixed: dict[str, int] | None = None) -> list[list[float]]:
    """The upper envelope of the live-bytes rows [c0, c1, c2, c3] (bytes; value c0 + c1 b + c2 a + c3 b a
    at batch b, copies a) over the nodes of a graph (a ModelProto or an .onnx path; the module docstring
    has the model). fixed: values of the other dim_params of the inputs, e.g. {"components": 10}."""
    model = _load(model_or_path)
    fixed = dict(fixed or {})
    if {BATCH, COPIES} & fixed.keys():
        raise ValueError(f"{BATCH!r} and {COPIES!r} are the counted axes: they cannot be fixed")
    _check_graph(model)
    _input_values(model, {BATCH: 1, COPIES: 1, **fixed})
    names, first, last, positions = _activations(model)
    cache = {}  # concrete input dims -> sizes: a graph without copies infers twice, not four times

    def sizes_at(b: int, a: int) -> np.ndarray:
        values = {**fixed, BATCH: b, COPIES: a}
        key = tuple(values.get(d.dim_param, d.dim_value)  # a number's dim_param is ""
                    for i in model.graph.input for d in i.type.tensor_type.shape.dim)
        if key not in cache:
            cache[key] = _bytes(_concrete_shapes(model, values), names)
        return cache[key]

    s11, s21, s12, s22 = (sizes_at(b, a) for b, a in FIT_POINTS)
    c3 = s22 - s21 - s12 + s11
    c1, c2 = s21 - s11 - c3, s12 - s11 - c3
    coef = np.stack([s11 - c1 - c2 - c3, c1, c2, c3], axis=1)  # [T, 4] bytes
    b, a = CHECK_POINT
    fit, actual = coef @ np.array([1, b, a, b * a]), sizes_at(b, a)
    wrong = np.flatnonzero(fit != actual)
    if wrong.size:
        listed = ", ".join(f"{names[k]} ({actual[k]} bytes, fit {fit[k]})" for k in wrong[:10])
        raise ValueError(f"{wrong.size} tensor size(s) are not bilinear in ({BATCH}, {COPIES}): at "
                         f"{BATCH}={b}, {COPIES}={a}: {listed}")
    rows = np.unique(_live_sums(coef, first, last, positions), axis=0)
    rows = rows[np.argsort(-rows.sum(axis=1), kind="stable")]  # a dominating row has a larger sum: first
    kept = []
    for r in rows:
        if not any(np.all(k >= r) for k in kept):
            kept.append(r)
    return [[float(c) for c in r] for r in kept]


def live_peak(model_or_path, shapes: dict[str, int]) -> int:
    """The peak live bytes counted directly at one concrete assignment of the inputs' dim_params (e.g.
    {"batch": 4, "copies": 8, "components": 10}), without the bilinear fit."""
    model = _load(model_or_path)
    _check_graph(model)
    _input_values(model, shapes)
    names, first, last, positions = _activations(model)
    sizes = _bytes(_concrete_shapes(model, dict(shapes)), names)
    return int(_live_sums(sizes, first, last, positions).max(initial=0))
