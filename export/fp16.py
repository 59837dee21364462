"""FP16 variants of exported graphs: float16 compute, float32 I/O, float32 islands where FP16 fails.

TensorRT 11 builds only strongly typed networks, so precision must be in the graph itself. Kept in
float32: normalisation and softmax (FP16 LayerNorm/softmax overflow is a known TensorRT failure),
reductions, exp/log/pow/sqrt, everything computed from the optimizer state (Adam's second moment
~1e-12 underflows in FP16), i.e. every node reachable from the step graph's state and hyperparameter inputs,
the nodes export/onnx_fixes.py named with FLOAT32_TAG (the layer norms it decomposed),
and the augmentation parameters computed from aug_noise alone (shifts, crop sizes and cutout squares
are floor()s of it: rounded to FP16 they pick other pixels, and the gradient cosine fell to 0.9975).

Light nodes (views, elementwise arithmetic) that lie between float32 nodes stay in float32 too
(float32_between): in FP16 they only round and overflow. On the shapes step that took the logits
update's cosine to float32's from 0.934 to 0.99999 (Adam's first step is g / |g|: rounded near-zero
gradients flipped its sign) and the energy's FP16 error from 4.7e-3 to 3.4e-3.

A constant that FP16 and float32 nodes share (the resize range's 0.8, Adam's 1 - beta1) is stored in
FP16 by the converter, and the float32 nodes read its rounded value (0.7998): about 1% of the copies'
floor()s then differ from the float32 graph's. Giving the float32 readers the exact value instead was
measured on the shapes step and was worse (gradient cosine 0.99936 -> 0.99881): the FP16 readers of the
same constant still round it, so the two halves of one augmentation disagree. It is left as it is.
"""
from __future__ import annotations

import heapq

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from tr0n_rt.settings import HPARAM_NAMES

from .onnx_fixes import FLOAT32_TAG, infer_shapes, outputs_from_nodes, remove_unused_initializers

FP32_OPS = ["LayerNormalization", "BatchNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
            "ReduceMax", "ReduceL2", "Sqrt", "Pow", "Exp", "Log", "Erf", "Reciprocal", "Div"]
# Inputs whose downstream arithmetic is the optimizer update (not the energy or its gradient).
OPTIMIZER_INPUTS = ("velocity", "adam_m", "adam_v", "step", "sgld_noise") + HPARAM_NAMES
# Per graph, inputs whose downstream arithmetic stays float32 besides the optimizer's: the chunked step's
# running sums (energy_grad adds each chunk's FP16 part to them in float32). In the update graph grad_sum
# seeds the generator's backward, which is FP16 compute, so it is not listed there.
FLOAT32_INPUTS = {"energy_grad": ("grad_sum", "energy_sum")}
NOISE_INPUTS = ("aug_noise",)


SHAPE_OPS = ("Shape", "Size")


def reachable_nodes(model: onnx.ModelProto, sources: set[str]) -> list[str]:
    """Names of nodes whose values depend on any of the named graph inputs. Shape edges do not count:
    a dynamic batch size read off one input feeds Reshapes everywhere without carrying its data."""
    live = set(sources)
    names = []
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if node.op_type not in SHAPE_OPS and any(i in live for i in node.input):
            live.update(node.output)
            names.append(node.name)
    return names


HEAVY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def light_input_functions(model: onnx.ModelProto, noise_only: set[str] = frozenset()) -> list[str]:
    """Nodes that are cheap functions of graph inputs (and constants) alone, no Conv/MatMul on the way:
    the mixture z' = sum_k softmax(pi) mu, the augmentation matrices. FP16 would only round them.
    Functions of constants alone (weight transposes) are left to follow their consumers' precision.

    A MatMul with an operand computed from aug_noise alone (noise_only: node names) counts as cheap: it
    is the augmentation's resampling (out = M_h @ x @ M_w^T, export/augment.py: 2 H^2 W multiply-adds
    per channel and copy). Where x is a graph input (energy_grad's images), FP16 would round the
    bilinear weights (a row no longer sums to 1: up to 5e-4 off, the same way across a copy's pixels), a
    coherent error in an otherwise exact image: on a shapes world whose CLIP was trained on hard-edged
    pictures, energy_grad's latent gradient cosine to float32 was 0.9977 at a validation case (median
    0.99992, 12 cases); in float32 it is 0.99989 (median 0.99997), and 0.99943 -> 0.99945 (median
    0.99989 -> 0.99993) on the shipped world. Where x is G's output (step, energy) the image is already
    FP16, and keeping the resampling float32 there measured no better (step, 12 cases: median gradient
    cosine 0.99987 -> 0.99973 on that world, 0.99983 -> 0.99989 on the shipped one), so it follows x."""
    consts = {i.name for i in model.graph.initializer}
    from_inputs = {i.name for i in model.graph.input}
    noise_values = {o for n in model.graph.node if n.name in noise_only for o in n.output}
    names = []
    for node in model.graph.node:
        resample = node.op_type == "MatMul" and any(i in noise_values for i in node.input)
        if node.op_type == "Constant":
            consts.update(node.output)
        elif (node.op_type in HEAVY_OPS and not resample) or not all(
                i in consts or i in from_inputs or not i for i in node.input):
            continue
        elif any(i in from_inputs for i in node.input):
            from_inputs.update(node.output)
            names.append(node.name)
        else:
            consts.update(node.output)
    return names


# Cheap ops that may join a float32 island (elementwise arithmetic, views)
LIGHT_OPS = ("Add", "Sub", "Mul", "Div", "Neg", "Abs", "Clip", "Min", "Max", "Identity", "Reshape", "Squeeze",
             "Unsqueeze", "Flatten", "Transpose", "Expand")


