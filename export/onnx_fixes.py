"""Graph-level fixes applied to every exported graph, and the checks that guard them.

Expanded weights: when a frozen Linear weight meets a batched (3-D, non-contiguous) input, torch's
matmul broadcasts the weight with a stride-0 `expand` (free in eager). The traced graph keeps a real
`Expand`; ONNX Runtime's constant folding then materialises one copy per batch row (~10 GB for
ViT-B-32's attention) and runs each projection as many vector-matrix products. MatMul broadcasts by
itself, so MatMul(A, Expand(W)) == MatMul(A, W): fold_expanded_weights rewrites it.
"""
from __future__ import annotations

import onnx

LINEAR_OPS = ("MatMul", "Gemm")


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _expanded_weight(model, name: str, producer: dict, consts: set):
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
            and any(_expanded_weight(model, i, producer, consts) for i in node.input)]


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
            hit = _expanded_weight(model, name, producer, consts)
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


def _remove_dead(model: onnx.ModelProto, op_types: tuple[str, ...]) -> None:
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
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


def vendor_ops(model: onnx.ModelProto) -> list[str]:
    """Nodes outside the standard ONNX domain (e.g. com.microsoft), which TensorRT cannot parse."""
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
