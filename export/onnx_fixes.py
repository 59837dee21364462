"""Graph-level fixes applied to every exported graph, and the checks that guard them.

Convolution gradients: the input gradient of a stride-1 conv is a ConvTranspose with the conv's weight W
(export/gradient.py). With one group it equals a Conv with W' = flip_hw(W^T) (in and out channels
swapped, kernel reversed) and padding d (k - 1) - p, which conv_grads_as_conv writes as a new constant:
ONNX Runtime's CPU ConvTranspose is about 3x slower than Conv on the worlds' 3x3 convs. (At trace time
the flip would be ops on a weight the forward conv shares, which the exporter does not always fold.)

Average-pool gradients: export/gradient.py writes avg_pool2d's backward as a depthwise ConvTranspose
with a constant kernel (torch's upsample decomposes to index ops at trace time, so it cannot be a
Resize there). For non-overlapping windows (kernel == stride, no padding) that is nearest-neighbour
upsampling times 1/window, which pool_grads_as_resize rewrites into Mul + Resize: ONNX Runtime's
depthwise ConvTranspose loops over images and channels with tiny GEMMs (6x slower on the shapes world).

Expanded weights: when a frozen Linear weight meets a batched (3-D, non-contiguous) input, torch's
matmul broadcasts the weight with a stride-0 `expand` (free in eager). The traced graph keeps a real
`Expand`; ONNX Runtime's constant folding then materialises one copy per batch row (~10 GB for
ViT-B-32's attention) and runs each projection as many vector-matrix products. MatMul broadcasts by
itself, so MatMul(A, Expand(W)) == MatMul(A, W): fold_expanded_weights rewrites it.

Layer normalisation: opset 18 exports torch's layer_norm as LayerNormalization. onnx-tensorrt's importer
of TensorRT 10.1 (release/10.1-GA) calls INormalizationLayer::setComputePrecision on every such node, which
a strongly typed network refuses (NvInfer.h of 10.1 and 10.3: "Strongly typed network rejects calls to this
method"); the importer of the 10.6 era (commit 0137504e) skips the call in strongly typed networks; those of
10.2 to 10.5, JetPack 6's 10.3 among them, could not be read. The engines here are all strongly typed, so
decompose_layer_norms writes each node as primitive ops, which every 10.x and 11 parser takes, in the form
ONNX Runtime's LayerNormFusion recognises (its sessions of the float32 graphs still run one fused kernel;
FP16 graphs: fp16.square_decomposed_norms):
    mean = ReduceMean(x, axes)            axes = [axis, ..., rank - 1], kept
    d = x - mean
    var = ReduceMean(Pow(d, 2), axes)
    y = d / Sqrt(var + epsilon) * scale + bias
Its nodes are named with FLOAT32_TAG: export/fp16.py keeps them in float32, as it kept LayerNormalization.

Graph outputs: a folded constant output (the translators' std) is an initializer that no node produces;
TensorRT's parser and some runtimes handle such outputs badly (an output that is weights, or the same
name as an input). outputs_from_nodes routes each through an Identity.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

LINEAR_OPS = ("MatMul", "Gemm")
# in a node's name: the node stays float32 in FP16 graphs (export/fp16.py)
FLOAT32_TAG = "/keep_float32/"
# ops that may compute a constant weight from initializers; dead ones go once their reader is rewritten
CONSTANT_OPS = ("Constant", "Mul", "Div", "Transpose", "Reshape", "Cast", "Neg")


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _expanded_weight(name: str, producer: dict, consts: set):
    """If `name` is Expand(W) or Transpose(Expand(W)) of a constant 2-D W, with the transpose swapping
    only the last two axes, returns (W, transposed); else None. The backward of x @ expand(W) reads
    expand(W) transposed: the same trap in the gradient graph."""
    src, transposed = producer.get(name), False
    if src is not None and src.op_type == "Transpose":
        perm = next((list(a.ints) for a in src.attribute if a.name == "perm"), None)
        if perm is None or perm[0] != 0 or perm[1:] != [2, 1]:
            return None
        src, transposed = producer.get(src.input[0]), True
    if src is None or src.op_type != "Expand" or src.input[0] not in consts:
        return None
    return src.input[0], transposed


def expanded_weight_reads(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul/Gemm nodes that read an Expand of a constant (a weight), directly or transposed."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    return [node.name or node.output[0] for node in model.graph.node if node.op_type in LINEAR_OPS
            and any(_expanded_weight(i, producer, consts) for i in node.input)]


def fold_expanded_weights(model: onnx.ModelProto) -> int:
    """Rewrites MatMul(A, Expand(W)) into MatMul(A, W), and MatMul(A, Transpose(Expand(W))) into
    MatMul(A, Transpose(W)), for constant W; returns how many were folded."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    folded, new_nodes = 0, {}
    for node in model.graph.node:
        if node.op_type != "MatMul":  # Gemm takes 2-D inputs only, so it never reads a broadcast
            continue
        for i, name in enumerate(node.input):
            hit = _expanded_weight(name, producer, consts)
            if hit is None:
                continue
            weight, transposed = hit
            if transposed:
                out = f"{weight}_transposed"
                if out not in new_nodes:
                    new_nodes[out] = onnx.helper.make_node("Transpose", [weight], [out], perm=[1, 0],
                                                           name=f"{weight}_transpose")
                weight = out
            node.input[i] = weight
            folded += 1
    for n in new_nodes.values():  # constant inputs only, so placing them first keeps the order valid
        model.graph.node.insert(0, n)
    if folded:
        _remove_dead(model, ("Expand", "Transpose"))
    return folded


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_transpose_weights(model: onnx.ModelProto) -> dict:
    """name -> numpy array of each constant that a ConvTranspose reads as its weight: an initializer, a
    Constant node, or a small expression of those (StyleGAN2's W x gain is a Mul of two initializers that
    the exporter leaves unfolded). Only those are materialised (a step graph's other weights can be a GB)."""
    wanted = {n.input[1] for n in model.graph.node if n.op_type == "ConvTranspose" and len(n.input) > 1}
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in wanted}
    arrays |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
               if n.op_type == "Constant" and n.output[0] in wanted and n.attribute and n.attribute[0].name == "value"}
    if wanted - arrays.keys():
        producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
        graph_inputs = {i.name for i in model.graph.input}
        initializers = {i.name: i for i in model.graph.initializer if i.name not in graph_inputs}
        for name in wanted - arrays.keys():
            value = _constant_expression(model, name, producer, initializers)
            if value is not None:
                arrays[name] = value
    return arrays