def float32_between(model: onnx.ModelProto, float32_nodes: set[str]) -> list[str]:
    """Light nodes that lie between float32 nodes: every float input comes from a float32 node (or a
    constant), and every consumer is a float32 node, a graph output or another such node. In FP16 they
    would only round (and overflow): the per-sample gradient norm of the step, computed in float32 by
    Pow, went through Reshape and `+ 1e-6` in FP16 on its way to a float32 Div, so a norm over 65504
    became inf and clipped the gradient to 0 without a NaN for the FP16 guard to see.
    model: with inferred value_info (float inputs are told apart from shape and index tensors)."""
    floats = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def is_float32(node) -> bool:
        return node.name in float32_nodes or node.op_type in FP32_OPS

    candidates = set()
    for n in model.graph.node:  # topological order: a candidate's producers are decided first
        data = [i for i in n.input if i in floats and i not in constants]
        if n.op_type in LIGHT_OPS and data and all(
                i in producer and (is_float32(producer[i]) or producer[i].name in candidates) for i in data):
            candidates.add(n.name)
    changed = True
    while changed:  # drop candidates with a consumer outside float32 (it would read them in FP16)
        changed = False
        for n in model.graph.node:
            if n.name in candidates and not all(
                    o in outputs or all(is_float32(c) or c.name in candidates for c in consumers.get(o, ()))
                    for o in n.output):
                candidates.discard(n.name)
                changed = True
    return [n.name for n in model.graph.node if n.name in candidates]


def remove_round_trips(model: onnx.ModelProto) -> int:
    """The converter casts every blocked node's output (and every input) to FP16 and back to float32
    before the next blocked node reads it, rounding each float32 island at its edges (Adam's v ~1e-12
    would become 0). Rewire each Cast(-> float32) of a Cast(-> FP16) to cast the original value:
    the same value, without the rounding."""
    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        src = producer.get(node.input[0]) if cast_to(node) == onnx.TensorProto.FLOAT else None
        if src is not None and cast_to(src) == onnx.TensorProto.FLOAT16:
            node.input[0] = src.input[0]
            rewired += 1
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in [n for n in model.graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]:
        model.graph.node.remove(n)
    return rewired


def topological_sort(model: onnx.ModelProto) -> None:
    """Orders model.graph.node so that every node follows the producers of its inputs (the ONNX rule,
    which onnx.checker enforces; the converter's keep_io_types casts break it). Kahn's algorithm, ties
    taken in the original order, so an already sorted graph keeps its order."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}  # "": an omitted optional output
    waiting = [0] * len(nodes)  # inputs not yet produced, per node
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for src in {producer[x] for x in n.input if x and x in producer}:
            waiting[i] += 1
            consumers.setdefault(src, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle: it cannot be sorted")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)


def square_decomposed_norms(model: onnx.ModelProto) -> int:
    """Pow(d, 2) -> Mul(d, d) in the layer norms onnx_fixes.decompose_layer_norms wrote (the same float32
    value); returns how many. ONNX Runtime's LayerNormFusion (1.32) fuses the Pow form into a
    LayerNormalization even when its input is a Cast from FP16: the fused node reads the FP16 tensor with
    the float32 scale and bias, and the session refuses to load (mixed types). The Mul form is not fused;
    the float32 graphs keep the Pow form, which ONNX Runtime fuses correctly there."""
    producer = {o: n for n in model.graph.node for o in n.output}
    constants = {t.name: t for t in model.graph.initializer}
    squared = 0
    for n in model.graph.node:
        if n.op_type != "Pow" or FLOAT32_TAG not in n.name or producer.get(n.input[1]) is not None:
            continue
        exponent = constants.get(n.input[1])
        if exponent is not None and onnx.numpy_helper.to_array(exponent).size == 1 \
                and float(onnx.numpy_helper.to_array(exponent)) == 2.0:
            n.op_type, n.input[1] = "Mul", n.input[0]
            squared += 1
    if squared:
        remove_unused_initializers(model)
    return squared


def to_fp16(model: onnx.ModelProto, graph: str | None = None) -> onnx.ModelProto:
    """graph: the graph's name (tr0n_rt/graphs.py), for its FLOAT32_INPUTS."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # leave the caller's model alone (in memory: no 2 GB limit)
    model = copy
    for i, node in enumerate(model.graph.node):  # the converter blocks nodes by name
        if not node.name:
            node.name = f"node_{i}"
    # An output that is a folded constant (the translator's std) would be defined twice once the
    # converter casts it (export_bundle has routed it already; a graph from elsewhere may not have)
    outputs_from_nodes(model)
    square_decomposed_norms(model)
    inputs = {i.name for i in model.graph.input}
    data = inputs - set(OPTIMIZER_INPUTS) - set(FLOAT32_INPUTS.get(graph, ())) - set(NOISE_INPUTS)
    noise_only = set(reachable_nodes(model, inputs & set(NOISE_INPUTS))) - set(reachable_nodes(model, data))
    float32_inputs = set(OPTIMIZER_INPUTS) | set(FLOAT32_INPUTS.get(graph, ()))
    blocked = set(reachable_nodes(model, inputs & float32_inputs)) | noise_only
    blocked |= set(light_input_functions(model, noise_only))
    blocked |= {n.name for n in model.graph.node if FLOAT32_TAG in n.name}  # decomposed normalisations
    infer_shapes(model)
    blocked |= set(float32_between(model, blocked))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS + DEFAULT_OP_BLOCK_LIST,
                                         node_block_list=sorted(blocked), disable_shape_infer=True)
    remove_round_trips(converted)
    topological_sort(converted)
    # The converter's value_info is stale (initializers kept float32 are declared FLOAT16 there), which
    # onnx.checker's full check and strict inference refuse: inferred again, strictly.
    infer_shapes(converted, strict=True)
    return converted
