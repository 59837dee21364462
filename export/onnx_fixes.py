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


def expanded_weight_reads(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul/Gemm nodes that read an Expand of a constant (a weight)."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS:
            for name in node.input:
                src = producer.get(name)
                if src is not None and src.op_type == "Expand" and src.input[0] in consts:
                    bad.append(node.name or node.output[0])
    return bad


def fold_expanded_weights(model: onnx.ModelProto) -> int:
    """Rewrites MatMul(A, Expand(W)) into MatMul(A, W) for constant W; returns how many were folded."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    folded = 0
    for node in model.graph.node:
        if node.op_type != "MatMul":  # Gemm takes 2-D inputs only, so it never reads a broadcast
            continue
        for i, name in enumerate(node.input):
            src = producer.get(name)
            if src is not None and src.op_type == "Expand" and src.input[0] in consts:
                node.input[i] = src.input[0]
                folded += 1
    if folded:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type == "Expand" and not any(o in used for o in n.output)]
        for n in dead:
            model.graph.node.remove(n)
    return folded


def scatter_gather_nd(model: onnx.ModelProto, allow_gather: bool = False) -> list[str]:
    """Index ops that come from index-based resizes and their backward (ScatterND(add)), a TensorRT
    risk in gradient graphs. A forward gather (CLIP's end-token pooling) is fine: allow_gather."""
    ops = ("ScatterND", "ScatterElements") + (() if allow_gather else ("GatherND",))
    return [n.name or n.op_type for n in model.graph.node if n.op_type in ops]


def vendor_ops(model: onnx.ModelProto) -> list[str]:
    """Nodes outside the standard ONNX domain (e.g. com.microsoft), which TensorRT cannot parse."""
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