def _constant_expression(model: onnx.ModelProto, name: str, producer: dict, initializers: dict,
                         max_nodes: int = 4):
    """The value of `name` if it is computed by at most max_nodes deterministic nodes (CONSTANT_OPS, the
    default domain) from `initializers` (name -> tensor: those that are not graph inputs, since an
    overridable default is no constant), else None; evaluated with onnx's reference evaluator on just
    that subgraph. producer: value name -> the index of the node that computes it."""
    chosen, leaves, todo = set(), set(), [name]
    while todo:
        current = todo.pop()
        if current in initializers:
            leaves.add(current)
            continue
        index = producer.get(current)
        if index in chosen:  # a value read twice (x * x)
            continue
        node = model.graph.node[index] if index is not None else None
        if (node is None or len(chosen) == max_nodes or node.op_type not in CONSTANT_OPS
                or node.domain not in ("", "ai.onnx")):
            return None  # a graph input, too long a chain, or an op that may not be a pure function
        chosen.add(index)
        todo += [i for i in node.input if i]
    order = [model.graph.node[i] for i in sorted(chosen)]  # the graph's own order is topological
    graph = onnx.helper.make_graph(order, "constant_expression", [],
                                   [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
                                   [initializers[i] for i in sorted(leaves)])
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    from onnx.reference import ReferenceEvaluator

    try:
        return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
    except Exception:  # noqa: BLE001 - anything the evaluator cannot run is simply not rewritten
        return None


def conv_weight_of_transpose(w: np.ndarray, group: int) -> np.ndarray:
    """The Conv weight [C_out, C_in / g, *k] equal to ConvTranspose weight w [C_in, C_out / g, *k] read
    backwards: in and out channels swapped within each group, kernel reversed."""
    c_in, c_out_g, kernel = w.shape[0], w.shape[1], w.shape[2:]
    per_group = w.reshape(group, c_in // group, c_out_g, *kernel).swapaxes(1, 2)
    as_conv = per_group.reshape(group * c_out_g, c_in // group, *kernel)
    return np.ascontiguousarray(np.flip(as_conv, axis=tuple(range(2, w.ndim))))


def conv_grads_as_conv(model: onnx.ModelProto) -> int:
    """Rewrites ConvTranspose(g, W[, b]) with constant W (see _conv_transpose_weights), stride 1 and no
    output padding into Conv(g, conv_weight_of_transpose(W)[, b]) with the same groups and pads
    d (k - 1) - p (where all are >= 0); returns how many. Nodes that share W share its converted copy."""
    weights, converted, done = _conv_transpose_weights(model), {}, 0
    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in weights:
            continue
        w, attrs = weights[node.input[1]], _attributes(node)
        dims, group = w.ndim - 2, attrs.get("group", 1)
        kernel = list(w.shape[2:])
        dilations = list(attrs.get("dilations", [1] * dims))
        pads = list(attrs.get("pads", [0] * 2 * dims))
        as_conv = [d * (k - 1) - p for d, k, p in zip(dilations * 2, kernel * 2, pads)]
        if (w.shape[0] % group or any(s != 1 for s in attrs.get("strides", [1] * dims))
                or any(attrs.get("output_padding", [])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or "output_shape" in attrs or min(as_conv) < 0):
            continue
        key = (node.input[1], group)
        if key not in converted:
            converted[key] = f"{node.input[1]}_flipped_for_conv" + (f"_g{group}" if group != 1 else "")
            model.graph.initializer.append(numpy_helper.from_array(conv_weight_of_transpose(w, group), converted[key]))
        node.op_type, node.input[1] = "Conv", converted[key]
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("kernel_shape", kernel),
                               onnx.helper.make_attribute("pads", as_conv),
                               onnx.helper.make_attribute("dilations", dilations),
                               onnx.helper.make_attribute("group", group)])
        done += 1
    if done:
        _remove_dead(model, CONSTANT_OPS)
        remove_unused_initializers(model)
    return done


def _uniform_pool_kernel(node: onnx.NodeProto, weights: dict) -> tuple[float, list[int]] | None:
    """(c, [kh, kw]) if `node` is ConvTranspose(x, W) with W constant [C, 1, kh, kw], every entry c, one
    group per channel, stride == kernel, no pads, dilation or output padding; else None."""
    if node.op_type != "ConvTranspose" or len(node.input) != 2 or node.input[1] not in weights:
        return None
    w, attrs = weights[node.input[1]], _attributes(node)
    if w.ndim != 4 or w.shape[1] != 1 or attrs.get("group", 1) != w.shape[0] or not np.all(w == w.flat[0]):
        return None
    kernel = [int(k) for k in w.shape[2:]]
    plain = (list(attrs.get("strides", [1, 1])) == kernel and not any(attrs.get("pads", []))
             and all(d == 1 for d in attrs.get("dilations", [1, 1])) and not any(attrs.get("output_padding", []))
             and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
    return (float(w.flat[0]), kernel) if plain else None


def pool_grads_as_resize(model: onnx.ModelProto) -> int:
    """Rewrites each average-pool gradient (see _uniform_pool_kernel) into Mul(x, c) -> Resize(nearest,
    scales [1, 1, kh, kw]); returns how many. Output sizes agree: ConvTranspose gives (in - 1) k + k."""
    weights = _conv_transpose_weights(model)
    rewritten, nodes = 0, []
    for node in model.graph.node:
        hit = _uniform_pool_kernel(node, weights)
        if hit is None:
            nodes.append(node)
            continue
        c, kernel = hit
        name = node.name or node.output[0]
        scale, scales, scaled = f"{name}_window_scale", f"{name}_resize_scales", f"{name}_scaled"
        model.graph.initializer.extend([numpy_helper.from_array(np.array(c, weights[node.input[1]].dtype), scale),
                                        numpy_helper.from_array(np.array([1, 1, *kernel], np.float32), scales)])
        nodes += [onnx.helper.make_node("Mul", [node.input[0], scale], [scaled], name=f"{name}_scale"),
                  onnx.helper.make_node("Resize", [scaled, "", scales], list(node.output), name=f"{name}_as_resize",
                                        mode="nearest", coordinate_transformation_mode="asymmetric",
                                        nearest_mode="floor")]
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _remove_dead(model, ("Constant",))
        remove_unused_initializers(model)
    return rewritten


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = _names_read(model.graph) | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every value a graph's nodes read, those read inside If/Loop/Scan bodies (outer-scope reads) included."""
    names = set()
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _names_read(g)
    return names


def _remove_dead(model: onnx.ModelProto, op_types: tuple[str, ...]) -> None:
    while True:
        used = _names_read(model.graph) | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in op_types and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def scatter_gather_nd(model: onnx.ModelProto, allow_gather: bool = False) -> list[str]:
    """Index ops that come from index-based resizes and their backward (ScatterND(add)), a TensorRT
    risk in gradient graphs. A forward gather (CLIP's end-token pooling) is fine: allow_gather."""
    ops = ("ScatterND", "ScatterElements") + (() if allow_gather else ("GatherND",))
    return [n.name or n.op_type for n in model.graph.node if n.op_type in ops]


def infer_shapes(model: onnx.ModelProto, strict: bool = False) -> None:
    """Sets model.graph.value_info to the inferred types and shapes. onnx's in-memory inference
    serializes the whole model (a second copy of every weight, and impossible past protobuf's 2 GB), so
    it runs on a skeleton whose large initializers keep only their name, type and shape.
    strict: type-checked, any inference error raised (as onnx.checker's full check does), and from the
    graph alone: the existing value_info is not used (a stale entry, a type the graph no longer has,
    would fail it); otherwise the existing value_info seeds the inference."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                               functions=model.functions)
    g = skeleton.graph
    g.name = model.graph.name
    for field in ("node", "input", "output") + (() if strict else ("value_info",)):
        getattr(g, field).extend(getattr(model.graph, field))
    for t in model.graph.initializer:  # small ones (shapes, indices) may be read by the inference
        g.initializer.append(t if t.ByteSize() <= 1024 else
                             onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims))
    inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=strict, strict_mode=strict)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """value name -> ONNX element type, from graph inputs and outputs, value_info, initializers and
    Constant nodes (run infer_shapes first for the values inside the graph)."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def _unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def outputs_from_nodes(model: onnx.ModelProto) -> int:
    """Routes every graph output that no node computes (an initializer) or that a Constant node holds
    through an Identity, so that each output is computed by a node; returns how many. The output keeps
    its name; the constant is renamed."""
    producer = {o: n for n in model.graph.node for o in n.output}
    initializers = {t.name: t for t in model.graph.initializer}
    taken = set(initializers) | set(producer) | {i.name for i in model.graph.input} | _names_read(model.graph)
    taken |= {o.name for o in model.graph.output}
    routed = 0
    inputs = {i.name for i in model.graph.input}
    for out in model.graph.output:
        src = producer.get(out.name)
        if out.name in inputs:  # an input passed through (or an overridable initializer): left to the checks
            continue
        if out.name in initializers and src is None:
            const = _unique_name(f"{out.name}_constant", taken)
            initializers[out.name].name = const
            for n in model.graph.node:  # other readers of the constant read it under its new name
                n.input[:] = [const if i == out.name else i for i in n.input]
        elif src is not None and src.op_type == "Constant":
            const = _unique_name(f"{out.name}_constant", taken)
            src.output[0] = const
            for n in model.graph.node:
                if n is not src:
                    n.input[:] = [const if i == out.name else i for i in n.input]
        else:
            continue
        model.graph.node.append(onnx.helper.make_node("Identity", [const], [out.name],
                                                      name=_unique_name(f"{out.name}_identity", taken)))
        routed += 1
    return routed


def decompose_layer_norms(model: onnx.ModelProto) -> int:
    """Rewrites each float32 LayerNormalization(x, scale[, bias]; axis, epsilon) into primitive ops (see
    the module docstring; its Mean and InvStdDev outputs, where read, as ReduceMean and Reciprocal(Sqrt));
    returns how many. Nodes with another input type are left (export/trt_ops.py then refuses them)."""
    if not any(n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return 0
    exported = list(model.graph.value_info)  # restored below: the exporter's, with its symbolic dims
    infer_shapes(model)
    types = value_types(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(model.graph.value_info) + list(model.graph.input)
             if v.type.tensor_type.HasField("shape")}
    del model.graph.value_info[:]
    model.graph.value_info.extend(exported)
    read = _names_read(model.graph) | {o.name for o in model.graph.output}
    taken = ({t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
             | {i.name for i in model.graph.input} | read)
    constants: dict[tuple, str] = {}

    def constant(kind: str, value: np.ndarray) -> str:
        key = (kind, value.dtype.str, value.tobytes())
        if key not in constants:
            constants[key] = _unique_name(f"layer_norm_{kind}", taken)
            model.graph.initializer.append(numpy_helper.from_array(value, constants[key]))
        return constants[key]

    nodes, done = [], 0
    for i, node in enumerate(model.graph.node):
        x = node.input[0] if node.input else ""
        attrs = _attributes(node)
        axis = attrs.get("axis", -1)
        if (node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx")
                or types.get(x) != onnx.TensorProto.FLOAT or (axis >= 0 and x not in ranks)):
            nodes.append(node)
            continue
        axes = list(range(axis, 0)) if axis < 0 else list(range(axis, ranks[x]))
        base = (node.name or f"layer_norm_{i}") + FLOAT32_TAG
        outs = list(node.output) + [""] * (3 - len(node.output))  # Y, Mean, InvStdDev

        def value(part: str) -> str:
            return _unique_name(f"{base}{part}", taken)

        def add(op: str, inputs: list[str], output: str, part: str, **kw) -> str:
            nodes.append(onnx.helper.make_node(op, inputs, [output], name=value(part), **kw))
            return output

        axes_c = constant("axes", np.array(axes, np.int64))
        mean = add("ReduceMean", [x, axes_c], outs[1] if outs[1] in read else value("mean_value"), "mean",
                   keepdims=1)
        d = add("Sub", [x, mean], value("centered_value"), "centered")
        sq = add("Pow", [d, constant("two", np.array(2.0, np.float32))], value("squared_value"), "squared")
        var = add("ReduceMean", [sq, axes_c], value("variance_value"), "variance", keepdims=1)
        eps = np.array(attrs.get("epsilon", 1e-5), np.float32)
        var_eps = add("Add", [var, constant("epsilon", eps)], value("variance_eps_value"), "variance_eps")
        std = add("Sqrt", [var_eps], value("std_value"), "std")
        if outs[2] in read:
            add("Reciprocal", [std], outs[2], "inv_std")
        has_bias = len(node.input) > 2 and node.input[2]
        normalized = add("Div", [d, std], value("normalized_value"), "normalized")
        scaled = add("Mul", [normalized, node.input[1]], value("scaled_value") if has_bias else outs[0], "scale")
        if has_bias:
            add("Add", [scaled, node.input[2]], outs[0], "bias")
        done += 1
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done
